"""``closedloop demo`` and ``closedloop loop``: the closed loop on generated (or landed)
data, day by day through a real Airflow scheduler, and the summary it prints."""

from __future__ import annotations

import shutil
import time
from contextlib import redirect_stderr, redirect_stdout
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import click

from closedloop.core import offline
from closedloop.platform.console import quiet_library_warnings, say, show_model, where_to_look

if TYPE_CHECKING:
    from collections.abc import Callable

    from closedloop.core.settings import Settings
    from closedloop.core.usecase import UseCase
    from closedloop.demo.loop import Replay, Scenario

#: Folders the demo owns under the home folder; it never deletes anything else.
_STATE_DIRS = (
    "landing",
    "predictions",
    "prediction_log",
    "reports",
    "evidently",
    "monitoring",
    "quarantine",
    "staging",
    "offline",
    "gx",
    "feast",
    "airflow",
    "mlflow",
    "training",
    "evidence",
)
_STATE_FILES = ("closedloop.db", "demo.log", "loop.json")


def reset_state(settings: Settings) -> None:
    for name in _STATE_DIRS:
        shutil.rmtree(settings.home / name, ignore_errors=True)
    for name in _STATE_FILES:
        (settings.home / name).unlink(missing_ok=True)


def generator_module(usecase: UseCase) -> Any:
    """The module of the use case's declared ``generator``: its ``write_batches(landing,
    start, days, seed=, rows_per_day=, drift=)`` and ``DriftSpec`` drive the synthetic
    scenarios."""
    import importlib

    if usecase.generator is None:
        raise ValueError(f"use case {usecase.name} declares no generator")
    return importlib.import_module(usecase.generator.partition(":")[0])


def land_scenario(settings: Settings, scenario: Scenario) -> None:
    """Write the scenario's batches, history and watched days, with the use case's
    generator (drift injected from ``scenario.drift_start``)."""
    module = generator_module(settings.usecase)
    drift = module.DriftSpec(
        start=scenario.drift_start, covariate=scenario.covariate, concept=scenario.concept
    )
    module.write_batches(
        settings.landing_dir,
        scenario.first_day,
        scenario.history_days + len(scenario.watched),
        seed=scenario.seed,
        rows_per_day=scenario.rows_per_day,
        drift=drift,
    )


def run_demo(settings: Settings, scenario: Scenario, *, keep: bool = False) -> int:
    """A scenario on synthetic data (:func:`land_scenario`) through a real Airflow
    scheduler (see :mod:`closedloop.demo.loop`); returns the exit code: 0 only if the
    loop closed."""
    generator_module(settings.usecase)  # no generator: fail before anything is reset

    def land() -> None:
        say(
            f"generating {scenario.history_days + len(scenario.watched)} days of events from "
            f"{scenario.first_day} (~{scenario.rows_per_day}/day); drift from "
            f"{scenario.drift_start}"
        )
        land_scenario(settings, scenario)

    return _run_loop(settings, scenario, land, keep=keep)


def run_replay(settings: Settings, replay: Replay | None = None, *, keep: bool = False) -> int:
    """A use case's own data (its ``demo`` block: where the batches come from and which
    days) replayed through a real Airflow scheduler; 0 when every run succeeded."""
    from closedloop.demo.loop import Replay

    usecase = settings.usecase
    if usecase.demo is None:
        raise ValueError(f"use case {usecase.name} declares no demo block")
    replay = replay or Replay(
        usecase.demo.first_day, usecase.demo.history_days, usecase.demo.watched_days
    )

    def land() -> None:
        days = replay.history_days + replay.watched_days
        say(f"landing {days} days of {usecase.name} from {replay.first_day}")
        usecase.hook_of(usecase.demo.writer)(
            settings.landing_dir, replay.first_day, days, fmt=usecase.batch.format
        )

    return _run_loop(settings, replay, land, keep=keep)


def run_loop(settings: Settings, replay: Replay) -> int:
    """``closedloop loop``: the landed days of ``replay`` through the scheduler, on the
    existing state (history loaded first unless it is already)."""
    return _run_loop(settings, replay, lambda: None, keep=True)


def _run_loop(
    settings: Settings, scenario: Scenario | Replay, land: Callable[[], None], *, keep: bool
) -> int:
    from closedloop.core.feature_pipeline import backfill
    from closedloop.demo.loop import ClosedLoop, summary_table, to_json
    from closedloop.platform.local_airflow import LocalAirflow
    from closedloop.platform.runtime import apply_airflow_environ

    started = time.monotonic()
    if not keep:
        say(f"starting from a clean state in {settings.home}")
        reset_state(settings)
    land()
    apply_airflow_environ(settings)
    log_path = settings.home / "demo.log"
    airflow = LocalAirflow(settings)
    say(f"starting Airflow: {', '.join(airflow.components)} (logs {airflow.logs_dir})")
    # One log file for the rest of the process: the libraries' log handlers bind to the
    # stream they first see, so it is never closed before the process ends.
    log = open(log_path, "a")  # noqa: SIM115
    with redirect_stdout(log), redirect_stderr(log):
        quiet_library_warnings()
        airflow.launch()
    try:
        say(
            f"while it starts: the feature pipeline over the {scenario.history_days}-day "
            "history in one bulk backfill (same steps, this process)"
        )
        t0 = time.monotonic()
        last = scenario.history_end - timedelta(days=1)
        table = settings.offline_table_dir(settings.usecase.event_table)
        if offline.partition_path(table, f"{last:%Y-%m-%d}").exists():
            say("  already loaded (the offline store has its last day)")
        else:
            with redirect_stdout(log), redirect_stderr(log):
                loaded = backfill(settings, scenario.first_day, scenario.history_days)
            say(f"  {loaded['rows']} events in the stores in {time.monotonic() - t0:.0f}s")
        airflow.wait_ready()
        airflow.wait_for_dags(list(settings.usecase.dag_ids.values()))
        say(
            f"Airflow is up at {airflow.base_url} (user admin, password in {airflow.password_file})"
        )
        result = ClosedLoop(settings, scenario, airflow, say=say).run()
    finally:
        say("stopping Airflow")
        airflow.stop()
    click.echo("")
    for line in summary_table(result):
        click.echo("  " + line)
    click.echo("")
    show_model(settings)
    (settings.home / "loop.json").write_text(to_json(result))
    where_to_look(settings)
    _write_evidence(settings)
    problems = result.problems()
    total = time.monotonic() - started
    if problems:
        say(f"the loop did NOT close ({total:.0f}s):")
        for problem in problems:
            click.echo(f"  - {problem}")
        return 1
    promotion = result.promotion()
    if promotion is None:
        retrains = len(result.retrain_runs)
        say(
            f"the loop ran to the end in {total:.0f}s: {retrains} retraining run(s) started by "
            "monitoring, no promotion (the ledger above says why)"
        )
        return 0
    old, new = result.holdout_comparison()
    say(
        f"the loop closed in {total:.0f}s: retrained by monitoring, "
        f"v{promotion.version} promoted (holdout ROC AUC {new:.3f} vs {old:.3f} for the old "
        "champion)"
    )
    return 0


def _write_evidence(settings: Settings) -> None:
    """The evidence report of the loop, from the stores (``closedloop evidence``)."""
    from closedloop.core.evidence_report import write_report

    paths = write_report(settings)
    say(f"evidence report: {paths['html']}")
    click.echo(f"  and {paths['markdown']} (principles, components and steps, with links)")
