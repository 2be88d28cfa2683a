"""The incremental aggregation engine (``closedloop.core.aggregates``) against a brute force.

A small declaration of device readings (a ``device`` and a ``site`` entity, two numeric
columns with gaps, a category column, a label known after a delay, at a declared column or
at once) and random readings over some weeks (``tests/aggregates_world.py``): devices
that are busy, sparse or start late, readings without a device or a site, timestamps on a
15-minute grid so that many facts fall exactly on bucket and window edges. The engine
runs interval by interval, as the feature pipeline runs it, and every row it emits is
compared with a brute force written here (plain loops over all facts, nothing from the
engine):

* a row stamped ``T`` holds, for each aggregate, the value over the facts known before
  ``T``: readings with ``ts`` in ``[T - w, T)``; labels known (``max(known_at, ts)``) in
  ``[T - w, T)``; the declared fill value when the window holds nothing;
* no change is missed: for every stamp ``T`` and every entity with readings before ``T``,
  its newest row at or before ``T`` (what Feast's point-in-time join serves) equals the
  brute force at ``T`` -- so a row must be emitted whenever a value changes, including
  when a window empties without any new reading.

Then the state's contract: a state saved and loaded continues exactly like the one in
memory, a rerun of an interval from its predecessor's saved state gives the same rows,
advancing from the wrong interval is refused without a trace, and an interval without a
single reading still emits the rows whose windows changed.
"""

from __future__ import annotations

import bisect
import copy
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from aggregates_world import (
    DAY,
    HOUR,
    batch,
    declaration,
    generate,
    intervals,
    local_days,
    run,
)

from closedloop.core.aggregates import AggregationEngine, AggregationState
from closedloop.core.usecase import AGGREGATE_TS, UseCase

#: the test's own reading of the windows and delays it declares (not parse_duration)
DURATIONS = {"2h": 2 * HOUR, "6h": 6 * HOUR, "1d": DAY, "2d": 2 * DAY, "7d": 7 * DAY}
INT_OPS = ("count", "distinct_count", "label_count", "positive_count")


# -- the brute force ---------------------------------------------------------------------


@dataclass(frozen=True)
class Fact:
    ts: pd.Timestamp
    known: pd.Timestamp  # when its label became known (never before the reading)
    positive: bool
    values: dict[str, Any]


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def facts_by_key(raw: dict[str, Any], readings: pd.DataFrame, key: str) -> dict[str, list[Fact]]:
    label = raw["label"]
    out: dict[str, list[Fact]] = {}
    for record in readings.to_dict("records"):
        if missing(record[key]):
            continue
        ts = record["ts"]
        if label["known_at"] == "at_once":
            known = ts
        elif label["known_at"] in DURATIONS:
            known = ts + DURATIONS[label["known_at"]]
        else:
            known = max(record[label["known_at"]], ts)
        positive = record[label["column"]] == label["positive"]
        values = {c: record[c] for c in ("temp", "load", "mode")}
        out.setdefault(record[key], []).append(Fact(ts, known, positive, values))
    return out


def fill(spec: dict[str, Any]) -> float:
    if "default" in spec:
        return spec["default"]
    if spec["op"] == "label_rate":
        return spec["prior"]["rate"]
    return 0


def brute_force(facts: list[Fact], spec: dict[str, Any], stamp: pd.Timestamp) -> float:
    """The aggregate ``spec`` of one entity as of ``stamp``, from all of its facts."""
    window = spec.get("window", "all")
    since = None if window == "all" else stamp - DURATIONS[window]
    op = spec["op"]
    if op in ("label_count", "positive_count", "label_rate"):
        known = [f for f in facts if f.known < stamp and (since is None or f.known >= since)]
        n, positives = len(known), sum(1 for f in known if f.positive)
        if op == "label_count":
            return n
        if op == "positive_count":
            return positives
        if "prior" in spec:
            rate, weight = spec["prior"]["rate"], spec["prior"]["weight"]
            return (positives + rate * weight) / (n + weight)
        return positives / n if n else fill(spec)
    seen = [f for f in facts if f.ts < stamp and (since is None or f.ts >= since)]
    column = spec.get("column")
    if op == "count" and column is None:
        return len(seen)
    values = [f.values[column] for f in seen if not missing(f.values[column])]
    if op == "count":
        return len(values)
    if op == "distinct_count":
        return len(set(values))
    if op == "sum":
        return sum(values)
    if not values:
        return fill(spec)
    if op == "mean":
        return sum(values) / len(values)
    return min(values) if op == "min" else max(values)


