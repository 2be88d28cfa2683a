"""A use case's DAGs driven through a local Airflow (scheduler, API server, DAG
processor): one stage for one day, a backfill of history, a replay of landed days.

These are ``closedloop run``, ``closedloop backfill`` and ``closedloop loop``: each
starts Airflow on the settings' state, acts through its REST API as a user would, and
stops it. Every DAG run is the scheduler's, with the DAGs the factory builds from the
declaration.
"""

from __future__ import annotations

import time
from contextlib import redirect_stderr, redirect_stdout
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from collections.abc import Iterator

    from closedloop.core.settings import Settings
    from closedloop.platform.local_airflow import LocalAirflow


def _say(message: str) -> None:
    click.echo(f"[{time.strftime('%H:%M:%S')}] {message}")


class _Airflow:
    """Airflow for the duration of a command, its chatter in ``<home>/drive.log``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __enter__(self) -> LocalAirflow:
        from closedloop.platform.console import quiet_library_warnings
        from closedloop.platform.local_airflow import LocalAirflow
        from closedloop.platform.runtime import apply_airflow_environ

        apply_airflow_environ(self.settings)
        self.airflow = LocalAirflow(self.settings)
        self.log = open(self.settings.home / "drive.log", "a")
        _say(f"starting Airflow (logs {self.airflow.logs_dir})")
        with redirect_stdout(self.log), redirect_stderr(self.log):
            quiet_library_warnings()
            self.airflow.start()
        self.airflow.wait_for_dags(list(self.settings.usecase.dag_ids.values()))
        _say(f"Airflow is up at {self.airflow.base_url}")
        return self.airflow

    def __exit__(self, *exc: object) -> None:
        _say("stopping Airflow")
        self.airflow.stop()
        self.log.close()


def _report(airflow: LocalAirflow, dag_id: str, run_id: str, state: str) -> None:
    tasks = airflow.task_states(dag_id, run_id)
    _say(f"{dag_id} {run_id}: {state}")
    for task, task_state in tasks.items():
        click.echo(f"  {task:<24} {task_state}")


def run_stage(settings: Settings, stage: str, day: date, conf: dict[str, Any]) -> int:
    """The use case's ``stage`` DAG for ``day``: a run per interval of the day (one for a
    daily use case; monitoring's is daily always; training: one, as of the end of
    ``day``); 0 when every run succeeded."""
    usecase = settings.usecase
    dag_id = usecase.dag_ids[stage]
    ends = [end for _, end in usecase.intervals(day, day)]
    if stage in ("training", "monitoring"):
        ends = ends[-1:]
    if stage == "training":
        conf = {"reason": "manual", "as_of": ends[0].isoformat(), **conf}
    settings.home.mkdir(parents=True, exist_ok=True)
    failed = 0
    with _Airflow(settings) as airflow:
        for end in ends:
            run_id = airflow.trigger(
                dag_id, end, conf, run_id=f"cli__{end:%Y-%m-%dT%H}__{int(time.time())}"
            )
            state = airflow.wait(dag_id, run_id, timeout=3600)
            _report(airflow, dag_id, run_id, state)
            failed += state != "success"
    return 0 if not failed else 1


def run_backfill(settings: Settings, first: date, last: date, *, train: bool) -> int:
    """The features DAG over ``[first, last]`` with Airflow's backfill, one interval at a
    time in order (each carries the aggregation state to the next). The training DAG is
    paused meanwhile — one run per loaded day would train on partial history — and, with
    ``train``, runs once as of the end of ``last``. 0 when every run succeeded."""
    usecase = settings.usecase
    features, training = usecase.dag_ids["features"], usecase.dag_ids["training"]
    intervals = usecase.intervals(first, last)
    settings.home.mkdir(parents=True, exist_ok=True)
    with _Airflow(settings) as airflow:
        airflow.set_paused(training, True)
        try:
            _say(f"backfilling {features} for {first} .. {last}")
            # logical dates are the intervals' starts
            runs = airflow.backfill(features, intervals[0][0], intervals[-1][0])
        finally:
            airflow.set_paused(training, False)
        failed = [r for r in runs if r["state"] != "success"]
        _say(f"{len(runs)} runs, {len(runs) - len(failed)} succeeded")
        for run in failed:
            _report(airflow, features, run["dag_run_id"], run["state"])
        if failed or len(runs) != len(intervals):
            _say(f"expected {len(intervals)} successful runs: the training DAG was not started")
            return 1
        if train:
            as_of = intervals[-1][1]
            conf = {"reason": "backfill", "as_of": as_of.isoformat()}
            run_id = airflow.trigger(training, as_of, conf, run_id=f"backfill__{last:%Y-%m-%d}")
            state = airflow.wait(training, run_id, timeout=3600)
            _report(airflow, training, run_id, state)
            return 0 if state == "success" else 1
    return 0


def days(first: date, last: date) -> Iterator[date]:
    day = first
    while day <= last:
        yield day
        day += timedelta(days=1)
