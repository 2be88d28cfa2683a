"""Materialization writes the online store in batches (bounded memory: 1M bookings at once
took 12 GB, see docs/scaling.md). Batched, every entity must still get its latest offline
values: a backfill whose rows span many batches, checked key by key."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from closedloop.core import feature_store, offline
from closedloop.core.feature_pipeline import backfill
from closedloop.usecases.hotel.generator import write_batches

pytestmark = pytest.mark.integration

BOOKING_FEATURES = ["lead_time", "adr", "market_segment"]
CUSTOMER_FEATURES = ["cust_bookings", "cust_cancel_rate"]


def _latest(table: pd.DataFrame, key: str, ts: str) -> pd.DataFrame:
    return table.sort_values(ts).groupby(key).tail(1).set_index(key).sort_index()


def _online(store, view: str, key: str, keys: list[str], names: list[str]) -> pd.DataFrame:
    got = store.get_online_features(
        features=[f"{view}:{n}" for n in names], entity_rows=[{key: k} for k in keys]
    ).to_df()
    return got.set_index(key).sort_index()


def test_every_entity_gets_its_latest_values_across_many_write_batches(home, monkeypatch):
    monkeypatch.setattr(feature_store, "ONLINE_WRITE_BATCH", 37)  # ~15 batches per view
    write_batches(home.landing_dir, date(2026, 1, 1), 3, rows_per_day=180)
    backfill(home, date(2026, 1, 1), 3)
    store = feature_store.open_store(home)
    assert store.config.materialization_config.online_write_batch_size == 37

    bookings = offline.read_partitions(home.offline_table_dir("events"))
    want = _latest(bookings, "booking_id", "booking_ts")[BOOKING_FEATURES]
    assert len(want) > 10 * 37
    got = _online(store, "event_features", "booking_id", list(want.index), BOOKING_FEATURES)
    pd.testing.assert_frame_equal(got[BOOKING_FEATURES], want, check_dtype=False)

    history = offline.read_partitions(home.offline_table_dir("customer_aggregates"))
    want = _latest(history, "customer_id", "event_ts")[CUSTOMER_FEATURES]
    got = _online(store, "customer_aggregates", "customer_id", list(want.index), CUSTOMER_FEATURES)
    pd.testing.assert_frame_equal(got[CUSTOMER_FEATURES], want, check_dtype=False)
