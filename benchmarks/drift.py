"""Benchmark: the drift check (Evidently) against the same statistics in numpy/scipy.

    .venv/bin/python benchmarks/drift.py [--rows 1000000] [--cols 20] [--repeat 3]

Builds a reference and a current window of ``--rows`` rows and ``--cols`` columns with
numpy (mostly numerical, every fifth column categorical; the current window shifted in a
few columns, one of them by a new category) and times, interleaved, best of ``--repeat``:

* the check, ``detect_drift`` as the product runs it: both windows sampled to the
  policy's ``max_rows`` (uniformly, recorded seed), cleaned, then each column through
  Evidently's registered stat test (normed Wasserstein distance for numbers, PSI for
  categories) — the goal's subject;
* the same statistics written by hand (``scipy.stats.wasserstein_distance`` over the
  reference standard deviation; PSI over the categories of both windows with Evidently's
  1e-4 for an empty category) on the same sampled rows, the sampling included: both
  sides compute on exactly the same ``max_rows`` rows of each window;
* what a monitoring run pays: ``run_drift`` writing its HTML and JSON, and the snapshot
  added to an Evidently workspace. On a **calm day** (both windows from the same
  distributions) the report holds the check's own statistics only; on a **drift day**
  (the shifted windows) it adds Evidently's ``ValueDrift`` of each drifted column. Both
  against the same numpy statistics; the calm day is held to the ratio goal.

Then the check once more without sampling (``max_rows`` = ``--rows``: all 1M rows on
both sides) unless ``--no-unsampled``. A small warm-up run comes first (Evidently's first
report in a process pays for lazy imports). Per-column verdicts must be identical; the
goal is the check <= 10 s and <= 3x the hand-written version. Always exits 0: it is a
measurement.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _common import print_table
from scipy.stats import wasserstein_distance

from closedloop.core.drift import (
    DriftPolicy,
    DriftResult,
    add_to_workspace,
    detect_drift,
    run_drift,
    sample,
)

GOAL_SECONDS = 10.0
GOAL_RATIO = 3.0


# -- data -----------------------------------------------------------------------------------


def build_windows(
    rows: int, cols: int, seed: int = 0, shifted: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reference and current windows; in current (unless not ``shifted``: then both are
    drawn from the same distributions), the first two numerical columns are shifted (by
    0.3 sd and x1.25), one categorical column changes its mix and another gets a new
    category (5 % of the rows). All other columns are unchanged."""
    rng = np.random.default_rng(seed)
    cats = [f"c{i:02d}" for i in range(cols) if i % 5 == 4]
    nums = [f"x{i:02d}" for i in range(cols) if i % 5 != 4]
    labels = np.array(["A", "B", "C", "D", "E", "F"], dtype=object)
    mix = np.array([0.35, 0.25, 0.15, 0.1, 0.1, 0.05])

    def window(current: bool) -> pd.DataFrame:
        data: dict[str, Any] = {}
        for j, name in enumerate(nums):
            kind = j % 3
            if kind == 0:
                values = rng.normal(100.0, 15.0, rows)
            elif kind == 1:
                values = rng.lognormal(3.0, 0.8, rows)
            else:
                values = rng.poisson(2.0, rows).astype(np.int64)
            if current and j == 0:
                values = values + 0.3 * 15.0
            if current and j == 1:
                values = values * 1.25
            data[name] = values
        for j, name in enumerate(cats):
            p = mix.copy()
            if current and j == 0:
                p = np.array([0.2, 0.25, 0.2, 0.15, 0.1, 0.1])
            values = labels[rng.choice(len(labels), size=rows, p=p)]
            if current and j == 1:
                values[rng.random(rows) < 0.05] = "NEW"
            data[name] = values
        return pd.DataFrame(data)

    return window(False), window(shifted)


# -- the same statistics, by hand ----------------------------------------------------------


