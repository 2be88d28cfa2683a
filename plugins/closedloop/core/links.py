"""The web pages of the loop's evidence, as a browser reaches them: one place builds
every URL that an operator's extra link, an alert or the closedloop view shows.

Base URLs come from settings (``airflow_public_url``, ``mlflow_public_url``,
``evidently_public_url``), so links are right in both profiles. Files that no server of
the stack serves (GX Data Docs, quarantine reports, drift HTML) are served by the
closedloop view's app inside the Airflow API server, under :data:`FILES_PREFIX`, behind
Airflow's login; :func:`file_url` and :func:`resolve_file` are the two ends of that.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from closedloop.core.settings import Settings

#: where the closedloop app is mounted in the Airflow API server
APP_PREFIX = "/closedloop"
FILES_PREFIX = f"{APP_PREFIX}/files"


def mlflow_run(settings: Settings, experiment_id: str, run_id: str) -> str:
    return f"{settings.mlflow_public_url}/#/experiments/{experiment_id}/runs/{run_id}"


def mlflow_model_version(settings: Settings, model: str, version: str) -> str:
    return f"{settings.mlflow_public_url}/#/models/{quote(model)}/versions/{version}"


def evidently_report(settings: Settings, project_id: str, snapshot_id: str) -> str:
    return f"{settings.evidently_public_url}/projects/{project_id}/reports/{snapshot_id}"


def airflow_dag_run(settings: Settings, dag_id: str, run_id: str) -> str:
    return f"{settings.airflow_public_url}/dags/{dag_id}/runs/{quote(run_id, safe='')}"


def airflow_task(settings: Settings, dag_id: str, run_id: str, task_id: str) -> str:
    return f"{airflow_dag_run(settings, dag_id, run_id)}/tasks/{task_id}"


def view(settings: Settings, usecase: str | None = None) -> str:
    """The closedloop view of a use case (all of them without one)."""
    suffix = f"/usecases/{quote(usecase)}" if usecase else "/"
    return f"{settings.airflow_public_url}{APP_PREFIX}{suffix}"


def _areas(settings: Settings) -> dict[str, Path]:
    """The folders whose files the app serves, by the name that starts their URL."""
    return {
        "quarantine": settings.quarantine_dir,
        "gx": settings.gx_dir,
        "reports": settings.reports_dir,
    }


def file_url(settings: Settings, path: Path | str) -> str:
    """The URL of a served file; ValueError for a file outside the served folders."""
    path = Path(path).resolve()
    for area, root in _areas(settings).items():
        root = root.resolve()
        if path.is_relative_to(root):
            relative = path.relative_to(root).as_posix()
            name = quote(settings.usecase.name)
            return f"{settings.airflow_public_url}{FILES_PREFIX}/{name}/{area}/{quote(relative)}"
    raise ValueError(f"{path} is in none of the served folders {sorted(_areas(settings))}")


def resolve_file(settings: Settings, area: str, relative: str) -> Path:
    """The file a served URL names, for the use case of ``settings``; LookupError for an
    unknown area, a path that leaves its folder, or a file that does not exist."""
    roots = _areas(settings)
    if area not in roots:
        raise LookupError(f"no area {area!r}; one of {sorted(roots)}")
    root = roots[area].resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise LookupError(f"no file {relative!r} in {area}")
    return path
