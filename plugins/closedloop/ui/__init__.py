"""The closedloop view inside the Airflow UI: an Airflow plugin (entry point group
``airflow.plugins`` in pyproject.toml, so any Airflow with closedloop installed loads it).

* ``fastapi_apps``: :mod:`closedloop.ui.app`, mounted in the API server at
  :data:`closedloop.core.links.APP_PREFIX`; every route needs an Airflow user.
* ``external_views``: "closedloop" in the navigation (shown in the UI's iframe) and a
  "closedloop" tab on each DAG run, the page of what that run produced.

The app is built on first access of ``fastapi_apps`` (only the API server and ``airflow
plugins`` ask for it): schedulers and task processes load this plugin too, and need
neither FastAPI routes nor Airflow's security module.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from closedloop.core.links import APP_PREFIX


class ClosedLoopPlugin(AirflowPlugin):
    """The closedloop view: its app and the UI's entries to it."""

    name = "closedloop"
    external_views = [
        {
            "name": "closedloop",
            "href": f"{APP_PREFIX}/",
            "destination": "nav",
            "url_route": "closedloop",
            "nav_top_level": True,
        },
        {
            "name": "closedloop",
            "href": f"{APP_PREFIX}/runs/{{DAG_ID}}/{{RUN_ID}}",
            "destination": "dag_run",
            "url_route": "closedloop-run",
        },
    ]

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        from closedloop.ui.app import app

        return [{"app": app(), "url_prefix": APP_PREFIX, "name": "closedloop"}]