def psi(reference: pd.Series, current: pd.Series) -> float:
    """PSI over the categories of both windows, as Evidently bins a categorical column."""
    ref_counts = reference.value_counts()
    cur_counts = current.value_counts()
    keys = ref_counts.index.union(cur_counts.index)
    ref_p = ref_counts.reindex(keys, fill_value=0).to_numpy(float) / len(reference)
    cur_p = cur_counts.reindex(keys, fill_value=0).to_numpy(float) / len(current)
    for p in (ref_p, cur_p):
        smallest = p[p > 0].min()
        p[p == 0] = smallest / 1e6 if smallest <= 1e-4 else 1e-4
    return float(np.sum((ref_p - cur_p) * np.log(ref_p / cur_p)))


def wasserstein_normed(reference: np.ndarray, current: np.ndarray) -> float:
    return float(wasserstein_distance(reference, current) / max(float(np.std(reference)), 0.001))


def by_hand(
    reference: pd.DataFrame, current: pd.DataFrame, policy: DriftPolicy, kinds: dict[str, str]
) -> tuple[dict[str, float], set[str]]:
    """(statistic per column, drifted columns) on the windows sampled like ``run_drift``."""
    ref, _ = sample(reference, policy.max_rows, policy.seed)
    cur, _ = sample(current, policy.max_rows, policy.seed)
    scores: dict[str, float] = {}
    drifted: set[str] = set()
    for column in policy.columns:
        if kinds[column] == "numerical":
            score = wasserstein_normed(ref[column].to_numpy(float), cur[column].to_numpy(float))
            threshold = policy.num_threshold
        else:
            score = psi(ref[column], cur[column])
            threshold = policy.cat_threshold
        scores[column] = score
        if score >= threshold:
            drifted.add(column)
    return scores, drifted


# -- timing ---------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def monitoring_report(
    reference: pd.DataFrame, current: pd.DataFrame, policy: DriftPolicy, folder: Path
) -> DriftResult:
    """What a monitoring run does with the windows: ``run_drift`` writing the HTML and
    JSON, and the snapshot added to an Evidently workspace."""
    result, snapshot = run_drift(reference, current, policy, html_path=folder / "drift.html",
                                 json_path=folder / "drift.json")  # fmt: skip
    add_to_workspace(folder / "evidently", "benchmark", snapshot)
    return result


