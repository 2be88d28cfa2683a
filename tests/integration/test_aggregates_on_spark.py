"""The declared aggregates on Spark (``closedloop.core.aggregates_spark``) against the
engine (``closedloop.core.aggregates``).

On the random readings of ``tests/aggregates_world.py`` (late labels, gaps, an empty
interval, a category column, facts on bucket and window edges), the engine advances
interval by interval as the feature pipeline runs it, and the Spark implementation
computes the same intervals at once from the event table, read from Parquet: the same
tables, columns and dtypes, the same emitted (key, stamp) rows and the same values --
bit-equal but for ``sum`` and ``mean``, which agree to within 1e-12 relative (the engine
keeps running window sums, adding each bucket and later subtracting it; Spark sums each
window afresh, so the last bits differ). Then the history contract: a run that starts
later, given the history it reads, gives the engine's rows for its intervals, and less
history than :func:`~closedloop.core.aggregates_spark.needed_since` says does not.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest
from aggregates_world import DAY, HOUR, declaration, generate, intervals, local_days, run

from closedloop.core.aggregates_spark import aggregate, needed_since, to_frames
from closedloop.core.derive import event_table
from closedloop.core.usecase import AGGREGATE_TS, UseCase

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration

DAILY = (0.3, 1.5, 4.0, 8.0)  # readings per device and day
APPROXIMATE = ("sum", "mean")


@pytest.fixture(scope="module")
def spark():
    """closedloop's SparkSession (``compute: spark`` on two local cores), stopped after
    the module unless it was running before."""
    from pyspark.sql import SparkSession

    from closedloop.core.settings import load_settings
    from closedloop.core.spark import session

    running = SparkSession.getActiveSession() is not None
    spark = session(load_settings(compute="spark", spark={"master": "local[2]"}))
    yield spark
    if not running:
        spark.stop()


def utc(periods: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """The intervals in UTC, as ``feature_pipeline.engineer`` hands them to the engine."""
    return [(start.astimezone(UTC), end.astimezone(UTC)) for start, end in periods]


def on_spark(spark: Any, usecase: UseCase, readings: pd.DataFrame, folder: Path) -> Any:
    """The readings' event table as the offline store holds it: Parquet, read by Spark."""
    path = folder / "events.parquet"
    event_table(readings, usecase).to_parquet(path, index=False)
    return spark.read.parquet(str(path))


def differences(
    usecase: UseCase, got: dict[str, pd.DataFrame], expected: dict[str, pd.DataFrame]
) -> list[str]:
    """Every way Spark's rows differ from the engine's (empty: none)."""
    problems = []
    assert set(got) == set(expected)
    for entity, rows in expected.items():
        key = usecase.entities[entity].join_key
        mine = got[entity]
        if list(mine.columns) != list(rows.columns) or list(mine.dtypes) != list(rows.dtypes):
            problems.append(f"{entity}: columns {dict(mine.dtypes)}, not {dict(rows.dtypes)}")
            continue
        rows = rows.sort_values([AGGREGATE_TS, key], kind="stable", ignore_index=True)
        emitted = {(k, t) for k, t in zip(rows[key], rows[AGGREGATE_TS], strict=True)}
        spark_emitted = {(k, t) for k, t in zip(mine[key], mine[AGGREGATE_TS], strict=True)}
        if emitted != spark_emitted:
            problems += [f"{entity}: only the engine emits {r}" for r in emitted - spark_emitted]
            problems += [f"{entity}: only Spark emits {r}" for r in spark_emitted - emitted]
            continue
        for name, agg in usecase.features.aggregations[entity].items():
            a, b = mine[name].to_numpy(), rows[name].to_numpy()
            same = np.isclose(a, b, rtol=1e-12, atol=0) if agg.op in APPROXIMATE else a == b
            for at in np.flatnonzero(~same)[:5]:
                problems.append(
                    f"{entity} {rows[key][at]} @{rows[AGGREGATE_TS][at]}: "
                    f"{name}={a[at]!r} on Spark, {b[at]!r} in the engine"
                )
    return problems


def report(problems: list[str]) -> str:
    return f"{len(problems)} difference(s), e.g.:\n" + "\n".join(problems[:15])


