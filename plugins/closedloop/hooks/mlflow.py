"""MLflow hook: an Airflow connection (optional) -> the tracking server and its login."""

from __future__ import annotations

import os
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from closedloop.core.settings import Settings, load_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient


class MlflowHook(BaseHook):
    """The MLflow tracking server and registry of closedloop's settings, or of a
    connection of type ``closedloop_mlflow``: its host (a URL, or a name with the port
    and ``schema`` as the scheme, ``http`` by default) becomes the tracking URI, its
    login and password the basic-auth credentials MLflow's client sends (set as
    ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD`` in the task's process, where MLflow reads
    them on every request).

    :param mlflow_conn_id: the connection (optional: without it, settings only).
    """

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = "closedloop_mlflow_default"
    conn_type = "closedloop_mlflow"
    hook_name = "MLflow (closedloop)"

    def __init__(self, mlflow_conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mlflow_conn_id = mlflow_conn_id

    @cached_property
    def _connection(self) -> Any:
        return self.get_connection(self.mlflow_conn_id) if self.mlflow_conn_id else None

    def overrides(self) -> dict[str, Any]:
        """The settings the connection sets: the tracking URI."""
        conn = self._connection
        if conn is None or not conn.host:
            return {}
        uri = conn.host if "://" in conn.host else f"{conn.schema or 'http'}://{conn.host}"
        if conn.port:
            uri = f"{uri.rstrip('/')}:{conn.port}"
        return {"stores": {"mlflow_tracking_uri": uri}}

    def apply_credentials(self) -> None:
        """Hand the connection's login to MLflow's client in this process."""
        conn = self._connection
        if conn is not None and conn.login:
            os.environ["MLFLOW_TRACKING_USERNAME"] = conn.login
            os.environ["MLFLOW_TRACKING_PASSWORD"] = conn.password or ""

    @cached_property
    def settings(self) -> Settings:
        self.apply_credentials()
        return load_settings(**self.overrides())

    def get_conn(self) -> MlflowClient:
        from closedloop.core.registry import client_for

        return client_for(self.settings)

    def test_connection(self) -> tuple[bool, str]:
        try:
            experiments = self.get_conn().search_experiments(max_results=1)
        except Exception as exc:  # the UI shows the message; any failure means "no"
            return False, f"{type(exc).__name__}: {exc}"
        return True, f"MLflow at {self.settings.mlflow_tracking_uri}: {len(experiments)} found"
