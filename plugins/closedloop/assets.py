"""Airflow Assets that chain the loop's DAGs (data-aware scheduling)."""

from __future__ import annotations

from airflow.sdk import Asset

#: Emitted by hotel_features after each materialized interval; hotel_training schedules on it.
HOTEL_FEATURES = Asset(name="hotel_features", uri="closedloop://hotel_bookings/features")

#: Emitted by hotel_batch_inference after each scored day.
HOTEL_PREDICTIONS = Asset(name="hotel_predictions", uri="closedloop://hotel_bookings/predictions")
