"""hotel_bookings_features through Airflow (dag.test): good days land in both stores,
reruns replace, Feast serves the latest values online and point-in-time correct values
offline."""

from __future__ import annotations

import hashlib
from datetime import date, timedelta

import pandas as pd
import pytest

from closedloop.core import offline
from closedloop.core.feature_store import historical_features, open_store
from closedloop.platform.airflow_runs import run_day
from closedloop.usecases.hotel.generator import write_batches

pytestmark = pytest.mark.integration

D1 = date(2026, 1, 1)
TABLES = ("events", "customer_aggregates", "hotel_aggregates")


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _asset_events(uri: str) -> int:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        query = select(func.count()).select_from(AssetEvent)
        query = query.join(AssetModel, AssetModel.id == AssetEvent.asset_id)
        return session.scalar(query.where(AssetModel.uri == uri))


def test_good_days_reach_offline_and_online_stores(home, features_dag):
    batches = write_batches(home.landing_dir, D1, 3, rows_per_day=150)
    events_before = _asset_events("closedloop://hotel_bookings/features")

    outcomes = [run_day(features_dag, D1 + timedelta(days=i)) for i in range(3)]

    assert [o.state for o in outcomes] == ["success"] * 3, [o.task_states for o in outcomes]
    assert _asset_events("closedloop://hotel_bookings/features") == events_before + 3
    landed = {p.stem: len(pd.read_csv(p)) for p in batches}
    assert offline.row_counts(home.offline_table_dir("events")) == landed
    for table in TABLES:
        assert offline.partition_keys(home.offline_table_dir(table)) == sorted(landed)
    assert len(list(home.gx_dir.rglob("*.html"))) >= 3, "Data Docs for every validation"

    # Online: the latest customer_aggregates row of each of the last day's customers.
    history = offline.read_partitions(home.offline_table_dir("customer_aggregates"))
    latest = history.sort_values("event_ts").groupby("customer_id").tail(1).set_index("customer_id")
    customers = sorted(pd.read_csv(batches[-1])["customer_id"].unique())[:50]
    store = open_store(home)
    online = (
        store.get_online_features(
            features=["customer_aggregates:cust_bookings", "customer_aggregates:cust_cancel_rate"],
            entity_rows=[{"customer_id": c} for c in customers],
        )
        .to_df()
        .set_index("customer_id")
    )
    assert online["cust_bookings"].tolist() == latest.loc[customers, "cust_bookings"].tolist()
    assert online["cust_cancel_rate"].tolist() == pytest.approx(
        latest.loc[customers, "cust_cancel_rate"].tolist()
    )


def test_rerun_of_a_day_replaces_its_partitions(home, features_dag):
    write_batches(home.landing_dir, D1, 2, rows_per_day=120)
    assert run_day(features_dag, D1).succeeded
    assert run_day(features_dag, D1 + timedelta(days=1)).succeeded
    first = {
        t: _digest(offline.partition_path(home.offline_table_dir(t), "2026-01-01")) for t in TABLES
    }
    counts = {t: offline.row_counts(home.offline_table_dir(t)) for t in TABLES}

    assert run_day(features_dag, D1).succeeded  # the retry / rerun

    again = {
        t: _digest(offline.partition_path(home.offline_table_dir(t), "2026-01-01")) for t in TABLES
    }
    assert again == first
    assert {t: offline.row_counts(home.offline_table_dir(t)) for t in TABLES} == counts
    assert not list(home.offline_dir.rglob("*.tmp")), "no temporary files left behind"


