"""Batch sources: the offline tables the feature pipeline writes, one Parquet file per day.

The folder comes from closedloop's settings, so the same declarations serve every
profile and every home folder; Feast reads each folder as one dataset.
"""

from feast import FileSource

from closedloop.core.settings import load_settings

_settings = load_settings()

# Cleaned bookings with booking-level derived columns, stamped at booking time.
bookings_source = FileSource(
    name="bookings_source",
    path=str(_settings.offline_table_dir("bookings")),
    timestamp_field="booking_ts",
    description="Validated, cleaned bookings (label included, for training sets).",
)

# Customer aggregates, stamped at the end of the interval they were computed in.
customer_history_source = FileSource(
    name="customer_history_source",
    path=str(_settings.offline_table_dir("customer_history")),
    timestamp_field="event_ts",
)

# Hotel aggregates, one row per hotel and day, stamped at the end of the day.
hotel_stats_source = FileSource(
    name="hotel_stats_source",
    path=str(_settings.offline_table_dir("hotel_stats")),
    timestamp_field="event_ts",
)
