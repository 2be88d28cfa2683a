"""One definition, the same values everywhere: the declared aggregates as the offline
store holds them, as Feast's online store serves them, as Feast's historical retrieval
joins them point in time, as the training set carries them, and as a brute force over
the raw events computes them.

The world: 6 generated hotel days through the feature pipeline (backfill: the steps the
DAG runs, then one materialization), so the online store holds what the offline store's
newest rows say.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from closedloop.core import offline
from closedloop.core.feature_pipeline import backfill
from closedloop.core.feature_store import historical_features, open_store
from closedloop.core.settings import load_settings
from closedloop.usecases.hotel.generator import write_batches

pytestmark = pytest.mark.integration

FIRST, DAYS = date(2026, 1, 1), 6
END = datetime(2026, 1, 7, tzinfo=UTC)  # the end of the last interval


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOSEDLOOP_HOME", str(tmp_path_factory.mktemp("stores") / "home"))
        settings = load_settings()
        write_batches(settings.landing_dir, FIRST, DAYS, rows_per_day=250)
        backfill(settings, FIRST, DAYS)
        yield settings


def _table(settings, name: str) -> pd.DataFrame:
    return offline.read_partitions(settings.offline_table_dir(name))


def _newest(settings, entity: str) -> pd.DataFrame:
    """Each key's newest row of the entity's offline aggregate table."""
    usecase = settings.usecase
    key = usecase.entities[entity].join_key
    rows = _table(settings, usecase.aggregate_tables[entity]).sort_values("event_ts")
    return rows.groupby(key).tail(1).set_index(key).sort_index()


@pytest.mark.parametrize("entity", ["customer", "hotel"])
def test_offline_online_and_historical_retrieval_agree(world, entity):
    usecase = world.usecase
    key = usecase.entities[entity].join_key
    features = list(usecase.features.aggregations[entity])
    table = usecase.aggregate_tables[entity]
    newest = _newest(world, entity)
    keys = list(newest.index[:: max(1, len(newest) // 60)])  # up to ~60 keys
    store = open_store(world)
    online = (
        store.get_online_features(
            features=[f"{table}:{f}" for f in features], entity_rows=[{key: k} for k in keys]
        )
        .to_df()
        .set_index(key)
    )
    historical = historical_features(
        store,
        pd.DataFrame({key: keys, "event_timestamp": [END] * len(keys)}),
        [f"{table}:{f}" for f in features],
    ).set_index(key)
    for feature in features:
        want = newest.loc[keys, feature].to_numpy(dtype=float)
        np.testing.assert_allclose(online.loc[keys, feature].to_numpy(float), want, err_msg=feature)
        np.testing.assert_allclose(
            historical.loc[keys, feature].to_numpy(float), want, err_msg=feature
        )


def test_the_training_set_carries_the_row_stamped_before_each_event(world):
    """A training row's aggregates are the offline row of its entity stamped last at or
    before the event (the end of the previous interval), else the declared defaults."""
    from closedloop.core.training_pipeline import build_training_set

    usecase = world.usecase
    built = build_training_set(world, datetime(2026, 1, 1, tzinfo=UTC), END, "stores")
    frame = pd.read_parquet(built.uri)
    assert len(frame) > 200
    for entity, table in usecase.aggregate_tables.items():
        key = usecase.entities[entity].join_key
        rows = _table(world, table).sort_values("event_ts")
        features = list(usecase.features.aggregations[entity])
        sample = frame.iloc[:: max(1, len(frame) // 80)]
        for _, event in sample.iterrows():
            mine = rows[(rows[key] == event[key]) & (rows["event_ts"] <= event["event_timestamp"])]
            for feature in features:
                want = mine[feature].iloc[-1] if len(mine) else usecase.defaults[feature]
                assert event[feature] == pytest.approx(want), (entity, feature, event[key])


def test_the_stores_hold_what_a_brute_force_over_the_raw_events_gives(world):
    """Counted by hand from the events: a customer's bookings before the end, a hotel's
    in the last 7 days, and a hotel's 30-day cancellation rate over the outcomes known
    by the end (a Beta prior of mean 1/3 and weight 3), against the online store."""
    events = _table(world, "events")
    store = open_store(world)
    customers = sorted(events["customer_id"].unique())[::25]
    online = (
        store.get_online_features(
            features=["customer_aggregates:cust_bookings"],
            entity_rows=[{"customer_id": c} for c in customers],
        )
        .to_df()
        .set_index("customer_id")
    )
    counts = events.groupby("customer_id").size()
    assert online.loc[customers, "cust_bookings"].tolist() == counts.loc[customers].tolist()

    hotels = sorted(events["hotel"].unique())
    online = (
        store.get_online_features(
            features=[
                "hotel_aggregates:hotel_bookings_7d",
                "hotel_aggregates:hotel_cancel_rate_30d",
            ],
            entity_rows=[{"hotel": h} for h in hotels],
        )
        .to_df()
        .set_index("hotel")
    )
    recent = events[events["booking_ts"] >= END - timedelta(days=7)]
    # an outcome counts from when it is known (the arrival, never before the booking),
    # in the window [END - 30 days, END)
    known_at = events[["arrival_date", "booking_ts"]].max(axis=1)
    known = events[(known_at < END) & (known_at >= END - timedelta(days=30))]
    for hotel in hotels:
        assert online.loc[hotel, "hotel_bookings_7d"] == (recent["hotel"] == hotel).sum()
        outcomes = known[known["hotel"] == hotel]["is_canceled"]
        rate = (outcomes.sum() + 3 / 3) / (len(outcomes) + 3)
        assert online.loc[hotel, "hotel_cancel_rate_30d"] == pytest.approx(rate)
