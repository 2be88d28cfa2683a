"""Where the time of a hotel_bookings_training run goes: model fitting vs. Airflow and MLflow.

Builds a home with ``--days`` of generated bookings (backfilled, not timed), then runs
``hotel_bookings_training`` twice through Airflow's ``dag.test()`` in this process (the first run
pays the one-off imports and the in-process execution API; the second is measured), and
times the same model search (``train_and_evaluate``) on the same training set with no
Airflow and no MLflow. Prints per-task durations and the shares.

    .venv/bin/python benchmarks/training.py --days 60 --rows 250
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, date, datetime, timedelta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--rows", type=int, default=250)
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="closedloop-bench-training-")
    os.environ["CLOSEDLOOP_HOME"] = home
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    from closedloop.core.settings import load_settings
    from closedloop.platform.runtime import apply_airflow_environ

    os.environ.setdefault("CLOSEDLOOP_USECASE_NAME", "hotel_bookings")  # its generator
    settings = load_settings()
    apply_airflow_environ(settings)

    from closedloop.core.feature_pipeline import backfill
    from closedloop.core.modeling import train_and_evaluate
    from closedloop.core.training_pipeline import (
        build_training_set,
        excluded_columns,
        split_training_set,
        training_config,
        training_window,
    )
    from closedloop.platform.airflow_runs import ensure_metadata_db, load_dag, run_dag
    from closedloop.usecases.hotel.generator import write_batches

    first = date(2026, 1, 1)
    write_batches(settings.landing_dir, first, args.days, rows_per_day=args.rows)
    t0 = time.perf_counter()
    backfill(settings, first, args.days)
    print(f"setup: backfilled {args.days} days in {time.perf_counter() - t0:.1f}s")

    ensure_metadata_db()
    dag = load_dag("hotel_bookings_training")
    as_of = datetime.combine(first + timedelta(days=args.days), datetime.min.time(), UTC)
    warm = run_dag(
        dag, as_of - timedelta(days=1), {"as_of": (as_of - timedelta(days=1)).isoformat()}
    )
    assert warm.succeeded, warm.task_states

    t0 = time.perf_counter()
    run = dag.test(logical_date=as_of, run_conf={"as_of": as_of.isoformat(), "reason": "bench"})
    wall = time.perf_counter() - t0
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    assert str(run.state) == "success", {k: str(v.state) for k, v in tis.items()}

    start, end = training_window(settings, as_of)
    built = build_training_set(settings, start, end, "bench-direct")
    import pandas as pd

    frame = pd.read_parquet(built.uri)
    config = training_config(settings)
    usecase = settings.usecase
    t0 = time.perf_counter()
    split = split_training_set(settings, frame, config)
    train_and_evaluate(
        split, config, label=usecase.label.column, exclude=excluded_columns(settings)
    )
    fitting = time.perf_counter() - t0

    tasks = sum(ti.duration or 0.0 for ti in tis.values())
    train_task = tis["train"].duration or 0.0
    print(f"training set: {built.rows} rows x {frame.shape[1]} columns")
    print(f"{'task':<24}{'seconds':>10}")
    for task_id in (
        "build_training_set",
        "validate_training_set",
        "skip_if_unchanged",
        "train",
        "register",
        "gate",
    ):
        print(f"{task_id:<24}{tis[task_id].duration or 0.0:>10.2f}")
    print(f"{'sum of tasks':<24}{tasks:>10.2f}")
    print(f"{'DAG run wall time':<24}{wall:>10.2f}")
    print(f"{'model search + fit':<24}{fitting:>10.2f}   (train_and_evaluate, no Airflow/MLflow)")
    print("")
    print(f"share in model fitting:         {fitting / wall:6.1%}")
    print(
        f"MLflow logging in the train task: {max(train_task - fitting, 0) / wall:6.1%} "
        f"({max(train_task - fitting, 0):.2f}s: runs, params, dataset, model artifact)"
    )
    print(f"other tasks (Feast join, GX, registry, gate): {(tasks - train_task) / wall:6.1%}")
    print(
        f"Airflow between tasks:          {max(wall - tasks, 0) / wall:6.1%} "
        f"({max(wall - tasks, 0):.2f}s)"
    )


if __name__ == "__main__":
    main()
