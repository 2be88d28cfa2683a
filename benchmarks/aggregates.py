"""Benchmark: the incremental aggregation engine on day 365 against day 1, and against a
pandas recomputation from the whole history.

    .venv/bin/python benchmarks/aggregates.py [--events-per-day 50000] [--days 365]
        [--customers 20000] [--stores 50] [--repeat 5] [--baseline-repeat 3]

A retail declaration shaped like a real use case: orders of a bounded population of
customers at a few stores (so the state saturates once the longest window is full), two
entities, ``count``/``mean``/``sum`` over 7 days, 30 days and ``all``, a ``distinct_count``
over 30 days, a ``positive_count`` and a ``label_rate`` with a prior over 30 days of a
"returned" label known 3 days after the order. Each day's orders are generated from a
seed of their own (numpy, vectorised); the engine runs day after day as the feature
pipeline runs it (progress printed), then:

* (a) the feature pipeline's engineer step (``feature_pipeline.engineer``: read the
  cleaned batch, load the predecessor's snapshot of the aggregation state, derive the
  event table, advance, write the interval's tables and its snapshot) on the last day
  against day 1, in a home of its own where the run saved a snapshot every day as the
  pipeline does; and the aggregation step alone (``AggregationEngine.advance``, the event
  table built before the clock starts, each run from a deep copy of the state). Medians
  of ``--repeat`` runs. Day 31, when the 30-day windows have just filled, is shown for
  information: day 1 -> 31 is the windows filling, 31 -> 365 is what a growing history
  costs. Goal for both: last day <= 1.5x day 1.
* (b) the engine's last day against a straightforward pandas recomputation of the same
  aggregates as of the same stamp from the full history (filter every fact by window,
  group by entity: what one would write without carried state), median of
  ``--baseline-repeat``. Both must give the same values for every entity the engine
  emits, or the script raises. Goal: the engine >= 5x faster.

Always exits 0 when the values agree: it is a measurement, the goals are printed.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import yaml
from _common import print_table

from closedloop.core.aggregates import (
    KEEP_SNAPSHOTS,
    AggregationEngine,
    AggregationState,
    bucket_width,
)
from closedloop.core.derive import event_table
from closedloop.core.transform import clean_batch
from closedloop.core.usecase import AGGREGATE_TS, UseCase

GOAL_GROWTH = 1.5  # last day / day 1, at most
GOAL_SPEEDUP = 5.0  # pandas recomputation / engine, at least
FIRST = datetime(2025, 1, 1, tzinfo=UTC)
CHANNELS = np.array(["web", "app", "store", "phone"], dtype=object)
PRIOR = {"rate": 0.08, "weight": 5}

DECLARATION: dict[str, Any] = {
    "name": "retail_orders",
    "description": "Will an order be returned?",
    "batch": {"cadence": "daily", "id_column": "order_id", "timestamp_column": "order_ts"},
    "entities": {"customer": {"join_key": "customer_id"}, "store": {"join_key": "store_id"}},
    "label": {"column": "returned", "positive": 1, "known_at": "3d"},
    "columns": {
        "order_id": {"type": "int", "unique": True},
        "customer_id": {"type": "int"},
        "store_id": {"type": "string"},
        "order_ts": {"type": "timestamp"},
        "amount": {"type": "float", "required": False, "min": 0},
        "items": {"type": "int", "min": 1},
        "channel": {"type": "category", "categories": list(CHANNELS)},
        "returned": {"type": "int", "min": 0, "max": 1},
    },
    "features": {
        "passthrough": ["amount", "items", "channel"],
        "aggregations": {
            "customer": {
                "cust_orders_7d": {"op": "count", "window": "7d"},
                "cust_orders_30d": {"op": "count", "window": "30d"},
                "cust_orders": {"op": "count"},
                "cust_amount_mean_30d": {
                    "op": "mean",
                    "column": "amount",
                    "window": "30d",
                    "default": 0.0,
                },
                "cust_amount_sum": {"op": "sum", "column": "amount"},
                "cust_stores_30d": {"op": "distinct_count", "column": "store_id", "window": "30d"},
                "cust_return_rate_30d": {"op": "label_rate", "window": "30d", "prior": PRIOR},
            },
            "store": {
                "store_orders_7d": {"op": "count", "window": "7d"},
                "store_amount_mean_7d": {
                    "op": "mean",
                    "column": "amount",
                    "window": "7d",
                    "default": 0.0,
                },
                "store_amount_sum_30d": {"op": "sum", "column": "amount", "window": "30d"},
                "store_items_mean": {"op": "mean", "column": "items", "default": 0.0},
                "store_channels_30d": {
                    "op": "distinct_count",
                    "column": "channel",
                    "window": "30d",
                },
                "store_returns": {"op": "positive_count"},
                "store_return_rate_30d": {"op": "label_rate", "window": "30d", "prior": PRIOR},
            },
        },
    },
    "schedule": {"start": FIRST.date().isoformat()},
}


# -- data -------------------------------------------------------------------------------


class Orders:
    """A fixed population (activity, home store, return propensity per customer) and
    each day's orders drawn from a seed of that day."""

    def __init__(self, events: int, customers: int, stores: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.events, self.customers, self.seed = events, customers, seed
        activity = rng.gamma(0.6, 1.0, customers)
        self.p = activity / activity.sum()
        self.home = rng.integers(0, stores, customers)
        self.propensity = rng.beta(1.0, 11.0, customers)
        self.stores = np.array([f"S{i:02d}" for i in range(stores)], dtype=object)

    def day(self, index: int) -> pd.DataFrame:
        rng = np.random.default_rng([self.seed, index])
        n = self.events
        customer = rng.choice(self.customers, size=n, p=self.p)
        store = np.where(
            rng.random(n) < 0.8, self.home[customer], rng.integers(0, len(self.stores), n)
        )
        amount = rng.lognormal(3.5, 0.7, n).round(2)
        amount[rng.random(n) < 0.03] = np.nan
        micros = np.sort(rng.integers(0, 86_400_000_000, n))
        ts = pd.Timestamp(FIRST + timedelta(days=index)) + pd.to_timedelta(micros, unit="us")
        return pd.DataFrame(
            {
                "order_id": index * n + np.arange(n, dtype=np.int64),
                "customer_id": customer.astype(np.int64),
                "store_id": self.stores[store],
                "order_ts": pd.Series(ts).astype("datetime64[us, UTC]"),
                "amount": amount,
                "items": rng.integers(1, 8, n).astype(np.int64),
                "channel": CHANNELS[rng.choice(4, size=n, p=[0.45, 0.3, 0.2, 0.05])],
                "returned": (rng.random(n) < self.propensity[customer]).astype(np.int64),
            }
        )


def interval(index: int) -> tuple[datetime, datetime]:
    return FIRST + timedelta(days=index), FIRST + timedelta(days=index + 1)


# -- the straightforward recomputation ------------------------------------------------


def recompute(history: pd.DataFrame, usecase: UseCase, end: datetime) -> dict[str, pd.DataFrame]:
    """Every aggregate as of ``end`` from the full history: filter the facts by window
    (orders by time, labels by when they became known), group by entity, fill."""
    stamp = pd.Timestamp(end)
    ts, known_at = usecase.batch.timestamp_column, usecase.known_at_column
    label = usecase.label
    seen = history[history[ts] < stamp]
    # a label is known at its known-at time, never before its event (Series.where: the
    # numpy ufunc on tz-aware columns goes through Python objects, ~200x slower)
    known_time = seen[known_at].where(seen[known_at] >= seen[ts], seen[ts])
    labelled = seen[known_time < stamp].assign(__known=known_time)
    by_window: dict[tuple[str, str], pd.DataFrame] = {}

    def facts(kind: str, window: str) -> pd.DataFrame:
        if (kind, window) not in by_window:
            frame, column = (seen, ts) if kind == "events" else (labelled, "__known")
            if window != "all":
                frame = frame[frame[column] >= stamp - pd.Timedelta(window)]
            by_window[kind, window] = frame
        return by_window[kind, window]

    out = {}
    for entity, aggregates in usecase.features.aggregations.items():
        key = usecase.entities[entity].join_key
        keys = pd.Index(seen[key].dropna().unique(), name=key).sort_values()
        table = pd.DataFrame(index=keys)
        for name, agg in aggregates.items():
            if agg.op in ("label_count", "positive_count", "label_rate"):
                rows = facts("labels", agg.window)
                grouped = rows.groupby(key)
                known = grouped.size().reindex(keys, fill_value=0)
                positive = (
                    (rows[label.column] == label.positive)
                    .groupby(rows[key])
                    .sum()
                    .reindex(keys, fill_value=0)
                )
                if agg.op == "label_count":
                    value = known
                elif agg.op == "positive_count":
                    value = positive
                elif agg.prior is not None:
                    value = (positive + agg.prior.rate * agg.prior.weight) / (
                        known + agg.prior.weight
                    )
                else:
                    value = (positive / known).where(known > 0)
            else:
                rows = facts("events", agg.window)
                grouped = rows.groupby(key)
                if agg.op == "count" and agg.column is None:
                    value = grouped.size()
                elif agg.op == "distinct_count":
                    value = grouped[agg.column].nunique()
                else:
                    value = grouped[agg.column].agg(agg.op)
                value = value.reindex(keys)
            fill = agg.fill_value
            if fill is not None:
                value = value.fillna(fill)
            table[name] = value.astype("int64" if agg.dtype == "int" else "float64")
        out[entity] = table
    return out


def check_equal(engine: dict[str, pd.DataFrame], baseline: dict[str, pd.DataFrame]) -> str:
    """Raise unless every row the engine emitted equals the recomputation."""
    counts = []
    for entity, rows in engine.items():
        key = rows.columns[0]
        emitted = rows.set_index(key).drop(columns=AGGREGATE_TS)
        expected = baseline[entity].reindex(emitted.index)
        if expected.isna().all(axis=1).any():
            missing = list(emitted.index[expected.isna().all(axis=1)][:5])
            raise AssertionError(f"{entity}: the engine emitted keys without history {missing}")
        for name in emitted.columns:
            got, want = emitted[name].to_numpy(float), expected[name].to_numpy(float)
            bad = ~np.isclose(got, want, rtol=1e-9, atol=1e-9)
            if bad.any():
                at = np.flatnonzero(bad)[:5]
                raise AssertionError(
                    f"{entity}.{name}: engine and recomputation differ for "
                    f"{int(bad.sum())} key(s), e.g. "
                    + ", ".join(f"{emitted.index[i]}: {got[i]} vs {want[i]}" for i in at)
                )
        counts.append(f"{len(emitted):,} {entity} rows x {len(emitted.columns)} aggregates")
    return "; ".join(counts)


# -- timing -----------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def step_median(
    engine: AggregationEngine, state: AggregationState, events: pd.DataFrame, day: int, repeat: int
) -> tuple[float, dict[str, pd.DataFrame]]:
    """Median seconds of advancing a deep copy of ``state`` through day ``day`` (index)."""
    start, end = interval(day)
    times, first = [], None
    for _ in range(max(1, repeat)):
        copied = copy.deepcopy(state)
        seconds, out = timed(lambda copied=copied: engine.advance(copied, events, start, end))
        times.append(seconds)
        first = out if first is None else first
    return statistics.median(times), first


