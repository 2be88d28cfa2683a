"""The FastAPI application beside the hand-written ``POST /predict``: start-up and
shutdown (lifespan), the API key middleware, ``/health``, ``/ready``, ``/metrics``, the
OpenAPI docs (with the declared event as the request body) and ``/predict``'s
declaration for them."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import sys
from typing import TYPE_CHECKING, Any

import prometheus_client
from fastapi import FastAPI, Request, Response

from closedloop.serving import webhook
from closedloop.serving.handler import KEY_REFUSED, PredictHandler, given_key, key_forbidden
from closedloop.serving.metrics import multiprocess
from closedloop.serving.schema import response_model

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from closedloop.core.settings import Settings
    from closedloop.serving.service import ServeConfig, Service

#: answered without the API key: an orchestrator's liveness and readiness probes
OPEN_PATHS = frozenset({"/health", "/ready"})
SWITCH_INTERVAL_S = float(os.environ.get("CLOSEDLOOP_SERVE_SWITCH_INTERVAL", "0.0005"))


def build_api(
    settings: Settings, service: Service, handler: PredictHandler, config: ServeConfig
) -> FastAPI:
    """The FastAPI application of ``service``; models and stores load at start-up."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(service.start)
        # What start-up loaded (Feast, MLflow, scikit-learn, the models) lives as long
        # as the process: out of the collector's reach, a full collection no longer
        # walks it in the middle of a request.
        gc.collect()
        gc.freeze()
        # The scoring, log-writing and registry-polling threads share the GIL with the
        # event loop; a thread running Python keeps it for up to the switch interval
        # (5 ms by default) while a request waits. 0.5 ms caps that wait.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        yield
        await asyncio.to_thread(service.stop)
        if multiprocess():  # this worker's live gauges leave /metrics with it
            from prometheus_client import multiprocess as mp

            mp.mark_process_dead(os.getpid())

    app = FastAPI(
        title="closedloop online serving",
        description=f"Predictions of {settings.usecase.name}: {settings.usecase.description}",
        lifespan=lifespan,
    )
    app.state.service = service
    m = service.metrics

    def _json(status: int, payload: Any) -> Response:
        return Response(json.dumps(payload), status_code=status, media_type="application/json")

    async def require_api_key(request: Request, call_next: Any) -> Response:
        # FastAPI's security classes document a key, they do not check it for every
        # route but two: a small middleware does, in constant time.
        path = request.url.path
        if path in OPEN_PATHS or (config.webhook and path == webhook.PATH):
            return await call_next(request)  # the webhook: its signature, checked below
        scope = "metrics" if path == "/metrics" else "explain" if path.startswith(
            "/explain/") else None  # fmt: skip
        refused = handler.access(given_key({k: v for k, v in request.headers.raw}), scope)
        if refused == 401:
            handler.count(path, 401)
            return Response(
                json.dumps({"detail": [KEY_REFUSED]}),
                status_code=401,
                media_type="application/json",
                headers={"WWW-Authenticate": "ApiKey"},
            )
        if refused == 403:
            handler.count(path, 403)
            return Response(key_forbidden(path), status_code=403, media_type="application/json")
        return await call_next(request)

    if handler.keys is not None:  # without a key, no middleware and its cost per request
        app.middleware("http")(require_api_key)

    @app.post(
        "/predict",
        response_model=response_model(settings.usecase),
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
            "schema": {"description": "one event, or a list of events "
                       f"(at most {config.max_events})"}}}}},
        responses={
            400: {"description": "the body is not JSON"},
            401: {"description": "missing or wrong API key (when the service has one)"},
            404: {"description": "an entity without online aggregates or their defaults"},
            413: {"description": "too many events or too large a body"},
            422: {"description": "a field is missing, unknown, of the wrong type or out of range"},
            503: {"description": "not ready, or the feature store failed"},
        },
    )  # fmt: skip
    async def predict(request: Request) -> Response:
        """Score events when they happen: the event's declared columns in; its derived
        features computed, its entities' aggregates from Feast's online store; the
        champion's (or the A/B challenger's) probability, decision and version out.
        (Answered by :class:`~closedloop.serving.handler.ServingApp`; declared here
        for the docs.)"""
        status, payload, extra = await handler.answer(
            dict(request.headers.raw), await request.body()
        )
        return Response(payload, status, {k.decode(): v.decode() for k, v in extra},
                        media_type="application/json")  # fmt: skip

    if config.webhook:
        verifier = webhook.Verifier(webhook.secret_from_environ(os.environ))

        @app.post(
            webhook.PATH,
            responses={401: {"description": "not signed with the webhook's secret, "
                             "too old, or delivered before"}},
        )  # fmt: skip
        async def mlflow_webhook(request: Request) -> Response:
            """MLflow's ``model_version_alias`` events (``closedloop serve --webhook-url``),
            authenticated by their HMAC signature: an alias of the served model moved,
            so the model follower looks at the registry now."""
            body = await request.body()
            if len(body) > webhook.MAX_BODY_BYTES:
                m.webhooks.labels("refused").inc()
                return _json(413, {"detail": f"at most {webhook.MAX_BODY_BYTES} bytes"})
            try:
                payload = verifier.verify(request.headers, body)
            except webhook.Refused as exc:
                m.webhooks.labels("refused").inc()
                return _json(401, {"detail": str(exc)})
            moved = webhook.concerns(payload, settings.model_name)
            if moved and service.follower is not None:
                service.follower.wake()
            m.webhooks.labels("swap" if moved else "other").inc()
            return _json(200, {"accepted": moved})

    @app.get("/health")
    async def health() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/ready", responses={503: {"description": "models or feature store not loaded"}})
    async def ready() -> Response:
        """Models and feature store loaded; which versions serve; the registry's state."""
        follower = service.follower
        deployment = follower.deployment if follower else None
        body = {
            "ready": deployment is not None and service.batcher is not None,
            "models": deployment.versions() if deployment else {},
            "challenger_share": config.challenger_share,
            "shadow": config.shadow,
            "registry_ok": follower.status["registry_ok"] if follower else None,
            "last_error": (follower.status["last_error"] if follower else None) or service.error,
            "prediction_log_pending": service.writer.pending if service.writer else 0,
            "request_fields": service.fields,
            "worker_pid": os.getpid(),  # which process answered (``--workers``)
        }
        return _json(200 if body["ready"] else 503, body)

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics: requests, latency histograms, predictions per version."""
        if service.writer is not None:  # this worker's; the others' as of their flushes
            m.log_pending.set(service.writer.pending)
        # This worker's from its follower's status now (it may have changed since its
        # last poll event was counted); the other workers' as of their last poll.
        if service.follower is not None and service.follower.status["registry_ok"] is not None:
            m.registry_up.set(1 if service.follower.status["registry_ok"] else 0)
        return Response(m.exposition(), media_type=prometheus_client.CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, with the request body the use case and model define (known
        once the model has loaded: the body is validated by hand, see ``PredictHandler``)."""
        if app.openapi_schema is not None:
            return app.openapi_schema
        from fastapi.openapi.utils import get_openapi

        spec = get_openapi(title=app.title, version=app.version, description=app.description,
                           routes=app.routes)  # fmt: skip
        if service.event is not None:
            one = service.event.model_json_schema()
            many = {"type": "array", "items": one, "minItems": 1, "maxItems": config.max_events}
            body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
            body["schema"] = {"anyOf": [one, many], "description": body["schema"]["description"]}
            app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
    return app