CASES = [
    pytest.param(
        declaration(known_at="resolved_ts", short="6h", positive=0),
        intervals(20, DAY),
        DAILY,
        (9,),
        id="daily-labels-known-at-a-column-hourly-buckets-positive-0",
    ),
    pytest.param(
        declaration(known_at="2h", short="6h", cadence="hourly"),
        intervals(60, HOUR),
        (0.05, 0.3, 1.0),
        (30, 31),
        id="hourly-cadence",
    ),
    pytest.param(
        {**declaration(known_at="6h", short="2d"), "schedule": {
            "start": "2025-03-20", "timezone": "Europe/Berlin"}},
        local_days("Europe/Berlin", "2025-03-20", 16),
        DAILY,
        (),
        id="berlin-midnights-across-dst",
    ),
    pytest.param(
        {**declaration(known_at="6h", short="6h"), "schedule": {
            "start": "2025-01-01", "timezone": "Asia/Kolkata"}},
        local_days("Asia/Kolkata", "2025-01-01", 12),
        DAILY,
        (),
        id="kolkata-half-hour-offset",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "periods", "rates", "empty"), CASES)
def test_every_row_the_engine_emits_and_no_other_comes_out_of_spark_with_its_values(
    spark, tmp_path: Path, raw, periods, rates, empty
):
    usecase = UseCase.from_dict(raw)
    periods = utc(periods)
    readings = generate(raw, periods, seed=7, per_period=rates, empty=empty)
    expected = run(usecase, readings, periods)

    got = to_frames(
        usecase, aggregate(usecase, on_spark(spark, usecase, readings, tmp_path), periods)
    )

    problems = differences(usecase, got, expected)
    assert not problems, report(problems)
    assert all(len(rows) for rows in expected.values())


def test_a_run_from_a_later_interval_reads_its_history_from_the_events_it_is_given(
    spark, tmp_path: Path
):
    """Windows reaching back past the first interval and labels of earlier events that
    become known in it (daily buckets here): the Spark run over the last intervals, given
    every event, gives the engine's rows of those intervals (the engine having run from
    the first)."""
    raw = declaration(known_at="resolved_ts", short="2d")
    usecase = UseCase.from_dict(raw)
    periods = intervals(16, DAY)
    readings = generate(raw, periods, seed=3, per_period=DAILY, empty=(5,))
    later = periods[9:]
    expected = {
        entity: rows[rows[AGGREGATE_TS] > pd.Timestamp(later[0][0])].reset_index(drop=True)
        for entity, rows in run(usecase, readings, periods).items()
    }

    got = to_frames(
        usecase, aggregate(usecase, on_spark(spark, usecase, readings, tmp_path), later)
    )

    problems = differences(usecase, got, expected)
    assert not problems, report(problems)


def test_the_history_needed_since_is_enough_and_less_is_not(spark, tmp_path: Path):
    """Without ``all`` windows and with a label delay, :func:`needed_since` bounds the
    history: events from there on give the engine's rows; from two days later, not."""
    raw = declaration(known_at="6h", short="2d")
    for aggregates in raw["features"]["aggregations"].values():
        for name in [n for n, spec in aggregates.items() if "window" not in spec]:
            del aggregates[name]
    usecase = UseCase.from_dict(raw)
    periods = intervals(18, DAY)
    readings = generate(raw, periods, seed=5, per_period=DAILY)
    later = periods[10:]
    since = needed_since(usecase, later[0][0])
    assert since == later[0][0] - 7 * DAY - 6 * HOUR  # the 7-day label window, the delay
    expected = {
        entity: rows[rows[AGGREGATE_TS] > pd.Timestamp(later[0][0])].reset_index(drop=True)
        for entity, rows in run(usecase, readings, periods).items()
    }

    def from_(first: datetime) -> dict[str, pd.DataFrame]:
        kept = readings[readings["ts"] >= first].reset_index(drop=True)
        folder = tmp_path / first.strftime("%Y%m%dT%H%M")
        folder.mkdir()
        return to_frames(usecase, aggregate(usecase, on_spark(spark, usecase, kept, folder), later))

    problems = differences(usecase, from_(since), expected)
    assert not problems, report(problems)
    assert differences(usecase, from_(since + 2 * DAY), expected), "less history was enough"
