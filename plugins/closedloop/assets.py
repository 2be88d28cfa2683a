"""Airflow Assets that chain the loop's DAGs (data-aware scheduling)."""

from __future__ import annotations

from airflow.sdk import Asset

#: Emitted by hotel_features after each materialized interval; hotel_training schedules on it.
HOTEL_FEATURES = Asset(name="hotel_features", uri="closedloop://hotel_bookings/features")
