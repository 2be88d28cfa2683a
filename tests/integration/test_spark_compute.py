"""The same features DAG on the same landed days, with ``compute: local`` and with
``compute: spark`` (Feast's Spark offline store and Spark compute engine, pyspark in
local mode on the machine's Java 17): the same offline rows, the same online values and
the same training set (built by Spark in the Spark home), digest for digest.

Each compute has its own home; the DAG file and the landed batches are the same.
"""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pandas as pd
import pytest

from closedloop.core import offline
from closedloop.core.feature_store import open_store
from closedloop.core.settings import load_settings
from closedloop.core.training_pipeline import build_training_set
from closedloop.core.usecase import AGGREGATE_TS
from closedloop.platform.airflow_runs import run_day
from closedloop.usecases.hotel.generator import write_batches

pytestmark = pytest.mark.integration

D1 = date(2026, 1, 1)
DAYS = 5
COMPUTES = ("local", "spark")
#: the training window: the landed days
WINDOW = (
    datetime.combine(D1, time.min, UTC),
    datetime.combine(D1 + timedelta(days=DAYS), time.min, UTC),
)


@pytest.fixture(scope="module")
def homes(tmp_path_factory, features_dag):
    """compute -> settings of a home the features DAG ran ``DAYS`` days in."""
    out = {}
    for compute in COMPUTES:
        home = tmp_path_factory.mktemp(f"compute-{compute}") / "home"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("CLOSEDLOOP_HOME", str(home))
            mp.setenv("CLOSEDLOOP_COMPUTE", compute)
            settings = load_settings()
            write_batches(settings.landing_dir, D1, DAYS, rows_per_day=150)
            outcomes = [run_day(features_dag, D1 + timedelta(days=i)) for i in range(DAYS)]
            assert [o.state for o in outcomes] == ["success"] * DAYS, [
                o.task_states for o in outcomes
            ]
        out[compute] = settings
    return out


def test_the_spark_home_ran_on_feasts_spark_store_and_engine(homes):
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

    store = open_store(homes["spark"])
    assert store.config.offline_store.type == "spark"
    assert store.config.batch_engine.type == "spark.engine"
    views = store.list_feature_views()
    assert views and all(isinstance(v.batch_source, SparkSource) for v in views)
    assert open_store(homes["local"]).config.offline_store.type == "file"


def test_the_spark_home_engineered_on_a_sharded_state(homes):
    """The engineer step ran on Spark: each interval's snapshot is the shards' states."""
    from closedloop.core.engineer_spark import SHARDED, sharded_state

    settings = homes["spark"]
    snapshots = sorted(settings.aggregation_state_dir.iterdir())
    assert len(snapshots) == DAYS
    entities = list(settings.usecase.aggregate_tables)
    shards = settings.spark.aggregation_shards
    assert all(sharded_state(s, shards, entities) for s in snapshots)
    assert not any((s / SHARDED).exists() for s in homes["local"].aggregation_state_dir.iterdir())


