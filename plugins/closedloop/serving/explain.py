"""``GET /explain/{prediction_id}``: a logged prediction walked back to its origins
(:func:`closedloop.core.explain.explain`), as JSON; 404 naming an id the log lacks.

Behind the same API key as ``/predict`` and ``/metrics`` (the middleware of
:mod:`closedloop.serving.api` covers every route but ``/health`` and ``/ready``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi.responses import JSONResponse

if TYPE_CHECKING:
    from fastapi import FastAPI

    from closedloop.core.settings import Settings


def add_explain_route(app: FastAPI, settings: Settings) -> None:
    """Declare ``GET /explain/{prediction_id}`` on the serving API ``app``."""

    # a plain function: FastAPI runs it in its thread pool, off the event loop that
    # answers /predict (the walk reads files, MLflow and the ledger)
    @app.get(
        "/explain/{prediction_id:path}",
        responses={
            401: {"description": "missing or wrong API key (when the service has one)"},
            404: {"description": "no prediction with this id in the prediction log"},
        },
    )
    def explain(prediction_id: str) -> Any:
        """One prediction walked back: logged features and defaults, model version and
        alias, training run, DAG runs, features runs, contributions, ground truth."""
        from closedloop.core.explain import UnknownPredictionError
        from closedloop.core.explain import explain as walk

        try:
            return walk(settings, prediction_id).to_dict()
        except UnknownPredictionError as exc:
            return JSONResponse({"detail": [str(exc)]}, status_code=404)
