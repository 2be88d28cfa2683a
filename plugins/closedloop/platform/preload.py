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
    # what a task's first MLflow SQL-store call and model load import: the store's
    # migration check (alembic, mako) and skops, which imports every scikit-learn
    # estimator module (and pytest) to list the types it trusts — ~1 s per task
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "alembic.command",
    "alembic.config",
    "alembic.runtime.migration",
    "alembic.autogenerate",
    "mako.template",
    "skops.io",
    "feast",
    "feast.repo_operations",
    "feast.infra.offline_stores.dask",
    "feast.infra.online_stores.sqlite",
    "great_expectations",
    "great_expectations.expectations",
    "evidently",
    "evidently.presets",
    "evidently.ui.service",
    "plotly.graph_objects",
    "plotly.offline",
    "plotly.validators.bar",
    "plotly.validators.scatter",
    "partd.pandas",
    "fsspec.implementations.arrow",
    "closedloop.core.validation",
    "closedloop.core.feature_store",
    "closedloop.core.training_pipeline",
    "closedloop.core.modeling",
    "closedloop.core.monitoring_pipeline",
    "closedloop.core.monitoring",
    "closedloop.core.drift",
    "closedloop.core.drift_report",
    "closedloop.core.batch_inference",
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