def agrees(value: Any, expected: float) -> bool:
    return not missing(value) and math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-9)


def disagreements(
    raw: dict[str, Any],
    usecase: UseCase,
    readings: pd.DataFrame,
    emitted: dict[str, pd.DataFrame],
    stamps: list[pd.Timestamp],
) -> list[str]:
    """Every way the engine's rows differ from the brute force (empty: none)."""
    problems: list[str] = []
    for entity, specs in raw["features"]["aggregations"].items():
        key = usecase.entities[entity].join_key
        facts = facts_by_key(raw, readings, key)
        rows = emitted[entity]
        for name, spec in specs.items():
            dtype = "int64" if spec["op"] in INT_OPS else "float64"
            if str(rows[name].dtype) != dtype:
                problems.append(f"{entity}.{name} is {rows[name].dtype}, not {dtype}")
        if rows.duplicated([key, AGGREGATE_TS]).any():
            problems.append(f"{entity}: more than one row per key and stamp")
        newest: dict[str, list[tuple[pd.Timestamp, dict[str, Any]]]] = {}
        # every emitted row equals the brute force at its own stamp
        for row in rows.to_dict("records"):
            k, stamp = row[key], row[AGGREGATE_TS]
            if missing(k) or k not in facts:
                problems.append(f"{entity}: a row for {k!r}, which has no readings")
                continue
            newest.setdefault(k, []).append((stamp, row))
            for name, spec in specs.items():
                expected = brute_force(facts[k], spec, stamp)
                if not agrees(row[name], expected):
                    problems.append(f"{entity} {k} @{stamp}: {name}={row[name]}, not {expected}")
        # ...and the newest row at or before any stamp equals the brute force there
        for k, key_facts in facts.items():
            history = sorted(newest.get(k, []), key=lambda item: item[0])
            times = [t for t, _ in history]
            first = min(f.ts for f in key_facts)
            for stamp in stamps:
                if first >= stamp:
                    continue  # no history yet: the join's defaults apply
                at = bisect.bisect_right(times, stamp)
                if at == 0:
                    problems.append(f"{entity} {k}: no row at or before {stamp} despite readings")
                    continue
                row = history[at - 1][1]
                for name, spec in specs.items():
                    expected = brute_force(key_facts, spec, stamp)
                    if not agrees(row[name], expected):
                        problems.append(
                            f"{entity} {k} @{stamp}: the newest row ({history[at - 1][0]}) has "
                            f"{name}={row[name]} but the value is now {expected}: a missed change"
                        )
    return problems


def report(problems: list[str]) -> str:
    return f"{len(problems)} disagreement(s), e.g.:\n" + "\n".join(problems[:15])


# -- the engine against the brute force --------------------------------------------------

DAYS = 20
EMPTY_DAY = 9
DAILY = (0.3, 1.5, 4.0, 8.0)  # readings per device and day


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(declaration(known_at="6h", short="6h"), id="delay-6h-hourly-buckets"),
        pytest.param(declaration(known_at="6h", short="2d"), id="delay-6h-daily-buckets"),
        pytest.param(
            declaration(known_at="resolved_ts", short="6h", positive=0),
            id="known-at-column-hourly-buckets-positive-0",
        ),
        pytest.param(
            declaration(known_at="resolved_ts", short="2d"), id="known-at-column-daily-buckets"
        ),
        pytest.param(declaration(known_at="at_once", short="6h"), id="at-once-hourly-buckets"),
        pytest.param(declaration(known_at="at_once", short="2d"), id="at-once-daily-buckets"),
    ],
)
def test_every_daily_row_equals_the_brute_force_and_no_change_is_missed(raw):
    usecase = UseCase.from_dict(raw)
    periods = intervals(DAYS, DAY)
    readings = generate(raw, periods, seed=7, per_period=DAILY, empty=(EMPTY_DAY,))
    emitted = run(usecase, readings, periods)

    problems = disagreements(raw, usecase, readings, emitted, [pd.Timestamp(e) for _, e in periods])
    assert not problems, report(problems)
    # the run exercised what it protects: rows emitted only because a window moved on
    devices = emitted["device"]
    day_of = readings.assign(day=readings["ts"].dt.floor("1d") + pd.Timedelta(days=1))
    active = set(zip(day_of["device_id"], day_of["day"], strict=True))
    quiet = [
        (k, t) for k, t in zip(devices["device_id"], devices[AGGREGATE_TS], strict=True)
        if (k, t) not in active
    ]  # fmt: skip
    assert len(quiet) > 20, "too few rows emitted without new readings to test expiry"
    assert (devices["dev_temp_mean"] == -1.0).any(), "no row fell back to a mean's default"


