"""The environment Airflow (and the libraries it runs) needs for a closedloop profile.

Airflow reads its configuration from ``AIRFLOW__*`` variables when it is first imported,
so these must be in place before anything imports ``airflow``: the CLI sets them for its
own process and its children, the test suite for the test session.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from closedloop.core.settings import Settings

from closedloop.core.settings import PROJECT_ROOT

#: Airflow's SQLite connections wait this long for the database lock (pysqlite's default
#: is 5 s): the scheduler, the API server and each task write to the one file, and on a
#: busy machine a writer can hold it longer. Named by
#: ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS`` in the embedded profile.
SQLITE_CONNECT_ARGS = {"timeout": 60}
#: ... and other databases get none (set explicitly, so that an embedded profile's value
#: inherited from the environment never reaches a PostgreSQL driver)
NO_CONNECT_ARGS: dict[str, object] = {}
#: Seconds between a failed task attempt and its retry, unless the environment says
#: otherwise: the DAGs set ``retries`` and take the delay from Airflow's
#: ``[core] default_task_retry_delay`` (Airflow's own default is 300 s), so a deployment —
#: or a fault test that kills workers — changes it in one place,
#: ``AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY`` (read where the DAGs are parsed).
TASK_RETRY_DELAY_SECONDS = 30
_RETRY_DELAY = "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY"


def airflow_environ(settings: Settings) -> dict[str, str]:
    """``AIRFLOW__*`` and friends for running this project's DAGs on ``settings``."""
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    connect_args = (
        "SQLITE_CONNECT_ARGS"
        if settings.airflow_sql_alchemy_conn.startswith("sqlite")
        else "NO_CONNECT_ARGS"
    )
    # The DAG factory reads the whole folder and each task names its use case; the CLI's
    # choice of one use case travels only when it was made.
    chosen = {
        "CLOSEDLOOP_USECASE_NAME": settings.usecase_name,
        "CLOSEDLOOP_USECASE_FILE": settings.usecase_file and str(settings.usecase_file),
    }
    return {
        **{k: v for k, v in chosen.items() if v},
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": (
            f"closedloop.platform.runtime.{connect_args}"
        ),
        "CLOSEDLOOP_HOME": str(settings.home),
        "CLOSEDLOOP_PROFILE": settings.profile,
        "CLOSEDLOOP_USECASES_DIR": str(settings.usecases_dir),
        "CLOSEDLOOP_FEATURE_REPO": str(settings.feature_repo),
        "CLOSEDLOOP_DAGS_FOLDER": str(settings.dags_folder),
        "AIRFLOW_HOME": str(settings.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.dags_folder),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": settings.airflow_sql_alchemy_conn,
        # Two cores: Airflow's default of 32 parallel task processes only thrashes. But a
        # slot is held until the task's supervisor has noticed its process exit, which
        # can come up to a heartbeat interval after the task has finished: 4 slots made
        # the feature pipeline's next step wait for the monitoring's finished ones.
        "AIRFLOW__CORE__PARALLELISM": "8",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        _RETRY_DELAY: os.environ.get(_RETRY_DELAY) or str(TASK_RETRY_DELAY_SECONDS),
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "FEAST_USAGE": "False",
        "GX_ANALYTICS_ENABLED": "False",
    }


def apply_airflow_environ(settings: Settings) -> dict[str, str]:
    """Put :func:`airflow_environ` into this process's environment (before ``import
    airflow``) and return it."""
    env = airflow_environ(settings)
    os.environ.update(env)
    return env


def stop_process(proc: subprocess.Popen, timeout: float = 60) -> int:
    """Stop a server started as a subprocess the way its supervisor would: SIGTERM (a
    uvicorn server finishes the requests in flight and runs its shutdown, e.g. the
    prediction log's flush), then SIGKILL if it has not exited within ``timeout``.
    Returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()
