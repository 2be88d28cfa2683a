"""``closedloop explain``: how long one prediction takes to walk back to its origins,
against the floor of any answer, for each model family.

Set-up (not timed): a temporary home gets 20 generated days through the feature
pipeline and one version of each model family (two trials each); the first scores day
20 in batch, the second day 21 (a day's batch partition is replaced by a rescoring), so
the prediction log holds records of both.

Measured, per family:

* **warm** — :func:`closedloop.core.explain.explain` per prediction after the first in
  the same process (the fitted model and its background rows are cached, as in
  ``closedloop serve``'s ``GET /explain/{id}`` and the closedloop view), over
  ``--predictions`` ids; the baseline is reading the same record from the prediction log
  alone (:func:`closedloop.core.explain_sources.find_prediction`), which every answer
  must do. Goal: well under a second (PASS below 1 s);
* **cold** — ``closedloop explain ID --json`` in a fresh process, the median of
  ``--repeat``; the baseline is ``closedloop --help`` (the interpreter and the CLI
  starting), so the ratio shows what the walk adds to a command that does nothing.

    .venv/bin/python benchmarks/explain.py [--predictions 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from _common import print_table

FIRST, DAYS = date(2026, 1, 1), 20
FAMILIES = ("logistic_regression", "hist_gradient_boosting")
VENV_BIN = Path(sys.executable).parent
GOAL_SECONDS = 1.0


def prepare(settings) -> dict[str, str]:
    """The home of the module's set-up; returns the version of each family."""
    from closedloop.core import training_pipeline as tp
    from closedloop.core.batch_inference import score_interval
    from closedloop.core.feature_pipeline import backfill, clean, engineer, extract, load_offline
    from closedloop.core.shadow import load_version_model
    from closedloop.usecases.hotel.generator import write_batches

    write_batches(settings.landing_dir, FIRST, DAYS + 1, rows_per_day=150)
    backfill(settings, FIRST, DAYS)
    last = datetime(2026, 1, DAYS + 1, tzinfo=UTC)  # offline only
    extract(settings, last, last + timedelta(days=1))
    load_offline(settings, last, engineer(settings, last, last + timedelta(days=1),
                                          clean(settings, last)))  # fmt: skip
    versions = {}
    for n, family in enumerate(FAMILIES):
        day = last - timedelta(days=len(FAMILIES) - 1 - n)
        end = day + timedelta(days=1)
        out = tp.run_in_process(
            settings, datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 16, tzinfo=UTC),
            f"bench/{family}", reason="bench", dag_id="bench", families=(family,), trials=2,
            validation_days=3, holdout_days=3,
        )  # fmt: skip
        versions[family] = str(out["version"])
        alias = "champion" if out["action"] == "promoted" else "challenger"
        model = replace(load_version_model(settings, versions[family]), alias=alias)
        score_interval(settings, day, end, model=model)
    return versions


def seconds(argv: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-2000:] + done.stderr[-4000:])
        raise SystemExit(f"{argv} failed")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--predictions", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    tmp = Path(tempfile.mkdtemp(prefix="closedloop-bench-explain-"))
    os.environ["CLOSEDLOOP_HOME"] = str(tmp / "home")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("CLOSEDLOOP_USECASE_NAME", "hotel_bookings")  # its generator
    from closedloop.core.explain import explain
    from closedloop.core.explain_sources import find_prediction
    from closedloop.core.prediction_log import PredictionLog
    from closedloop.core.settings import load_settings

    settings = load_settings()
    try:
        print("preparing a home with a version of each family ...", flush=True)
        versions = prepare(settings)
        log = PredictionLog(settings.prediction_log_dir).read(
            datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
        )
        cli = str(VENV_BIN / "closedloop")
        rows, verdicts = [], []
        for family, version in versions.items():
            ids = log[log["model_version"].astype(str) == version]["prediction_id"].tolist()
            ids = ids[: args.predictions + 1]
            first = explain(settings, ids[0])  # loads the version and its background
            t0 = time.perf_counter()
            for pid in ids[1:]:
                explain(settings, pid)
            warm = (time.perf_counter() - t0) / (len(ids) - 1)
            t0 = time.perf_counter()
            for pid in ids[1:]:
                find_prediction(settings.prediction_log_dir, pid)
            floor = (time.perf_counter() - t0) / (len(ids) - 1)
            cold = statistics.median(
                seconds([cli, "explain", pid, "--json"]) for pid in ids[1 : 1 + args.repeat]
            )
            start = statistics.median(seconds([cli, "--help"]) for _ in range(args.repeat))
            rows.append([family, first.contributions.method or "none", f"{floor * 1000:.1f}",
                         f"{warm * 1000:.1f}", f"{warm / floor:.1f}x", f"{start:.2f}",
                         f"{cold:.2f}", f"{cold / start:.1f}x"])  # fmt: skip
            verdict = "PASS" if warm < GOAL_SECONDS else "MISS"
            verdicts.append(
                f"{family}: warm explain {warm * 1000:.0f} ms per prediction "
                f"(goal < {GOAL_SECONDS:.0f} s: {verdict})"
            )
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print_table(
            ["family", "contributions", "record ms", "warm ms", "ratio", "cli start s",
             "cli explain s", "ratio"],
            rows,
        )  # fmt: skip
        print("\n".join(verdicts))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