def test_a_rerun_without_snapshots_replays_the_event_table(homes, features_dag):
    """A rerun of the last day on Spark with no snapshot kept rebuilds the shards' states
    from the earlier days' event table: the same offline rows."""
    settings = homes["spark"]
    last = D1 + timedelta(days=DAYS - 1)
    key = settings.usecase.interval_key(datetime.combine(last, time.min, UTC))
    tables = {t: settings.offline_table_dir(t) for t in settings.usecase.offline_tables}
    before = {t: offline.read_partitions(d, keys=[key]) for t, d in tables.items()}
    shutil.rmtree(settings.aggregation_state_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOSEDLOOP_HOME", str(settings.home))
        mp.setenv("CLOSEDLOOP_COMPUTE", "spark")
        outcome = run_day(features_dag, last)
    assert outcome.state == "success", outcome.task_states
    for table, directory in tables.items():
        after = offline.read_partitions(directory, keys=[key])
        pd.testing.assert_frame_equal(after, before[table], check_exact=True)
    snapshots = sorted(p.name for p in settings.aggregation_state_dir.iterdir())
    assert snapshots == [key]  # the replay's states are not kept as snapshots


def test_the_session_feast_ran_on_has_closedloops_properties(homes):
    """The DAG's tasks ran in this process (``dag.test``): its Spark session is the one
    built from ``closedloop.core.spark.spark_conf``, not Spark's defaults."""
    from pyspark.sql import SparkSession

    from closedloop.core.spark import spark_conf

    conf = SparkSession.getActiveSession().sparkContext.getConf()
    for key, value in spark_conf(homes["spark"]).items():
        if key != "spark.app.name":
            assert conf.get(key) == value, key


def test_the_offline_rows_are_the_same(homes):
    """The same rows, values and dtypes; the event table in the same order, an
    aggregate table's interval in shard order on Spark (each shard's rows by key),
    compared by key."""
    usecase = homes["local"].usecase
    keys = {usecase.aggregate_tables[e]: usecase.entities[e].join_key for e in usecase.entities}
    tables = sorted(p.name for p in homes["local"].offline_dir.iterdir())
    assert len(tables) == 3
    for table in tables:
        local, spark = (offline.read_partitions(homes[c].offline_dir / table) for c in COMPUTES)
        assert len(local) > 0
        if table in keys:
            by = [AGGREGATE_TS, keys[table]]
            local, spark = (t.sort_values(by, ignore_index=True) for t in (local, spark))
        pd.testing.assert_frame_equal(local, spark, check_exact=True)


def test_the_online_values_are_the_same(homes):
    """Every key of every view's offline table, looked up through Feast in each home's
    online store (written by Feast's local engine and by its Spark engine)."""
    stores = {c: open_store(homes[c]) for c in COMPUTES}
    looked_up = 0
    for view in stores["local"].list_feature_views():
        key = view.entity_columns[0].name
        table = offline.read_partitions(Path(view.batch_source.path))
        rows = [{key: k} for k in sorted(table[key].unique())]
        refs = [f"{view.name}:{f.name}" for f in view.features]
        answers = {
            c: stores[c].get_online_features(features=refs, entity_rows=rows).to_dict()
            for c in COMPUTES
        }
        assert answers["local"] == answers["spark"], view.name
        present = [v for v in answers["local"][view.features[0].name] if v is not None]
        assert len(present) == len(rows), f"{view.name}: keys without online values"
        looked_up += len(rows)
    assert looked_up > 100


@pytest.fixture(scope="module")
def built(homes):
    """compute -> the training set of the window, built in each home."""
    return {c: build_training_set(homes[c], *WINDOW, run_key=f"same-{c}") for c in COMPUTES}


def test_the_training_set_is_the_same(built):
    """Built by Spark and streamed into the snapshot: the local path's digest, and a file
    every reader gets the local frame from."""
    assert built["local"].rows > 50
    assert built["spark"].rows == built["local"].rows
    assert built["spark"].digest == built["local"].digest
    assert built["spark"].positive_rate == built["local"].positive_rate
    local, spark = (pd.read_parquet(built[c].uri) for c in COMPUTES)
    pd.testing.assert_frame_equal(local, spark, check_exact=True)
    assert not (Path(built["spark"].uri).parent / ".spark-staging").exists()


def test_a_rebuild_on_spark_replaces_what_an_earlier_attempt_left(homes, built):
    """A retry of the run after an attempt killed with Spark's output half staged (a
    part file that would come first): the same rows, digest and file."""
    first = Path(built["spark"].uri)
    left = first.parent / ".spark-staging" / "training_set" / "part-00000-left.snappy.parquet"
    left.parent.mkdir(parents=True)
    pd.read_parquet(first).head(3).to_parquet(left, index=False)
    content = first.read_bytes()

    again = build_training_set(homes["spark"], *WINDOW, run_key="same-spark")

    assert again == built["spark"]
    assert first.read_bytes() == content
    assert not left.parent.parent.exists()
