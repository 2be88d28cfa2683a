"""The closedloop view's FastAPI app, mounted by Airflow's API server at
:data:`~closedloop.core.links.APP_PREFIX`.

Airflow does not authenticate a plugin's app: every route here depends on Airflow's own
``requires_access_dag("GET")`` (a JWT as ``Authorization: Bearer`` or the UI's cookie,
so the view works in the UI's iframe; the run page checks the run's DAG). Anonymous:
401, a user without DAG access: 403.

* ``/`` — the declared use cases; ``/usecases/{name}`` — champion and challenger,
  pending approvals, monitoring (SVG chart), the promotion ledger, links;
* ``/runs/{dag_id}/{run_id}`` — what a DAG run produced (the ``dag_run`` tab);
* ``/files/{usecase}/{area}/{path}`` — a file of the served folders
  (:func:`closedloop.core.links.resolve_file`), 404 for anything else;
* ``/explain/{prediction_id}`` — one prediction walked back (:mod:`closedloop.ui.explain`).
"""

from __future__ import annotations

import logging
from functools import cache
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

from closedloop.core import links
from closedloop.core.settings import load_settings
from closedloop.ui import render, state

if TYPE_CHECKING:
    from collections.abc import Callable

    from closedloop.core.settings import Settings

log = logging.getLogger(__name__)
#: verdicts listed in the table (the chart shows more)
RECENT_VERDICTS = 14


@cache
def app() -> FastAPI:
    from airflow.api_fastapi.core_api.security import requires_access_dag

    view = FastAPI(
        title="closedloop",
        dependencies=[Depends(requires_access_dag("GET"))],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    view.get("/", response_class=HTMLResponse)(index)
    view.get("/usecases/{name}", response_class=HTMLResponse)(usecase)
    view.get("/runs/{dag_id}/{run_id}", response_class=HTMLResponse)(run)
    view.get("/files/{name}/{area}/{path:path}")(files)
    from closedloop.ui import explain  # one prediction walked back (issue 17)

    view.get("/explain")(explain.form)
    view.get("/explain/{prediction_id:path}", response_class=HTMLResponse)(explain.page)
    return view


def _settings(name: str | None = None) -> Settings:
    settings = load_settings()
    if name is None:
        return settings
    if name not in state.usecases(settings):
        raise HTTPException(404, f"no use case {name!r}")
    return settings.for_usecase(name)


def _dags(settings: Settings) -> dict[str, str]:
    base = settings.airflow_public_url
    return {stage: f"{base}/dags/{dag}" for stage, dag in settings.usecase.dag_ids.items()}


def _read(problems: list[str], what: str, read: Callable[[], Any], empty: Any) -> Any:
    """One section's data; a store that fails is named on the page, not a 500."""
    try:
        return read()
    except Exception as exc:
        log.exception("closedloop view: reading %s", what)
        problems.append(f"{what}: {type(exc).__name__}: {exc}")
        return empty


def index() -> str:
    settings = _settings()
    rows = []
    for name in state.usecases(settings):
        uc = settings.for_usecase(name)
        rows.append({"name": name, "model": uc.model_name, "dags": _dags(uc)})
    return render.page(
        "index.html", prefix=links.APP_PREFIX, usecases=rows, folder=settings.usecases_dir
    )


def usecase(name: str) -> str:
    settings = _settings(name)
    problems: list[str] = []
    versions = _read(problems, "the MLflow registry", lambda: state.aliased_versions(settings), [])
    ledger = _read(problems, "the promotion ledger", lambda: state.ledger(settings), [])
    verdicts = _read(problems, "the monitoring verdicts", lambda: state.verdicts(settings), [])
    approvals = _read(
        problems, "Airflow's task instances", lambda: state.pending_approvals(settings), []
    )
    threshold = settings.usecase.model.monitoring.get("drift_share_threshold")
    recent = list(reversed(verdicts[-RECENT_VERDICTS:]))
    verdict_links = {
        v.day: state.derived_links(settings, v.to_dict() | {"trigger_run_id": v.trigger_run_id})
        for v in recent
    }
    return render.page(
        "usecase.html",
        prefix=links.APP_PREFIX,
        name=name,
        model=settings.model_name,
        versions=versions,
        metric_names=state.KEY_METRICS,
        ledger=ledger,
        verdicts=verdicts,
        recent=recent,
        verdict_links=verdict_links,
        chart=render.chart(verdicts, threshold),
        threshold=threshold,
        approvals=approvals,
        problems=problems,
        training_dag=settings.usecase.dag_ids["training"],
        dags=_dags(settings),
        dag_ids=list(settings.usecase.dag_ids.values()),
        mlflow_url=settings.mlflow_public_url,
        evidently_url=settings.evidently_public_url,
    )


def run(dag_id: str, run_id: str) -> str:
    settings = load_settings()
    name = state.usecase_of_dag(settings, dag_id)
    if name is None:
        raise HTTPException(404, f"{dag_id!r} is no DAG of a declared closedloop use case")
    settings = settings.for_usecase(name)
    outputs = state.run_outputs(settings, dag_id, run_id)
    if outputs is None:
        raise HTTPException(404, f"no run {run_id!r} of {dag_id!r}")
    return render.page(
        "run.html",
        prefix=links.APP_PREFIX,
        usecase=name,
        dag_id=dag_id,
        run_id=run_id,
        run_url=links.airflow_dag_run(settings, dag_id, run_id),
        outputs=outputs,
    )


def files(name: str, area: str, path: str) -> FileResponse:
    settings = _settings(name)
    try:
        found = links.resolve_file(settings, area, path)
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from None
    html = found.suffix.lower() in (".html", ".htm")
    return FileResponse(found, media_type="text/html; charset=utf-8" if html else None)