def test_an_hourly_use_case_advanced_hour_by_hour_equals_the_brute_force():
    raw = declaration(known_at="2h", short="6h", cadence="hourly")
    usecase = UseCase.from_dict(raw)
    hours = 60
    periods = intervals(hours, HOUR)
    readings = generate(raw, periods, seed=11, per_period=(0.05, 0.3, 1.0), empty=(30, 31))
    emitted = run(usecase, readings, periods)

    problems = disagreements(raw, usecase, readings, emitted, [pd.Timestamp(e) for _, e in periods])
    assert not problems, report(problems)
    assert emitted["device"][AGGREGATE_TS].nunique() > hours // 2


@pytest.mark.parametrize(
    ("timezone", "first", "short", "dst"),
    [
        pytest.param("Europe/Berlin", "2025-03-20", "2d", True, id="berlin-dst-daily-windows"),
        pytest.param("Europe/Berlin", "2025-10-18", "6h", True, id="berlin-dst-hours-window"),
        pytest.param("America/New_York", "2025-03-01", "2d", True, id="new-york-dst"),
        pytest.param("Asia/Kolkata", "2025-01-01", "6h", False, id="kolkata-half-hour-offset"),
        pytest.param("Asia/Kathmandu", "2025-01-01", "2d", False, id="kathmandu-quarter-hour"),
    ],
)
def test_intervals_at_local_midnight_of_the_declared_time_zone_equal_the_brute_force(
    timezone, first, short, dst
):
    """With ``schedule.timezone`` set, the DAG's intervals run from local midnight to
    local midnight (23 or 25 hours across a daylight-saving change), so interval ends and
    window starts are not UTC midnights: buckets floored to UTC days (or hours) would
    split readings across a window's edge."""
    raw = declaration(known_at="6h", short=short)
    raw["schedule"]["timezone"] = timezone
    usecase = UseCase.from_dict(raw)
    periods = local_days(timezone, first, 16)
    lengths = {pd.Timestamp(end) - pd.Timestamp(start) for start, end in periods}
    assert (lengths != {pd.Timedelta(DAY)}) is dst  # a 23 or 25-hour day among them
    readings = generate(raw, periods, seed=5, per_period=DAILY)
    emitted = run(usecase, readings, periods)

    problems = disagreements(raw, usecase, readings, emitted, [pd.Timestamp(e) for _, e in periods])
    assert not problems, report(problems)


# -- the state's contract ----------------------------------------------------------------

STATE_CASES = [
    pytest.param(declaration(known_at="6h", short="6h"), id="delay-hourly-buckets"),
    pytest.param(declaration(known_at="resolved_ts", short="2d"), id="known-at-column"),
]


def small_run(raw: dict[str, Any], days: int = 12) -> tuple[UseCase, pd.DataFrame, list]:
    usecase = UseCase.from_dict(raw)
    periods = intervals(days, DAY)
    return usecase, generate(raw, periods, seed=3, per_period=DAILY, empty=(5,)), periods


def assert_same_rows(got: dict[str, pd.DataFrame], expected: dict[str, pd.DataFrame]) -> None:
    assert set(got) == set(expected)
    for entity in expected:
        pd.testing.assert_frame_equal(got[entity], expected[entity], check_exact=True)


@pytest.mark.parametrize("raw", STATE_CASES)
def test_a_state_saved_and_loaded_every_interval_continues_like_the_one_in_memory(
    raw, tmp_path: Path
):
    """What the DAG does (load the predecessor's state, advance, save) gives exactly the
    rows of one uninterrupted run: pending labels, buckets and totals survive the disk."""
    usecase, readings, periods = small_run(raw)
    engine = AggregationEngine(usecase)
    memory, folder = AggregationState(), tmp_path / "state"
    for i, (start, end) in enumerate(periods):
        expected = engine.advance(memory, batch(readings, usecase, start, end), start, end)
        loaded = AggregationState.load(folder) if i else AggregationState()
        got = engine.advance(loaded, batch(readings, usecase, start, end), start, end)
        loaded.save(folder)
        assert_same_rows(got, expected)
        assert AggregationState.load(folder).as_of == end
    assert memory.pending is not None and len(memory.pending), "no label was pending at the end"