def measure(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    policy: DriftPolicy,
    repeat: int,
    *,
    report: bool,
) -> dict[str, Any]:
    """Best of ``repeat`` for the check, the monitoring run's report (if asked) and
    numpy, interleaved (the machine is shared: a burst of load then hits every side)."""
    check_times, numpy_times, report_times = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(max(1, repeat)):
            check_s, result = timed(lambda: detect_drift(reference, current, policy))
            kinds = result.column_kinds
            numpy_s, (scores, drifted) = timed(
                lambda kinds=kinds: by_hand(reference, current, policy, kinds)
            )
            check_times.append(check_s)
            numpy_times.append(numpy_s)
            if report:
                report_s, reported = timed(
                    lambda: monitoring_report(reference, current, policy, Path(folder))
                )
                assert reported == result, "run_drift's verdict differs from detect_drift's"
                report_times.append(report_s)
    diffs = [
        abs(scores[c] - result.column_scores[c])
        for c in policy.columns
        if result.column_scores[c] is not None
    ]
    return {
        "result": result,
        "check_s": min(check_times),
        "numpy_s": min(numpy_times),
        "report_s": min(report_times) if report_times else None,
        "agree": set(result.drifted_columns) == drifted,
        "only_evidently": sorted(set(result.drifted_columns) - drifted),
        "only_numpy": sorted(drifted - set(result.drifted_columns)),
        "max_score_diff": max(diffs) if diffs else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cols", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-rows", type=int, default=DriftPolicy.max_rows)
    parser.add_argument("--no-unsampled", action="store_true", help="skip the run without sampling")
    args = parser.parse_args(argv)

    print(f"building 2 x {args.rows:,} rows x {args.cols} columns ...", flush=True)
    t0 = time.perf_counter()
    reference, current = build_windows(args.rows, args.cols)
    columns = tuple(reference.columns)
    n_cat = sum(1 for c in columns if c.startswith("c"))
    print(
        f"  built in {time.perf_counter() - t0:.1f}s ({len(columns) - n_cat} numerical, "
        f"{n_cat} categorical); importing Evidently and warming up ...",
        flush=True,
    )
    t0 = time.perf_counter()
    import evidently

    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm, _ = run_drift(reference.head(2_000), current.head(2_000), DriftPolicy(columns=columns))
    warm_s = time.perf_counter() - t0
    by_hand(
        reference.head(2_000), current.head(2_000), DriftPolicy(columns=columns), warm.column_kinds
    )
    print(f"  import {import_s:.1f}s, first (warm-up) report {warm_s:.1f}s", flush=True)

    runs = []
    policy = DriftPolicy(columns=columns, max_rows=args.max_rows)
    print(f"sampled run: each window sampled to max_rows={policy.max_rows:,} rows", flush=True)
    runs.append(("sampled", measure(reference, current, policy, args.repeat, report=True)))
    print("calm day: both windows from the same distributions ...", flush=True)
    calm_reference, calm_current = build_windows(args.rows, args.cols, seed=1, shifted=False)
    runs.append(("calm day", measure(calm_reference, calm_current, policy, args.repeat,
                                     report=True)))  # fmt: skip
    del calm_reference, calm_current
    if not args.no_unsampled and args.rows > policy.max_rows:
        print(f"unsampled run: max_rows={args.rows:,} (all rows) ...", flush=True)
        unsampled = DriftPolicy(columns=columns, max_rows=args.rows)
        runs.append(("unsampled", measure(reference, current, unsampled, 1, report=False)))

    header = ["run", "rows", "compared", "cols", "check s", "numpy s", "ratio"]
    header += [f"<= {GOAL_SECONDS:g} s", f"<= {GOAL_RATIO:g}x", "verdicts"]
    table = []
    for name, m in runs:
        res = m["result"]
        ratio = m["check_s"] / m["numpy_s"] if m["numpy_s"] else float("inf")
        table.append(
            [
                name,
                f"{args.rows:,}",
                f"{res.reference_rows:,}",
                str(len(columns)),
                f"{m['check_s']:.2f}",
                f"{m['numpy_s']:.3f}",
                f"{ratio:.1f}x",
                "PASS" if m["check_s"] <= GOAL_SECONDS else "MISS",
                "PASS" if ratio <= GOAL_RATIO else "MISS",
                "identical" if m["agree"] else "DIFFER",
            ]
        )
    print_table(header, table)
    for name, m in runs:
        res = m["result"]
        print(f"{name}: {res.summary()}")
        print(
            f"  method: {res.method}; sampled={res.sampled} seed={res.seed}; "
            f"largest |evidently - numpy| score difference {m['max_score_diff']:.2e}"
        )
        if m["report_s"] is not None:
            total = m["report_s"]  # run_drift runs the check itself
            shown = "the check's statistics" + (
                f" and Evidently's ValueDrift of {len(res.drifted_columns)} drifted columns"
                if res.drifted_columns or res.prediction_drift
                else " only"
            )
            verdict = "PASS" if total / m["numpy_s"] <= GOAL_RATIO else "MISS"
            goal = f" (goal <= {GOAL_RATIO:g}x: {verdict})" if name == "calm day" else ""
            print(
                f"  check + the report a monitoring run writes ({shown}; HTML, JSON, "
                f"workspace): {total:.2f}s = {total / m['numpy_s']:.1f}x numpy{goal}"
            )
        if not m["agree"]:
            print(f"  only Evidently: {m['only_evidently']}; only numpy: {m['only_numpy']}")
    print(f"\n(Evidently version {evidently.__version__}; import {import_s:.1f}s not timed above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
