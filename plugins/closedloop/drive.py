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
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from collections.abc import Iterator

    from closedloop.core.settings import Settings
    from closedloop.local_airflow import LocalAirflow


def _say(message: str) -> None:
    click.echo(f"[{time.strftime('%H:%M:%S')}] {message}")


def midnight(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), UTC)


class _Airflow:
    """Airflow for the duration of a command, its chatter in ``<home>/drive.log``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __enter__(self) -> LocalAirflow:
        from closedloop.demo import _quiet_library_warnings
        from closedloop.local_airflow import LocalAirflow
        from closedloop.runtime import apply_airflow_environ

        apply_airflow_environ(self.settings)
        self.airflow = LocalAirflow(self.settings)
        self.log = open(self.settings.home / "drive.log", "a")
        _say(f"starting Airflow (logs {self.airflow.logs_dir})")
        with redirect_stdout(self.log), redirect_stderr(self.log):
            _quiet_library_warnings()
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
    """One run of the use case's ``stage`` DAG for ``day``'s interval (training: as of
    the end of ``day``); 0 when it succeeded."""
    dag_id = settings.usecase.dag_ids[stage]
    end = midnight(day + timedelta(days=1))
    if stage == "training":
        conf = {"reason": "manual", "as_of": end.isoformat(), **conf}
    settings.home.mkdir(parents=True, exist_ok=True)
    with _Airflow(settings) as airflow:
        run_id = airflow.trigger(
            dag_id, end, conf, run_id=f"cli__{day:%Y-%m-%d}__{int(time.time())}"
        )
        state = airflow.wait(dag_id, run_id, timeout=3600)
        _report(airflow, dag_id, run_id, state)
    return 0 if state == "success" else 1


def run_backfill(settings: Settings, first: date, last: date, *, train: bool) -> int:
    """The features DAG over ``[first, last]`` with Airflow's backfill, one interval at a
    time in order (each carries the aggregation state to the next). The training DAG is
    paused meanwhile — one run per loaded day would train on partial history — and, with
    ``train``, runs once as of the end of ``last``. 0 when every run succeeded."""
    usecase = settings.usecase
    features, training = usecase.dag_ids["features"], usecase.dag_ids["training"]
    settings.home.mkdir(parents=True, exist_ok=True)
    with _Airflow(settings) as airflow:
        airflow.set_paused(training, True)
        try:
            _say(f"backfilling {features} for {first} .. {last}")
            runs = airflow.backfill(features, midnight(first), midnight(last))
        finally:
            airflow.set_paused(training, False)
        failed = [r for r in runs if r["state"] != "success"]
        _say(f"{len(runs)} runs, {len(runs) - len(failed)} succeeded")
        for run in failed:
            _report(airflow, features, run["dag_run_id"], run["state"])
        expected = (last - first).days + 1
        if failed or len(runs) != expected:
            _say(f"expected {expected} successful runs: the training DAG was not started")
            return 1
        if train:
            as_of = midnight(last + timedelta(days=1))
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