@pytest.mark.parametrize("raw", STATE_CASES)
def test_a_loaded_state_carried_in_memory_across_saves_continues_like_the_one_in_memory(
    raw, tmp_path: Path
):
    """What a backfill resumed from a snapshot does: load the state once, then advance
    it in memory and save it after every interval into a folder of its own. A save
    points the loaded parts at the new snapshot's links; a part first needed after that
    is still read (from the file it was loaded from), and every row is the one run's."""
    usecase, readings, periods = small_run(raw)
    engine = AggregationEngine(usecase)
    memory, resumed_at = AggregationState(), 3
    for i, (start, end) in enumerate(periods):
        expected = engine.advance(memory, batch(readings, usecase, start, end), start, end)
        if i < resumed_at:
            memory.save(tmp_path / "snapshot")
            continue
        if i == resumed_at:
            state = AggregationState.load(tmp_path / "snapshot")
        got = engine.advance(state, batch(readings, usecase, start, end), start, end)
        state.save(tmp_path / f"staged-{i}")
        assert_same_rows(got, expected)
    shutil.rmtree(tmp_path / "snapshot")
    assert AggregationState.load(tmp_path / f"staged-{len(periods) - 1}").size() == memory.size()


@pytest.mark.parametrize("raw", STATE_CASES)
@pytest.mark.parametrize(
    "rerun",
    [
        pytest.param(3, id="before-the-empty-interval"),
        pytest.param(5, id="the-empty-interval"),
        pytest.param(9, id="a-later-interval"),
    ],
)
def test_rerunning_an_interval_from_its_predecessors_state_gives_the_same_rows(
    raw, rerun, tmp_path: Path
):
    """A retried or backfilled interval starts from the state its predecessor saved and
    leaves exactly what the first run left: same rows, and the same rows after it."""
    usecase, readings, periods = small_run(raw)
    clean = run(usecase, readings, periods[: rerun + 1])
    engine = AggregationEngine(usecase)
    state = AggregationState()
    for start, end in periods[:rerun]:
        engine.advance(state, batch(readings, usecase, start, end), start, end)
    state.save(tmp_path / "before")

    (start, end), (after_start, after_end) = periods[rerun], periods[rerun + 1]
    outputs, nexts = [], []
    for _ in range(2):
        again = AggregationState.load(tmp_path / "before")
        outputs.append(engine.advance(again, batch(readings, usecase, start, end), start, end))
        again.save(tmp_path / "after")
        following = AggregationState.load(tmp_path / "after")
        nexts.append(
            engine.advance(
                following,
                batch(readings, usecase, after_start, after_end),
                after_start,
                after_end,
            )
        )
    assert_same_rows(outputs[1], outputs[0])
    assert_same_rows(nexts[1], nexts[0])
    for entity, rows in outputs[0].items():
        expected = clean[entity][clean[entity][AGGREGATE_TS] == pd.Timestamp(end)]
        pd.testing.assert_frame_equal(rows, expected.reset_index(drop=True), check_exact=True)


@pytest.mark.parametrize(
    "wrong",
    [
        pytest.param(4, id="skipping-an-interval"),
        pytest.param(2, id="repeating-the-last-interval"),
        pytest.param(0, id="going-back-to-the-first"),
    ],
)
def test_advancing_from_the_wrong_interval_is_refused_and_leaves_no_trace(wrong):
    """Out-of-order runs would double-count or skip facts: the state refuses any interval
    but the one starting at its ``as_of``, before touching anything."""
    raw = declaration(known_at="6h", short="6h")
    usecase, readings, periods = small_run(raw)
    clean = run(usecase, readings, periods[:4])
    engine = AggregationEngine(usecase)
    state = AggregationState()
    for start, end in periods[:3]:
        engine.advance(state, batch(readings, usecase, start, end), start, end)
    before = copy.deepcopy(state)

    start, end = periods[wrong]
    with pytest.raises(ValueError, match="cannot advance from"):
        engine.advance(state, batch(readings, usecase, start, end), start, end)

    assert state.as_of == before.as_of
    start, end = periods[3]
    out = engine.advance(state, batch(readings, usecase, start, end), start, end)
    for entity, rows in out.items():
        expected = clean[entity][clean[entity][AGGREGATE_TS] == pd.Timestamp(end)]
        pd.testing.assert_frame_equal(rows, expected.reset_index(drop=True), check_exact=True)


