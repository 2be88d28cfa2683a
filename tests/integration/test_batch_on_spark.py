"""Batch inference on Spark writes the local path's files, byte for byte.

One home with landed days, features and a champion (the core functions, no Airflow);
the same half-day scored with ``compute: local``, then with ``compute: spark`` (the
feature views' sources declared again as Spark sources) and again on Spark (a rerun).
hotel_aggregates gets ties: each row the interval's bookings match appears twice more,
with other values, in a file read after its own, so which one they get is decided by
asof.py's rule for ties (the row read last). The rule's time and TTL edges are compared
with asof.py's on rows placed on them. Each Python worker reports the chunks it scored
and whether it loaded the model for one (``score_interval``'s ``spark``).
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from closedloop.core import offline
from closedloop.core.batch_inference import predictions_dir, score_interval
from closedloop.core.feature_pipeline import backfill
from closedloop.core.prediction_log import PredictionLog
from closedloop.core.settings import load_settings
from closedloop.core.training_pipeline import EVENT_TIMESTAMP
from closedloop.usecases.hotel.generator import write_batches

pytestmark = pytest.mark.integration

FIRST, DAYS = date(2026, 1, 1), 14
FIRST_DAY = datetime.combine(FIRST, datetime.min.time(), UTC)
# the second half of the last day but one (its partition: KEY), after the training days
TRAIN_END = START_OF_DAY = datetime(2026, 1, 13, tzinfo=UTC)
START, END = START_OF_DAY + timedelta(hours=12), START_OF_DAY + timedelta(days=1)
KEY, DAY_BEFORE = "2026-01-13", "2026-01-12"
CHUNK = 20  # four chunks or more, the last one partial
#: added to a tied row's hotel_adr_mean_30d: the first of the tie, the one read last
TIED, LAST = 1000.0, 2000.0
TICK = pd.Timedelta(microseconds=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A home with DAYS of features, a champion trained on the days before KEY, and ties
    in hotel_aggregates on the rows the interval's bookings match."""
    from closedloop.core import training_pipeline as tp

    root = tmp_path_factory.mktemp("batch-spark") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOSEDLOOP_HOME", str(root))
        settings = load_settings()
        write_batches(settings.landing_dir, FIRST, DAYS, rows_per_day=250)
        backfill(settings, FIRST, DAYS)
        decision = tp.run_in_process(
            settings, FIRST_DAY, TRAIN_END, "t/1", reason="test",
            trials=2, validation_days=3, holdout_days=3,
        )  # fmt: skip
        assert decision["action"] == "promoted", decision
        _add_ties(settings)
        yield settings


def _add_ties(settings) -> None:
    """Each hotel's row stamped at the start of the interval's day (in the previous
    day's partition), twice more in a file read after it: +TIED, then +LAST."""
    folder = settings.offline_table_dir("hotel_aggregates")
    rows = pq.read_table(offline.partition_path(folder, DAY_BEFORE))
    at = rows.schema.get_field_index("hotel_adr_mean_30d")
    tied = [
        rows.set_column(at, "hotel_adr_mean_30d", pc.add(rows.column(at), extra))
        for extra in (TIED, LAST)
    ]
    pq.write_table(pa.concat_tables(tied), folder / f"{DAY_BEFORE}.tie.parquet")


def _scored(settings) -> tuple[dict, dict[str, bytes], list[str]]:
    """Score the interval: the result, both files' bytes and what the outputs' folders hold."""
    result = score_interval(settings, START, END, chunk_rows=CHUNK)
    files = {name: Path(result[f"{name}_uri"]).read_bytes() for name in ("predictions", "log")}
    return result, files, _listing(settings)


def _listing(settings) -> list[str]:
    folders = (predictions_dir(settings), settings.prediction_log_dir)
    return sorted(str(p.relative_to(settings.home)) for f in folders for p in f.rglob("*"))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def on_spark(world):
    """The same home with ``compute: spark``, its views' sources Spark sources."""
    from closedloop.core.feature_store import apply_definitions, open_store

    settings = world.model_copy(update={"compute": "spark"})
    apply_definitions(open_store(settings), settings)
    return settings


@pytest.fixture(scope="module")
def runs(world, on_spark):
    """The interval scored locally, on Spark, and on Spark again."""
    runs = {"local": _scored(world)}
    runs["spark"] = _scored(on_spark)
    runs["rerun"] = _scored(on_spark)
    return runs


def test_spark_writes_the_local_paths_files_byte_for_byte(runs):
    local, spark = runs["local"], runs["spark"]
    assert "spark" not in local[0] and spark[0]["spark"]["chunks"] == spark[0]["chunks"]
    assert spark[0]["rows"] == local[0]["rows"] > CHUNK * 3
    assert spark[0]["chunks"] == local[0]["chunks"] == math.ceil(local[0]["rows"] / CHUNK)
    assert spark[0]["model_version"] == local[0]["model_version"] == "1"
    assert spark[0]["positive_rate"] == local[0]["positive_rate"]
    for name in ("predictions", "log"):
        assert _sha256(spark[1][name]) == _sha256(local[1][name]), name


def test_both_took_the_tied_row_read_last(runs):
    """The bytes are equal: so is the choice among the tied rows, which is asof.py's."""
    records = pq.read_table(pa.BufferReader(runs["spark"][1]["log"])).to_pandas()
    assert (records["hotel_adr_mean_30d"] > LAST).all()


