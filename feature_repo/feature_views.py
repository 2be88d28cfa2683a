"""Feature views: which columns of each source are features, per entity, and how long
a value stays valid (TTL) for point-in-time joins and online reads."""

from datetime import timedelta

from data_sources import bookings_source, customer_history_source, hotel_stats_source
from entities import booking, customer, hotel
from feast import FeatureView, Field
from feast.types import Float64, Int64, String

# What the guest tells us when booking; valid for as long as the booking exists.
booking_features = FeatureView(
    name="booking_features",
    entities=[booking],
    ttl=timedelta(days=800),
    schema=[
        Field(name="lead_time", dtype=Int64),
        Field(name="stays_weekend_nights", dtype=Int64),
        Field(name="stays_week_nights", dtype=Int64),
        Field(name="stay_nights", dtype=Int64),
        Field(name="adults", dtype=Int64),
        Field(name="children", dtype=Int64),
        Field(name="total_guests", dtype=Int64),
        Field(name="adr", dtype=Float64),
        Field(name="market_segment", dtype=String),
        Field(name="distribution_channel", dtype=String),
        Field(name="deposit_type", dtype=String),
        Field(name="customer_type", dtype=String),
        Field(name="previous_cancellations", dtype=Int64),
        Field(name="total_of_special_requests", dtype=Int64),
        Field(name="is_repeated_guest", dtype=Int64),
        Field(name="arrival_month", dtype=Int64),
        Field(name="arrival_weekday", dtype=Int64),
    ],
    source=bookings_source,
    online=True,
    tags={"owner": "closedloop", "pii": "false"},
)

# A customer's record with us; refreshed when they book or a stay of theirs begins,
# so a year without activity is the longest a value may be carried forward.
customer_history = FeatureView(
    name="customer_history",
    entities=[customer],
    ttl=timedelta(days=365),
    schema=[
        Field(name="cust_bookings", dtype=Int64),
        Field(name="cust_known_outcomes", dtype=Int64),
        Field(name="cust_cancellations", dtype=Int64),
        Field(name="cust_cancel_rate", dtype=Float64),
    ],
    source=customer_history_source,
    online=True,
    tags={"owner": "closedloop"},
)

# Recomputed daily for every hotel; a value older than a week is stale, not missing.
hotel_stats = FeatureView(
    name="hotel_stats",
    entities=[hotel],
    ttl=timedelta(days=7),
    schema=[
        Field(name="hotel_bookings_7d", dtype=Int64),
        Field(name="hotel_adr_mean_30d", dtype=Float64),
        Field(name="hotel_lead_time_mean_30d", dtype=Float64),
        Field(name="hotel_cancel_rate_30d", dtype=Float64),
    ],
    source=hotel_stats_source,
    online=True,
    tags={"owner": "closedloop"},
)