@pytest.mark.parametrize("raw", STATE_CASES)
def test_an_interval_without_readings_still_emits_the_rows_whose_windows_moved(raw):
    """No reading arrives, yet yesterday's readings leave the 1-day windows and labels
    become known: those entities need a new row, or the join keeps serving stale values."""
    usecase, readings, periods = small_run(raw)
    empty_start, empty_end = periods[5]
    assert not ((readings["ts"] >= empty_start) & (readings["ts"] < empty_end)).any()
    engine = AggregationEngine(usecase)
    state = AggregationState()
    for start, end in periods[:5]:
        engine.advance(state, batch(readings, usecase, start, end), start, end)
    out = engine.advance(
        state, batch(readings, usecase, empty_start, empty_end), empty_start, empty_end
    )

    day_before = readings[(readings["ts"] >= periods[4][0]) & (readings["ts"] < empty_start)]
    for entity, aggregates in raw["features"]["aggregations"].items():
        key = usecase.entities[entity].join_key
        active = set(day_before[key].dropna())
        assert active, f"no {entity} read the day before the empty interval"
        rows = out[entity].set_index(key)
        assert active <= set(rows.index), f"{entity}: {sorted(active - set(rows.index))} missed"
        facts = facts_by_key(raw, readings, key)
        for k in rows.index:
            for name, spec in aggregates.items():
                expected = brute_force(facts[k], spec, pd.Timestamp(empty_end))
                assert agrees(rows.loc[k, name], expected), (entity, k, name)
        assert (rows[[n for n in aggregates if n.endswith("_1d")]] == 0).any(axis=None)


def test_snapshots_link_what_they_already_hold_stay_few_files_and_survive_a_removed_one(
    tmp_path: Path,
):
    """The pipeline's cycle hour after hour over 8 days: load the predecessor's snapshot,
    advance, save a new one, remove old ones. Every interval's rows equal one run in
    memory. A snapshot writes only the interval's new bucket parts and links the rest
    (hard links: nothing is copied); the linked segments stay bounded (compacted into one
    past the limit); and a snapshot removed after it was loaded (a concurrent prune)
    still yields a complete next one."""
    from closedloop.core.aggregation_state import MAX_SEGMENTS

    removed_at = {100, 170}
    raw = declaration(known_at="2h", short="6h", cadence="hourly")
    usecase = UseCase.from_dict(raw)
    periods = intervals(8 * 24, HOUR)  # the 7-day windows keep 168 hourly buckets
    readings = generate(raw, periods, seed=13, per_period=(0.05, 0.3, 1.0))
    engine = AggregationEngine(usecase)
    memory = AggregationState()
    segments, linked, removed_early = [], 0, 0
    for i, (start, end) in enumerate(periods):
        events = batch(readings, usecase, start, end)
        expected = engine.advance(memory, events, start, end)
        state = AggregationState.load(tmp_path / f"{i - 1:04d}") if i else AggregationState()
        if i in removed_at:  # removed while the next interval runs from it
            shutil.rmtree(tmp_path / f"{i - 1:04d}")
            removed_early += 1
        got = engine.advance(state, events, start, end)
        state.save(tmp_path / f"{i:04d}")
        assert_same_rows(got, expected)
        files = [p for p in (tmp_path / f"{i:04d}").iterdir() if p.name.startswith("segment.")]
        segments.append(len(files))
        linked += sum(p.stat().st_nlink > 1 for p in files)
        for old in sorted(p for p in tmp_path.iterdir() if p.is_dir())[:-3]:
            shutil.rmtree(old)
    assert removed_early == len(removed_at)
    assert max(segments) <= MAX_SEGMENTS, max(segments)
    # one new segment a snapshot, old ones expire one by one: a fall by more than one is
    # a compaction, or the rewrite after a removed snapshot
    fell = [i for i in range(1, len(segments)) if segments[i] < segments[i - 1] - 1]
    assert set(fell) - removed_at, f"never compacted: {segments}"
    assert removed_at <= set(fell), f"a removed snapshot's segments were linked: {segments}"
    assert linked > 1000, "snapshots rewrote their parts instead of linking them"
