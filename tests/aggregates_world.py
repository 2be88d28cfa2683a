"""A small world of device readings for the aggregation engine's tests: a declaration
(a ``device`` and a ``site`` entity, two numeric columns with gaps, a category column, a
label known after a delay, at a declared column or at once), random readings over a run of
intervals, and the engine run interval by interval as the feature pipeline runs it.

Shared by ``tests/unit/test_aggregates.py`` (the engine against a brute force) and
``tests/unit/test_sharded_aggregates.py`` (the engine against its state cut in shards).
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from closedloop.core.aggregates import AggregationEngine, AggregationState
from closedloop.core.derive import event_table
from closedloop.core.usecase import AGGREGATE_TS, UseCase

START = datetime(2025, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
QUARTER = timedelta(minutes=15)
SITES = ["S1", "S2", "S3", "S4"]
MODES = ["idle", "run", "fault", "boot"]


# -- the declaration ---------------------------------------------------------------------


def declaration(
    *, known_at: str, short: str, cadence: str = "daily", positive: int = 1
) -> dict[str, Any]:
    """A device-health use case. ``short`` is the shortest window (``6h`` makes the
    buckets hourly); ``known_at`` a delay, ``at_once`` or ``resolved_ts`` (a column);
    ``positive`` the label value that counts as positive (0 or 1 of ``failed``)."""
    columns: dict[str, Any] = {
        "reading_id": {"type": "string", "unique": True},
        "device_id": {"type": "string", "required": False},
        "site_id": {"type": "category", "categories": SITES, "required": False},
        "ts": {"type": "timestamp"},
        "temp": {"type": "float", "required": False},
        "load": {"type": "float", "required": False},
        "mode": {"type": "category", "categories": MODES, "required": False},
    }
    columns["failed"] = {"type": "int", "min": 0, "max": 1}
    label = {"column": "failed", "positive": positive, "known_at": known_at}
    if known_at == "resolved_ts":
        columns["resolved_ts"] = {"type": "timestamp"}
    device = {
        "dev_events": {"op": "count"},
        "dev_events_1d": {"op": "count", "window": "1d"},
        "dev_temps_7d": {"op": "count", "column": "temp", "window": "7d"},
        "dev_temp_sum_7d": {"op": "sum", "column": "temp", "window": "7d"},
        "dev_temp_mean": {"op": "mean", "column": "temp", "default": -1.0},
        "dev_temp_min_1d": {"op": "min", "column": "temp", "window": "1d", "default": -99.0},
        "dev_load_max_short": {"op": "max", "column": "load", "window": short, "default": -1.0},
        "dev_modes_7d": {"op": "distinct_count", "column": "mode", "window": "7d"},
        "dev_modes": {"op": "distinct_count", "column": "mode"},
        "dev_labels_short": {"op": "label_count", "window": short},
        "dev_positives": {"op": "positive_count"},
        "dev_rate_7d": {"op": "label_rate", "window": "7d", "prior": {"rate": 0.25, "weight": 2}},
        "dev_rate_1d": {"op": "label_rate", "window": "1d", "default": 0.5},
    }
    site = {
        "site_events_short": {"op": "count", "window": short},
        "site_loads": {"op": "count", "column": "load"},
        "site_load_mean_1d": {"op": "mean", "column": "load", "window": "1d", "default": 0.0},
        "site_load_sum": {"op": "sum", "column": "load"},
        "site_temp_min": {"op": "min", "column": "temp", "default": 99.0},
        "site_temp_max_7d": {"op": "max", "column": "temp", "window": "7d", "default": -99.0},
        "site_modes_1d": {"op": "distinct_count", "column": "mode", "window": "1d"},
        "site_labels": {"op": "label_count"},
        "site_positives_7d": {"op": "positive_count", "window": "7d"},
        "site_rate": {"op": "label_rate", "default": 0.0},
        "site_rate_short": {
            "op": "label_rate",
            "window": short,
            "prior": {"rate": 0.5, "weight": 1},
        },
    }
    return {
        "name": "device_health",
        "batch": {"cadence": cadence, "id_column": "reading_id", "timestamp_column": "ts"},
        "entities": {"device": {"join_key": "device_id"}, "site": {"join_key": "site_id"}},
        "label": label,
        "columns": columns,
        "features": {"aggregations": {"device": device, "site": site}},
        "schedule": {"start": START.date().isoformat()},
    }


# -- random readings ---------------------------------------------------------------------


def generate(
    raw: dict[str, Any],
    periods: list[tuple[datetime, datetime]],
    *,
    seed: int,
    per_period: tuple[float, ...],
    empty: tuple[int, ...] = (),
) -> pd.DataFrame:
    """Readings of 14 devices over ``periods``; a device reads ``per_period`` times per
    interval on average (busy, sparse or in between) from a random first interval on;
    none at all in the ``empty`` intervals. Device d00 never reports a temperature."""
    rng = np.random.default_rng(seed)
    n_devices = 14
    rates = rng.choice(per_period, size=n_devices)
    first = rng.integers(0, max(1, len(periods) // 2), size=n_devices)
    first[:3] = 0
    home = rng.choice(SITES[:3], size=n_devices)  # S4 only sees strays
    records = []
    for period, (start, end) in enumerate(periods):
        if period in empty:
            continue
        start = start.astimezone(UTC)  # aware arithmetic in a local zone is wall-clock
        slots = int((end.astimezone(UTC) - start) / QUARTER)
        for d in range(n_devices):
            if period < first[d]:
                continue
            for _ in range(rng.poisson(rates[d])):
                ts = start + int(rng.integers(0, slots)) * QUARTER
                u = rng.random()
                site = home[d] if u < 0.75 else None if u < 0.8 else str(rng.choice(SITES))
                record = {
                    "device_id": None if rng.random() < 0.05 else f"d{d:02d}",
                    "site_id": site,
                    "ts": ts,
                    "temp": np.nan
                    if d == 0 or rng.random() < 0.15
                    else round(float(rng.normal(40, 8)), 3),
                    "load": np.nan if rng.random() < 0.15 else float(rng.random()),
                    "mode": None if rng.random() < 0.1 else str(rng.choice(MODES)),
                    "failed": int(rng.random() < 0.3),
                }
                if "resolved_ts" in raw["columns"]:
                    # mostly hours to days later; sometimes "before" the reading itself
                    record["resolved_ts"] = ts + int(rng.integers(-8, 4 * 24 * 3)) * QUARTER
                records.append(record)
    frame = pd.DataFrame(records)
    for column in ("ts", "resolved_ts"):
        if column in frame:
            frame[column] = frame[column].astype("datetime64[us, UTC]")
    frame = frame.sort_values("ts", kind="stable").reset_index(drop=True)
    frame.insert(0, "reading_id", [f"r{i:05d}" for i in range(len(frame))])
    return frame


def intervals(periods: int, step: timedelta) -> list[tuple[datetime, datetime]]:
    return [(START + i * step, START + (i + 1) * step) for i in range(periods)]


def local_days(timezone: str, first: str, days: int) -> list[tuple[datetime, datetime]]:
    """Daily intervals from local midnight to local midnight, as Airflow's timetable
    hands them for a use case whose ``schedule.timezone`` is ``timezone``."""
    zone = ZoneInfo(timezone)
    midnights = [pd.Timestamp(first, tz=zone) + pd.DateOffset(days=i) for i in range(days + 1)]
    return [(a.to_pydatetime(), b.to_pydatetime()) for a, b in itertools.pairwise(midnights)]


def batch(readings: pd.DataFrame, usecase: UseCase, start: datetime, end: datetime):
    """The event table of one interval, as the feature pipeline hands it to the engine."""
    inside = (readings["ts"] >= start) & (readings["ts"] < end)
    return event_table(readings[inside].reset_index(drop=True), usecase)


def run(
    usecase: UseCase,
    readings: pd.DataFrame,
    periods: list[tuple[datetime, datetime]],
    state: AggregationState | None = None,
) -> dict[str, pd.DataFrame]:
    """Every row the engine emits over ``periods``, per entity."""
    engine = AggregationEngine(usecase)
    state = AggregationState() if state is None else state
    emitted: dict[str, list[pd.DataFrame]] = {e: [] for e in usecase.features.aggregations}
    for start, end in periods:
        out = engine.advance(state, batch(readings, usecase, start, end), start, end)
        assert set(out) == set(emitted)
        for entity, rows in out.items():
            assert (rows[AGGREGATE_TS] == pd.Timestamp(end)).all()
            emitted[entity].append(rows)
    return {e: pd.concat(frames, ignore_index=True) for e, frames in emitted.items()}
