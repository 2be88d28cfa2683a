"""The closed loop through Airflow vs. the same steps called in one plain Python process.

Both sides get the same generated data (the demo's scenario, or the one given by the
flags) and the same history, loaded by the same bulk backfill (not timed). Then:

* **plain**: one Python process calls, day by day, the core functions the DAGs' tasks
  call, in the order the DAGs call them — features, batch scoring, drift, performance,
  the verdict and, when it says so, training, registration and the gate. No scheduler,
  no task processes, no XComs: the limit of what orchestration could cost;
* **airflow**: :class:`closedloop.demo.loop.ClosedLoop` drives a real Airflow (API server,
  scheduler with LocalExecutor, DAG processor; started first and timed separately), the
  monitoring DAG triggering the retraining.

Prints both wall times, the ratio (goal: Airflow <= 1.2x plain, issue 20; it was 1.5x)
and whether both runs reached the same decisions (the retrain day, the promoted version).

    .venv/bin/python benchmarks/loop.py               # the demo's scenario
    .venv/bin/python benchmarks/loop.py --drift-days 4 --stable-days 2   # quicker
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import timedelta
from typing import Any

GOAL = 1.2  # Airflow / plain, start-up excluded


def _prepare(scenario: Any) -> Any:
    from closedloop.core.feature_pipeline import backfill
    from closedloop.core.settings import load_settings
    from closedloop.demo.commands import land_scenario

    os.environ["CLOSEDLOOP_HOME"] = tempfile.mkdtemp(prefix="closedloop-bench-loop-")
    os.environ.setdefault("CLOSEDLOOP_USECASE_NAME", "hotel_bookings")  # its generator
    settings = load_settings()
    land_scenario(settings, scenario)
    backfill(settings, scenario.first_day, scenario.history_days)
    return settings


def _train(settings: Any, as_of: Any, reason: str, run_key: str) -> str:
    """hotel_bookings_training's tasks in order; returns the gate's action."""
    from closedloop.core import training_pipeline as tp

    start, end = tp.training_window(settings, as_of)
    return tp.run_in_process(
        settings, start, end, run_key, reason=reason, dag_id="plain", skip_unchanged=True
    )["action"]


def plain_loop(settings: Any, scenario: Any) -> dict[str, Any]:
    """The loop's steps, called directly; returns the decisions it reached."""
    from closedloop.core import feature_pipeline as fp
    from closedloop.core.batch_inference import score_interval
    from closedloop.core.feature_store import apply_definitions, materialize_interval, open_store
    from closedloop.core.monitoring_pipeline import (
        check_drift,
        check_performance,
        decide_and_record,
    )
    from closedloop.demo.loop import midnight

    outcome: dict[str, Any] = {"retrain_days": [], "actions": []}
    outcome["actions"].append(_train(settings, scenario.history_end, "initial", "plain-initial"))
    for day in scenario.watched:
        start = midnight(day)
        end = start + timedelta(days=1)
        fp.extract(settings, start, end)
        fp.validate(settings, start, end, run_name=f"plain-{day}")
        staged = fp.engineer(settings, start, end, fp.clean(settings, start))
        fp.load_offline(settings, start, staged)
        store = open_store(settings)
        apply_definitions(store, settings)
        materialize_interval(store, start, end)
        score_interval(settings, start, end, chunk_rows=50_000)
        drift = check_drift(settings, start, end, window_days=3)
        performance = check_performance(settings, end, window_days=7)
        verdict = decide_and_record(settings, start, drift, performance, run_id=f"plain-{day}")
        if verdict.retrain:
            outcome["retrain_days"].append(day.isoformat())
            outcome["actions"].append(_train(settings, end, "drift", verdict.trigger_run_id))
    return outcome


def airflow_loop(settings: Any, scenario: Any) -> tuple[dict[str, Any], float]:
    from closedloop.demo.loop import ClosedLoop
    from closedloop.platform.local_airflow import LocalAirflow
    from closedloop.platform.runtime import apply_airflow_environ

    apply_airflow_environ(settings)
    airflow = LocalAirflow(settings)
    t0 = time.perf_counter()
    airflow.start()
    airflow.wait_for_dags(list(settings.usecase.dag_ids.values()))
    startup = time.perf_counter() - t0
    try:
        result = ClosedLoop(settings, scenario, airflow, say=lambda _: None).run()
    finally:
        airflow.stop()
    outcome = {
        "retrain_days": [d.day.isoformat() for d in result.days if d.retrain],
        "problems": result.problems(),
    }
    return outcome, startup


def main() -> None:
    from closedloop.demo.loop import Scenario

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Scenario()
    parser.add_argument("--history-days", type=int, default=defaults.history_days)
    parser.add_argument("--stable-days", type=int, default=defaults.stable_days)
    parser.add_argument("--drift-days", type=int, default=defaults.drift_days)
    parser.add_argument("--rows", type=int, default=defaults.rows_per_day)
    args = parser.parse_args()
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    scenario = Scenario(
        history_days=args.history_days,
        stable_days=args.stable_days,
        drift_days=args.drift_days,
        rows_per_day=args.rows,
    )
    days = len(scenario.watched)
    print(
        f"scenario: {scenario.history_days} days of history, {days} watched days, "
        f"{scenario.rows_per_day} bookings/day, drift from {scenario.drift_start}"
    )

    settings = _prepare(scenario)
    t0 = time.perf_counter()
    plain = plain_loop(settings, scenario)
    plain_s = time.perf_counter() - t0
    print(
        f"plain Python : {plain_s:7.1f}s  retrain on {plain['retrain_days']}, "
        f"gate actions {plain['actions']}"
    )

    settings = _prepare(scenario)
    t0 = time.perf_counter()
    via_airflow, startup = airflow_loop(settings, scenario)
    airflow_s = time.perf_counter() - t0 - startup
    print(
        f"Airflow      : {airflow_s:7.1f}s  retrain on {via_airflow['retrain_days']} "
        f"(+{startup:.1f}s to start Airflow)"
    )
    ratio = airflow_s / plain_s
    print(
        f"ratio Airflow / plain = {ratio:.2f}x (goal <= {GOAL}x: "
        f"{'PASS' if ratio <= GOAL else 'MISS'}); with start-up "
        f"{(airflow_s + startup) / plain_s:.2f}x; per watched day "
        f"{airflow_s / days:.1f}s vs {plain_s / days:.1f}s"
    )
    same = plain["retrain_days"] == via_airflow["retrain_days"]
    print(
        f"same decisions: {same}; loop closed under Airflow: "
        f"{not via_airflow['problems']} {via_airflow['problems'] or ''}"
    )


if __name__ == "__main__":
    main()
