"""The HTTP service ``closedloop serve`` runs: ``POST /predict``, ``GET /health``,
``GET /ready``, ``GET /metrics``, ``GET /explain/{id}`` and the OpenAPI docs at ``/docs``.

One process per worker (``closedloop serve --workers N``). :func:`create_app` wires the
parts: the :class:`~closedloop.serving.service.Service` (store, scorer, model follower
for hot swaps, batcher, prediction-log writer), the hand-written ``POST /predict``
(:mod:`closedloop.serving.handler`) and the FastAPI application for everything else
(:mod:`closedloop.serving.api`). Shutdown stops taking requests, finishes those in
flight and flushes the log. Why it freezes the GC and shortens the GIL switch interval
at start-up: docs/design.md.
"""

from __future__ import annotations

# metrics first: prometheus_client decides at import where metric values live (see there)
from closedloop.serving.metrics import WORKERS_METRICS_ENV  # isort: skip

import json
import os
from typing import TYPE_CHECKING

from closedloop.serving.api import build_api
from closedloop.serving.explain import add_explain_route
from closedloop.serving.handler import PredictHandler, ServingApp
from closedloop.serving.service import CONFIG_ENV, ServeConfig, Service

if TYPE_CHECKING:
    from closedloop.core.settings import Settings

__all__ = ["CONFIG_ENV", "WORKERS_METRICS_ENV", "ServeConfig", "app_from_environ", "create_app"]


def create_app(settings: Settings, config: ServeConfig | None = None) -> ServingApp:
    """The ASGI application: :class:`ServingApp` answering ``POST /predict`` over the
    FastAPI application; models and stores load at start-up (lifespan)."""
    config = config or ServeConfig()
    service = Service(settings, config)
    handler = PredictHandler(service, config)
    api = build_api(settings, service, handler, config)
    add_explain_route(api, settings)  # GET /explain/{id}, behind the same API key
    return ServingApp(api, handler.answer, handler.count, config.max_body_bytes)


def app_from_environ() -> ServingApp:
    """The application of one worker process of ``closedloop serve --workers N``
    (uvicorn's factory): settings from the environment as everywhere, the options from
    :data:`CONFIG_ENV`, the API key from ``CLOSEDLOOP_SERVE_API_KEY``."""
    from closedloop.core.settings import load_settings

    options = json.loads(os.environ[CONFIG_ENV])
    config = ServeConfig(**options, api_key=os.environ.get("CLOSEDLOOP_SERVE_API_KEY") or None)
    return create_app(load_settings(), config)