def state_rows(state: AggregationState) -> int:
    return state.size()


class Pipeline:
    """The feature pipeline's engineer step on this use case, in a home of its own."""

    def __init__(self, root: str) -> None:
        from pathlib import Path

        self.root = Path(root)
        usecases = self.root / "usecases"
        usecases.mkdir(parents=True)
        (usecases / f"{DECLARATION['name']}.yaml").write_text(yaml.safe_dump(DECLARATION))
        os.environ.update(
            CLOSEDLOOP_HOME=str(self.root / "home"),
            CLOSEDLOOP_USECASES_DIR=str(usecases),
            CLOSEDLOOP_USECASE_NAME=DECLARATION["name"],
        )
        from closedloop.core.settings import load_settings

        self.settings = load_settings()

    def snapshot(self, state: AggregationState, day: int) -> None:
        """Keep ``state`` (as of the end of ``day``) as the pipeline does."""
        folder = self.settings.aggregation_state_dir
        state.save(folder / self.settings.usecase.interval_key(interval(day)[0]))
        for old in sorted(p for p in folder.iterdir() if p.is_dir())[:-KEEP_SNAPSHOTS]:
            shutil.rmtree(old)

    def engineer(self, orders: Orders, day: int, repeat: int) -> float:
        """Median seconds of the engineer step of ``day`` (index), from the snapshot of
        the day before (a fresh state on the first day)."""
        from closedloop.core.feature_pipeline import engineer

        clean = self.root / f"clean-{day}.parquet"
        clean_batch(orders.day(day), self.settings.usecase).to_parquet(clean, index=False)
        start, end = interval(day)
        engineer(self.settings, start, end, str(clean))  # warm: imports, file cache
        times = []
        for _ in range(max(1, repeat)):
            seconds, _ = timed(lambda: engineer(self.settings, start, end, str(clean)))
            times.append(seconds)
        return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events-per-day", type=int, default=50_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--stores", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5, help="runs per timed engine step")
    parser.add_argument("--baseline-repeat", type=int, default=3)
    args = parser.parse_args(argv)
    # pandas' deprecation notices about the engine's object-dtype frames (concatenating
    # an empty pending frame, fillna on label totals) repeat on every step otherwise
    warnings.filterwarnings("ignore", category=FutureWarning, module="closedloop.core.aggregates")
    if args.days < 2:
        parser.error("--days must be at least 2")

    t_total = time.perf_counter()
    root = tempfile.mkdtemp(prefix="closedloop-bench-")
    try:
        return run(args, root, t_total)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace, root: str, t_total: float) -> int:
    pipeline = Pipeline(root)
    usecase = UseCase.from_dict(DECLARATION)
    engine = AggregationEngine(usecase)
    orders = Orders(args.events_per_day, args.customers, args.stores)
    last = args.days - 1
    full = 30 if args.days > 31 else None  # day 31: the 30-day windows have just filled
    print(
        f"{args.days} days x {args.events_per_day:,} orders of {args.customers:,} customers "
        f"at {args.stores} stores; {sum(map(len, usecase.features.aggregations.values()))} "
        f"aggregates over 2 entities, label known after {usecase.label.known_at}, "
        f"buckets of {bucket_width(usecase) / timedelta(hours=1):g}h",
        flush=True,
    )

    def day_events(index: int) -> pd.DataFrame:
        return event_table(clean_batch(orders.day(index), usecase), usecase)

    print("timing the engineer step of day 1 ...", flush=True)
    engineer_day1 = pipeline.engineer(orders, 0, args.repeat)

    keep = ["order_ts", "customer_id", "store_id", "amount", "items", "channel", "returned"]
    keep.append(usecase.known_at_column)
    history: list[pd.DataFrame] = []
    state = AggregationState()
    daily: list[float] = []
    snapshots: dict[int, AggregationState] = {0: copy.deepcopy(state)}
    t_run = time.perf_counter()
    for index in range(last):
        if index == full:
            snapshots[index] = copy.deepcopy(state)
        events = day_events(index)
        history.append(events[keep])
        start, end = interval(index)
        seconds, _ = timed(
            lambda events=events, s=start, e=end: engine.advance(state, events, s, e)
        )
        daily.append(seconds)
        pipeline.snapshot(state, index)
        if (index + 1) % 30 == 0 or index + 1 == last:
            print(
                f"  day {index + 1:>3}: step {seconds:.2f}s, state {state_rows(state):,} rows, "
                f"{time.perf_counter() - t_run:.0f}s so far",
                flush=True,
            )
    run_s = time.perf_counter() - t_run

    print(f"timing the steps (median of {args.repeat}, each from a copy of the state) ...")
    last_events = day_events(last)
    history.append(last_events[keep])
    day1_s, _ = step_median(engine, snapshots[0], day_events(0), 0, args.repeat)
    full_s = None
    if full is not None:
        full_s, _ = step_median(engine, snapshots[full], day_events(full), full, args.repeat)
    last_s, last_out = step_median(engine, state, last_events, last, args.repeat)
    print(f"timing the engineer step of day {last + 1} ...", flush=True)
    engineer_last = pipeline.engineer(orders, last, args.repeat)

    print(f"recomputing day {last + 1} with pandas from the full history ...", flush=True)
    everything = pd.concat(history, ignore_index=True)
    del history
    _, end = interval(last)
    times, baseline = [], None
    for _ in range(max(1, args.baseline_repeat)):
        seconds, baseline = timed(lambda: recompute(everything, usecase, end))
        times.append(seconds)
    pandas_s = statistics.median(times)
    agreement = check_equal(last_out, baseline)

    growth = last_s / day1_s
    engineer_growth = engineer_last / engineer_day1
    speedup = pandas_s / last_s
    n = f"{args.events_per_day:,}"

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    header = ["step", "facts", "seconds", "ratio", "goal", ""]
    table = [
        ["engineer day 1", n, f"{engineer_day1:.3f}", "1.0x", "", ""],
        [f"engineer day {last + 1}", n, f"{engineer_last:.3f}", f"{engineer_growth:.2f}x",
         f"<= {GOAL_GROWTH:g}x", verdict(engineer_growth <= GOAL_GROWTH)],
        ["aggregation day 1", n, f"{day1_s:.3f}", "1.0x", "", ""],
    ]  # fmt: skip
    if full_s is not None:
        table.append(
            ["aggregation day 31 (info)", n, f"{full_s:.3f}", f"{full_s / day1_s:.2f}x", "", ""]
        )
    table.append(
        [f"aggregation day {last + 1}", n, f"{last_s:.3f}", f"{growth:.2f}x",
         f"<= {GOAL_GROWTH:g}x", verdict(growth <= GOAL_GROWTH)]
    )  # fmt: skip
    table.append(
        [f"pandas day {last + 1}", f"{len(everything):,}", f"{pandas_s:.3f}",
         f"{speedup:.1f}x aggregation", f">= {GOAL_SPEEDUP:g}x", verdict(speedup >= GOAL_SPEEDUP)]
    )  # fmt: skip
    print_table(header, table)
    print(
        f"(a) engineer step day {last + 1} / day 1: {engineer_growth:.2f}x; aggregation step "
        f"{growth:.2f}x (goal <= {GOAL_GROWTH:g}x: "
        f"{verdict(max(growth, engineer_growth) <= GOAL_GROWTH)})"
        + (f"; aggregation day {last + 1} / day 31: {last_s / full_s:.2f}x" if full_s else "")
    )
    print(
        f"(b) pandas recomputation / engine on day {last + 1}: {speedup:.1f}x "
        f"(goal >= {GOAL_SPEEDUP:g}x: {'PASS' if speedup >= GOAL_SPEEDUP else 'MISS'})"
    )
    print(f"    values identical for {agreement}")
    rows = {e: len(r) for e, r in last_out.items()}
    print(
        f"    day {last + 1} emitted {rows}; state {state_rows(state):,} rows; the sequential "
        f"run's daily steps: median {statistics.median(daily[:30]):.3f}s on days 1-30, "
        f"{statistics.median(daily[30:] or daily):.3f}s after"
    )
    print(
        f"run over {last} days {run_s:.0f}s; whole benchmark {time.perf_counter() - t_total:.0f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