def test_a_rerun_on_spark_leaves_exactly_the_same_files(runs):
    first, rerun = runs["spark"], runs["rerun"]
    assert rerun[1] == first[1]
    assert rerun[2] == first[2] == runs["local"][2]  # no temporary files left either
    assert rerun[2] == [
        "prediction_log/hotel_bookings/source=batch",
        f"prediction_log/hotel_bookings/source=batch/{KEY}",
        f"prediction_log/hotel_bookings/source=batch/{KEY}/batch.parquet",
        f"predictions/hotel_bookings/{KEY}.parquet",
    ]


def test_each_python_worker_loads_the_model_once_not_per_chunk(runs):
    for name in ("spark", "rerun"):
        spread = runs[name][0]["spark"]
        assert spread["model_loads"] <= spread["workers"] < spread["chunks"], name
    assert runs["spark"][0]["spark"]["model_loads"] >= 1


def test_an_interval_without_events_removes_earlier_outputs_on_spark(on_spark, runs):
    targets = (
        offline.partition_path(predictions_dir(on_spark), KEY),
        PredictionLog(on_spark.prediction_log_dir).batch_partition(KEY),
    )
    assert all(t.exists() for t in targets)
    day = pq.read_table(offline.partition_path(on_spark.offline_table_dir("events"), KEY))
    first = pc.min(day.column(on_spark.usecase.batch.timestamp_column)).as_py()
    assert first > START_OF_DAY
    out = score_interval(on_spark, START_OF_DAY, first, chunk_rows=CHUNK)  # before it
    assert out["rows"] == 0 and out["predictions_uri"] is None and out["log_uri"] is None
    assert out["spark"]["chunks"] == 0
    assert not any(t.exists() for t in targets)


def test_the_spark_join_takes_asofs_row_on_the_rules_edges(on_spark):
    """Events at a view row, before any, between rows, at the TTL and one microsecond
    beyond it, with an unknown key: Spark's join and asof.py's give the same features."""
    from closedloop.core import spark
    from closedloop.core.asof import AsOfIndex, feature_views
    from closedloop.core.batch_spark import _join_view
    from closedloop.core.feature_store import feature_refs, open_store

    store = open_store(on_spark)
    views = feature_views(on_spark, store, feature_refs(store, on_spark.usecase.feature_service))
    by_name = {v.name: v for v in views if not v.own}
    history = offline.read_partitions(on_spark.offline_table_dir("customer_aggregates"))
    customer = history["customer_id"].value_counts().index[0]
    stamps = history.loc[history["customer_id"] == customer, "event_ts"].sort_values()
    hotel = "H02"
    hotel_rows = offline.read_partitions(on_spark.offline_table_dir("hotel_aggregates"))
    hotel_stamps = hotel_rows.loc[hotel_rows["hotel"] == hotel, "event_ts"]
    ttl_c = pd.Timedelta(by_name["customer_aggregates"].ttl)
    ttl_h = pd.Timedelta(by_name["hotel_aggregates"].ttl)
    cases = [
        (customer, hotel, stamps.iloc[0]),  # exactly at a customer row
        (customer, hotel, stamps.iloc[0] - TICK),  # before any customer row
        (customer, hotel, stamps.iloc[len(stamps) // 2] + pd.Timedelta("3h")),
        (customer, hotel, hotel_stamps.max()),  # exactly at a hotel row
        ("C-UNKNOWN", hotel, hotel_stamps.min() - TICK),  # before any hotel row
        (customer, hotel, hotel_stamps.max() + ttl_h),  # hotel row exactly TTL old
        (customer, hotel, hotel_stamps.max() + ttl_h + TICK),  # beyond the TTL
        (customer, hotel, stamps.iloc[-1] + ttl_c),  # customer row exactly TTL old
        (customer, hotel, stamps.iloc[-1] + ttl_c + TICK),  # beyond the TTL
        (customer, "H-UNKNOWN", hotel_stamps.max()),
        (customer, hotel, pd.Timestamp(START_OF_DAY)),  # the tie
    ]
    rows = pd.DataFrame(
        [
            {"booking_id": f"E{i:02d}", "customer_id": c, "hotel": h, EVENT_TIMESTAMP: t}
            for i, (c, h, t) in enumerate(cases)
        ]
    )
    rows[EVENT_TIMESTAMP] = pd.to_datetime(rows[EVENT_TIMESTAMP], utc=True)
    start = rows[EVENT_TIMESTAMP].min().to_pydatetime()
    end = (rows[EVENT_TIMESTAMP].max() + TICK).to_pydatetime()

    session = spark.session(on_spark)
    for view in by_name.values():
        want = AsOfIndex(view, start, end).features(rows)
        events = session.createDataFrame(rows)
        got = _join_view(session, events, EVENT_TIMESTAMP, view, start, end, pa.schema([]))
        got = got.orderBy("booking_id").toPandas()[view.features]
        assert want.notna().any().all() and want.isna().any().all(), view.name
        for column in view.features:
            np.testing.assert_array_equal(
                got[column].to_numpy(float), want[column].to_numpy(float), f"{view.name}.{column}"
            )