def test_historical_features_never_come_from_after_the_entity_timestamp(home, features_dag):
    write_batches(home.landing_dir, D1, 4, rows_per_day=300)
    for i in range(4):
        assert run_day(features_dag, D1 + timedelta(days=i)).succeeded
    history = offline.read_partitions(home.offline_table_dir("customer_aggregates"))
    # Customers with rows stamped at two (or more) different interval ends.
    stamps = history.groupby("customer_id")["event_ts"].agg(["min", "max", "nunique"])
    changing = stamps[stamps["nunique"] >= 2].head(40)
    assert len(changing) >= 10, "the generated data should have returning customers"
    # Ask one instant before each customer's newest row, and exactly at it.
    just_before = changing["max"] - pd.Timedelta(seconds=1)
    entity_df = pd.DataFrame(
        {
            "customer_id": list(changing.index) * 2,
            "event_timestamp": list(just_before) + list(changing["max"]),
        }
    )
    # ...and once before a customer's first row: no value may be invented, nor the row lost.
    first_rows = stamps.head(5)
    entity_df = pd.concat(
        [
            entity_df,
            pd.DataFrame(
                {
                    "customer_id": list(first_rows.index),
                    "event_timestamp": list(first_rows["min"] - pd.Timedelta(seconds=1)),
                }
            ),
        ],
        ignore_index=True,
    )
    got = historical_features(open_store(home), entity_df, ["customer_aggregates:cust_bookings"])
    assert len(got) == len(entity_df)
    assert got.tail(5)["cust_bookings"].isna().all()
    got = got.head(len(changing) * 2)

    by_key = history.set_index(["customer_id", "event_ts"])["cust_bookings"]
    for row in got.itertuples():
        rows = history[
            (history["customer_id"] == row.customer_id)
            & (history["event_ts"] <= row.event_timestamp)
        ]
        expected_ts = rows["event_ts"].max()
        assert row.cust_bookings == by_key[(row.customer_id, expected_ts)], row
    newest = got.set_index(["customer_id", "event_timestamp"])["cust_bookings"]
    for customer, stamp in changing["max"].items():
        assert newest[(customer, stamp)] == by_key[(customer, stamp)]
    # The newest values were not returned for the instant before them whenever they differ.
    older = [
        by_key[(c, history[(history.customer_id == c) & (history.event_ts < s)].event_ts.max())]
        for c, s in changing["max"].items()
    ]
    before = got[got["event_timestamp"].isin(just_before)].set_index("customer_id")
    assert before.loc[list(changing.index), "cust_bookings"].tolist() == older


def test_backfill_writes_exactly_what_the_dag_writes(home, features_dag, tmp_path, monkeypatch):
    from closedloop.core.feature_pipeline import backfill
    from closedloop.core.settings import load_settings

    write_batches(home.landing_dir, D1, 3, rows_per_day=120)
    for i in range(3):
        assert run_day(features_dag, D1 + timedelta(days=i)).succeeded
    monkeypatch.setenv("CLOSEDLOOP_HOME", str(tmp_path / "backfilled"))
    other = load_settings()
    write_batches(other.landing_dir, D1, 3, rows_per_day=120)

    backfill(other, D1, 3)

    for table in TABLES:
        for key in offline.partition_keys(home.offline_table_dir(table)):
            dag_frame = pd.read_parquet(offline.partition_path(home.offline_table_dir(table), key))
            bulk = pd.read_parquet(offline.partition_path(other.offline_table_dir(table), key))
            pd.testing.assert_frame_equal(dag_frame, bulk)


def test_a_view_being_materialized_still_serves_its_last_values(home, features_dag):
    """Feast marks the views a materialization writes MATERIALIZING in the registry until
    it ends, and by default refuses them to every reader meanwhile: a retrain's training
    set built during the next day's materialization failed. Here another process's
    materialization is in progress (the state set as Feast's ``materialize`` sets it);
    a training-set read and an online lookup still get the values from before it."""
    from feast.feature_view import FeatureViewState

    write_batches(home.landing_dir, D1, 2, rows_per_day=150)
    for i in range(2):
        assert run_day(features_dag, D1 + timedelta(days=i)).succeeded
    history = offline.read_partitions(home.offline_table_dir("customer_aggregates"))
    latest = history.sort_values("event_ts").groupby("customer_id").tail(1)
    customers = sorted(latest["customer_id"])[:20]
    entity_df = pd.DataFrame(
        {"customer_id": customers, "event_timestamp": pd.Timestamp("2026-01-03", tz="UTC")}
    )
    refs = ["customer_aggregates:cust_bookings"]
    before_offline = historical_features(open_store(home), entity_df, refs)["cust_bookings"]
    lookup = {"features": refs, "entity_rows": [{"customer_id": c} for c in customers]}
    before_online = open_store(home).get_online_features(**lookup).to_dict()["cust_bookings"]

    materializing = open_store(home)
    for name in ("customer_aggregates", "event_features"):
        view = materializing.get_feature_view(name)
        view.state = FeatureViewState.MATERIALIZING
        materializing.registry.apply_feature_view(view, materializing.project, commit=True)

    reader = open_store(home)  # a task or server starting meanwhile
    assert reader.get_feature_view("customer_aggregates").state == FeatureViewState.MATERIALIZING
    during = historical_features(reader, entity_df, refs)["cust_bookings"]
    assert during.tolist() == before_offline.tolist()
    assert before_online == latest.set_index("customer_id").loc[customers, "cust_bookings"].tolist()
    assert reader.get_online_features(**lookup).to_dict()["cust_bookings"] == before_online
