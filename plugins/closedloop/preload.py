"""Import, once, what closedloop's tasks import, in a process that will fork them.

Airflow 3.3 forks every task from the scheduler's executor (LocalExecutor) or a Celery
worker's pool; modules imported in the parent before the fork are shared by every task,
which saves ~20 s of imports per task here. Only *imports*: no client, engine, store or
thread is created, so nothing is shared by accident.
"""

from __future__ import annotations

import importlib
import logging
import time

MODULES = (
    "pandas",
    "pyarrow.parquet",
    "sklearn.ensemble",
    "sklearn.linear_model",
    "sklearn.compose",
    "sklearn.metrics",
    "mlflow",
    "mlflow.sklearn",
    "mlflow.data.pandas_dataset",
    "feast",
    "feast.repo_operations",
    "feast.infra.offline_stores.dask",
    "feast.infra.online_stores.sqlite",
    "great_expectations",
    "great_expectations.expectations",
    "evidently",
    "evidently.presets",
    "closedloop.core.validation",
    "closedloop.core.feature_store",
    "closedloop.core.training_pipeline",
    "closedloop.core.modeling",
    "closedloop.core.monitoring_pipeline",
)


def preload() -> float:
    """Import :data:`MODULES`; returns the seconds it took. A module that fails to import
    is logged and left for the task that needs it to raise."""
    started = time.monotonic()
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            logging.getLogger(__name__).warning("preload: %s not imported: %s", name, exc)
    return time.monotonic() - started
