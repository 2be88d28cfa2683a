"""Running the project's DAGs in this process with Airflow's own ``dag.test()``.

This is Airflow executing the DAG — its task runner, XComs, retries and Asset events,
recorded in the metadata database — without a scheduler process, which makes it the
fast path for the demo's backfill and the integration tests. Call
:func:`closedloop.platform.runtime.apply_airflow_environ` before this module is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.models.dagrun import DagRun
    from airflow.sdk import DAG


@dataclass(frozen=True)
class RunOutcome:
    """The state of one DAG run and of each of its tasks."""

    dag_id: str
    run_id: str
    logical_date: datetime
    state: str
    task_states: dict[str, str]
    #: attempts per task: 1 means it was never retried
    task_tries: dict[str, int]

    @property
    def succeeded(self) -> bool:
        return self.state == "success"

    def failed_tasks(self) -> list[str]:
        """Tasks that failed themselves (not the ones skipped because of them)."""
        return sorted(t for t, s in self.task_states.items() if s == "failed")


def ensure_metadata_db() -> None:
    """Create or upgrade Airflow's metadata database (idempotent)."""
    from airflow.utils.db import initdb

    initdb()


def load_dag(dag_id: str) -> DAG:
    """Parse the project's DAG folder and return one DAG; import errors are fatal."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag()
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    dag = bag.get_dag(dag_id)
    if dag is None:
        raise KeyError(f"no DAG {dag_id!r} in {bag.dag_folder}")
    return dag


def run_dag(dag: DAG, logical_date: datetime, conf: dict[str, Any] | None = None) -> RunOutcome:
    """Run ``dag`` for ``logical_date`` to completion and report what happened."""
    run: DagRun = dag.test(logical_date=logical_date, run_conf=conf)
    tis = run.get_task_instances()
    states = {ti.task_id: str(ti.state) for ti in tis}
    return RunOutcome(
        dag_id=dag.dag_id,
        run_id=run.run_id,
        logical_date=logical_date,
        state=str(run.state),
        task_states=states,
        task_tries={ti.task_id: ti.try_number for ti in tis},
    )


def run_day(dag: DAG, day: date, conf: dict[str, Any] | None = None) -> RunOutcome:
    """Run a daily data-interval DAG for the interval ``[day, day + 1)``.

    A manual run of a data-interval timetable covers the interval that *ends* at its
    logical date, so the run for ``day`` is dated at the following midnight (UTC).
    """
    return run_dag(dag, datetime.combine(day + timedelta(days=1), time.min, UTC), conf)
