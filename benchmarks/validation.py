"""Benchmark: the GX validation gate against the same checks written in plain pandas.

    .venv/bin/python benchmarks/validation.py [--rows 1000000] [--repeat 3]

Builds a frame shaped like the use case's batches (vectorised numpy, from the YAML schema
alone), times ``validate_batch`` (ephemeral GX context) and a hand-written vectorised
pandas implementation of exactly the same checks (column set, row count, dtype, not-null,
range, categories, unique, timestamp within the interval, label in {0, 1}), best of
``--repeat`` after one warm-up each, and checks that both reach the same verdict, on the
clean frame and on one with a handful of injected errors. The goal is GX <= 3x pandas.
Always exits 0: it is a measurement.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from closedloop.core import validation
from closedloop.core.settings import PACKAGE_USECASES
from closedloop.core.usecase import ACCEPTED_DTYPES, UseCase

GOAL = 3.0
START = datetime(2024, 5, 1, tzinfo=UTC)
END = START + timedelta(days=1)


# -- data -------------------------------------------------------------------------------


def build_frame(usecase: UseCase, rows: int, seed: int = 0) -> pd.DataFrame:
    """A valid batch of ``rows`` rows for any use case, from its column declarations."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp(START)
    cols: dict[str, Any] = {}
    for name, spec in usecase.columns.items():
        if name == usecase.label.column:
            cols[name] = rng.integers(0, 2, rows) * usecase.label.positive
        elif spec.type == "string":
            ids = np.arange(rows) if spec.unique else rng.integers(0, max(rows // 3, 1), rows)
            cols[name] = np.char.add(f"{name[:1].upper()}", ids.astype(str)).astype(object)
        elif spec.type == "category":
            choices = np.array(spec.categories, dtype=object)
            cols[name] = choices[rng.integers(0, len(choices), rows)]
        elif spec.type == "timestamp":
            seconds = rng.integers(0, int((END - START).total_seconds()), rows)
            cols[name] = start + pd.to_timedelta(seconds, unit="s")
        elif spec.type == "date":
            cols[name] = start + pd.to_timedelta(rng.integers(0, 365, rows), unit="D")
        elif spec.type == "int":
            lo = int(spec.min) if spec.min is not None else 0
            hi = int(spec.max) if spec.max is not None else lo + 100
            cols[name] = rng.integers(lo, hi + 1, rows)
        else:  # float
            lo = spec.min if spec.min is not None else 0.0
            hi = spec.max if spec.max is not None else lo + 100.0
            cols[name] = np.round(rng.uniform(lo, hi, rows), 2)
    return pd.DataFrame(cols)


def inject_errors(df: pd.DataFrame, usecase: UseCase) -> pd.DataFrame:
    """A handful of bad rows: a null, a negative, an unknown category, a duplicate id,
    a timestamp in the future and a label of 2 (same dtypes, so every check still runs)."""
    bad = df.copy()
    n = len(bad)
    rows = [n // 7, n // 5, n // 3, n // 2, (2 * n) // 3]
    ids, ts = usecase.batch.id_column, usecase.batch.timestamp_column
    label = usecase.label.column
    string_required = [c for c, s in usecase.columns.items() if s.type == "string" and s.required]
    ranged = [c for c, s in usecase.columns.items() if s.min is not None and c != label]
    categorical = [c for c, s in usecase.columns.items() if s.categories]
    nullable_target = next((c for c in string_required if c != ids), ids)
    bad.loc[rows[0], nullable_target] = None
    if ranged:
        col = ranged[0]
        bad.loc[rows[1], col] = usecase.columns[col].min - 1
    if categorical:
        bad.loc[rows[2], categorical[0]] = "__unknown__"
    bad.loc[rows[3], ids] = bad.loc[rows[0] + 1, ids]
    bad.loc[rows[4], ts] = pd.Timestamp("2099-01-01", tz="UTC")
    bad.loc[rows[4] + 1, label] = 2
    return bad


# -- the same checks, in pandas ------------------------------------------------------------


def pandas_checks(
    df: pd.DataFrame, usecase: UseCase, start: datetime, end: datetime
) -> tuple[bool, int, set[tuple[str, str | None]]]:
    """(success, number of checks, failed (expectation, column) pairs), like the GX suite."""
    failed: set[tuple[str, str | None]] = set()
    total = 0

    def check(name: str, column: str | None, ok: Callable[[], bool]) -> None:
        nonlocal total
        total += 1
        if column is not None and column not in present:
            passed = False  # every check of a missing column fails
        else:
            try:
                passed = bool(ok())
            except (TypeError, ValueError):  # e.g. a range check on a text column
                passed = False
        if not passed:
            failed.add((name, column))

    present = set(df.columns)
    rows = len(df)
    check("expect_table_columns_to_match_set", None, lambda: present == set(usecase.columns))
    check("expect_table_row_count_to_be_between", None, lambda: rows >= 1)
    for column, spec in usecase.columns.items():
        col = df[column] if column in present else pd.Series([], dtype=object)
        notna = col.notna()
        all_present = bool(notna.all())
        values = col if all_present else col[notna]
        check(
            "expect_column_dtype_to_be_in_type_list",
            column,
            lambda col=col, ok=ACCEPTED_DTYPES[spec.type]: rows == 0 or str(col.dtype) in ok,
        )
        if spec.required:
            check("expect_column_values_to_not_be_null", column, lambda a=all_present: a)
        if spec.min is not None or spec.max is not None:
            lo = -np.inf if spec.min is None else spec.min
            hi = np.inf if spec.max is None else spec.max
            check(
                "expect_column_values_to_be_between",
                column,
                lambda v=values, lo=lo, hi=hi: ((v >= lo) & (v <= hi)).all(),
            )
        if spec.categories:
            check(
                "expect_column_values_to_be_in_set",
                column,
                lambda v=values, c=spec.categories: v.isin(c).all(),
            )
        if spec.unique:
            check(
                "expect_column_values_to_be_unique",
                column,
                lambda v=values: not v.duplicated().any(),
            )
        if column == usecase.batch.timestamp_column:
            check(
                "expect_column_values_to_be_between",
                column,
                lambda v=values: ((v >= start) & (v < end)).all(),
            )
        if column == usecase.label.column:
            allowed = sorted({0, usecase.label.positive})
            check(
                "expect_column_values_to_be_in_set",
                column,
                lambda v=values, a=allowed: v.isin(a).all(),
            )
    return not failed, total, failed


# -- timing --------------------------------------------------------------------------------


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def gx_failed_pairs(result: validation.ValidationResult) -> set[tuple[str, str | None]]:
    return {(f.expectation, f.column) for f in result.failed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--usecase", type=Path, default=PACKAGE_USECASES / "hotel_bookings.yaml")
    args = parser.parse_args(argv)

    usecase = UseCase.from_yaml(args.usecase)
    print(f"building {args.rows:,} rows of {usecase.name} ...", flush=True)
    t0 = time.perf_counter()
    df = build_frame(usecase, args.rows)
    bad = inject_errors(df, usecase)
    print(f"  built in {time.perf_counter() - t0:.1f}s; importing GX ...", flush=True)

    def run_gx(frame: pd.DataFrame) -> validation.ValidationResult:
        return validation.validate_batch(frame, usecase, interval_start=START, interval_end=END)

    def run_pandas(frame: pd.DataFrame) -> tuple[bool, int, set]:
        return pandas_checks(frame, usecase, START, END)

    gx_s, gx_res = best_of(lambda: run_gx(df), args.repeat)
    pd_s, (pd_ok, pd_total, pd_failed) = best_of(lambda: run_pandas(df), args.repeat)

    # GX as shipped computes an md5 fingerprint of in-memory frames; shown for reference.
    validation.SKIP_DATA_FINGERPRINT = False
    try:
        fp_s, _ = best_of(lambda: run_gx(df), max(1, args.repeat - 1))
    finally:
        validation.SKIP_DATA_FINGERPRINT = True

    # verdicts, clean and with injected errors (the latter also timed, once)
    t0 = time.perf_counter()
    gx_bad = run_gx(bad)
    gx_bad_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pd_bad_ok, _, pd_bad_failed = run_pandas(bad)
    pd_bad_s = time.perf_counter() - t0

    # the pipeline's path: a file context, a checkpoint and Data Docs (timed once)
    with tempfile.TemporaryDirectory() as gx_dir:
        run_file = lambda: validation.validate_batch(  # noqa: E731
            df, usecase, interval_start=START, interval_end=END, gx_dir=Path(gx_dir)
        )
        run_file()  # creates the project
        t0 = time.perf_counter()
        file_res = run_file()
        file_s = time.perf_counter() - t0
    agree_clean = gx_res.success == pd_ok and gx_failed_pairs(gx_res) == pd_failed
    agree_bad = (
        gx_bad.success == pd_bad_ok
        and not gx_bad.success
        and gx_failed_pairs(gx_bad) == pd_bad_failed
    )

    ratio = gx_s / pd_s if pd_s else float("inf")
    verdict = "PASS" if ratio <= GOAL else "MISS"
    header = ["rows", "cols", "checks", "GX s", "pandas s", "ratio", "goal", "result"]
    row = [
        f"{len(df):,}",
        str(df.shape[1]),
        f"{gx_res.checks_total}/{pd_total}",
        f"{gx_s:.3f}",
        f"{pd_s:.3f}",
        f"{ratio:.2f}x",
        f"<= {GOAL:g}x",
        verdict,
    ]
    widths = [max(len(h), len(v)) for h, v in zip(header, row, strict=True)]
    print()
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
    print()
    print("for reference (not part of the goal):")
    print(f"  GX with its default data fingerprint: {fp_s:.3f}s ({fp_s / pd_s:.2f}x pandas)")
    print(
        f"  with injected errors, one run: GX {gx_bad_s:.3f}s (verdict + details of the "
        f"failed checks), pandas {pd_bad_s:.3f}s"
    )
    print(
        f"  file context + checkpoint + Data Docs (gx_dir), one run: {file_s:.3f}s "
        f"({'pass' if file_res.success else 'fail'}, page written: {bool(file_res.data_docs)})"
    )
    print(
        f"verdicts agree on the clean frame: {'yes' if agree_clean else 'NO'} "
        f"(GX {'pass' if gx_res.success else 'fail'}, pandas {'pass' if pd_ok else 'fail'})"
    )
    print(
        f"verdicts agree with injected errors: {'yes' if agree_bad else 'NO'} "
        f"({len(gx_bad.failed)} failed checks in GX, {len(pd_bad_failed)} in pandas)"
    )
    if not agree_bad:
        print("  only GX:", sorted(gx_failed_pairs(gx_bad) - pd_bad_failed, key=str))
        print("  only pandas:", sorted(pd_bad_failed - gx_failed_pairs(gx_bad), key=str))
    print(f"GX on the bad frame: {gx_bad.summary()}")
    print(f"\n=> {verdict}: GX gate is {ratio:.2f}x the pandas checks (goal <= {GOAL:g}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
