"""Feature services: the exact feature set a model version was trained on.

A service is versioned per model: changing the features means a new ``_vN`` service,
so a registered model keeps pointing at the features it needs.
"""

from feast import FeatureService
from feature_views import booking_features, customer_history, hotel_stats

# v1: everything the booking says, the customer's record and the hotel's recent state.
hotel_cancellation_v1 = FeatureService(
    name="hotel_cancellation_v1",
    features=[booking_features, customer_history, hotel_stats],
    description="Features of the hotel-cancellation model, version 1.",
    tags={"model": "hotel_cancellation"},
)
