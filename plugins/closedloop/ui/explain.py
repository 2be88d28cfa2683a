"""The closedloop view's page of one prediction walked back to its origins
(:func:`closedloop.core.explain.explain`): ``/explain/{prediction_id}?usecase=NAME``,
and ``/explain?usecase=NAME&prediction_id=ID``, where the use case page's form sends
its id (a form without a script cannot write the id into the path), redirecting there.

Inside Airflow's API server, the features run of an interval is looked up in Airflow's
metadata DB (its data interval's start); routes are authenticated as the app's others.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from urllib.parse import quote

from fastapi import HTTPException
from fastapi.responses import RedirectResponse

from closedloop.core import links
from closedloop.ui import render

log = logging.getLogger(__name__)


def form(usecase: str, prediction_id: str) -> RedirectResponse:
    """The use case page's form: on to the explanation's own URL."""
    target = f"{links.APP_PREFIX}/explain/{quote(prediction_id.strip(), safe='')}"
    return RedirectResponse(f"{target}?usecase={quote(usecase)}", status_code=303)


def page(prediction_id: str, usecase: str) -> str:
    from closedloop.core.explain import UnknownPredictionError, explain
    from closedloop.ui.app import _settings

    settings = _settings(usecase)
    try:
        found = explain(settings, prediction_id, find_run=interval_run)
    except UnknownPredictionError as exc:
        raise HTTPException(404, str(exc)) from None
    return render.page(
        "explain.html", prefix=links.APP_PREFIX, usecase=usecase, e=found, text=found.text()
    )


def interval_run(dag_id: str, start: datetime) -> str | None:
    """The newest run of ``dag_id`` for the data interval starting at ``start``."""
    import sqlalchemy as sa
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    try:
        with create_session() as session:
            return session.scalar(
                sa.select(DagRun.run_id)
                .where(DagRun.dag_id == dag_id, DagRun.data_interval_start == start.astimezone(UTC))
                .order_by(DagRun.id.desc())
                .limit(1)
            )
    except Exception:  # the page still shows the id the schedule gives the interval
        log.exception("closedloop view: looking up the run of %s at %s", dag_id, start)
        return None
