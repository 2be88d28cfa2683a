"""The HTTP service: ``POST /predict``, ``GET /health``, ``GET /ready``, ``GET /metrics``
and the OpenAPI docs at ``/docs``.

One process per worker (``closedloop serve --workers N``). On the event loop,
``POST /predict`` (:class:`ServingApp`, ahead of FastAPI's stack) and the
:class:`Batcher`, which looks up and scores every request ready at a moment in one Feast
call and one ``predict_proba`` per arm; beside it, the model follower (hot swap,
:mod:`closedloop.serving.follower`) and the prediction-log writer
(:mod:`closedloop.serving.logwriter`). Shutdown stops taking requests, finishes those in
flight and flushes the log. With several workers, /metrics adds up per-process files.
Why it freezes the GC and shortens the GIL switch interval at start-up: docs/design.md.
"""

from __future__ import annotations

# prometheus_client decides at import whether metric values live in per-process files:
# it checks PROMETHEUS_MULTIPROC_DIR, which `feast.metrics` sets when Feast first reads
# the online store. Imported first, our metrics stay in memory when one process serves;
# with `closedloop serve --workers N` the command sets the directory before the workers
# start, and /metrics adds up the workers' files.
import prometheus_client  # isort: skip

import asyncio
import contextlib
import gc
import json
import logging
import os
import secrets
import sys
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Response
from pydantic import TypeAdapter, ValidationError

from closedloop.serving.schema import describe_errors, event_model, response_model

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from closedloop.core.settings import Settings

log = logging.getLogger(__name__)


#: answered without the API key: an orchestrator's liveness and readiness probes
OPEN_PATHS = frozenset({"/health", "/ready"})
SWITCH_INTERVAL_S = float(os.environ.get("CLOSEDLOOP_SERVE_SWITCH_INTERVAL", "0.0005"))
KEY_REFUSED = "missing or wrong API key (send it as X-API-Key)"
KEY_REFUSED_BODY = json.dumps({"detail": [KEY_REFUSED]}).encode()


@dataclass(frozen=True)
class ServeConfig:
    """How the service runs (``closedloop serve`` options)."""

    challenger_share: float = 0.0  # share of keys sent to the challenger (A/B); 0 = off
    poll_seconds: float = 5.0  # how often the registry's aliases are checked
    max_events: int = 100  # per request; more is a 413
    max_rows: int = 256  # per scoring call of the batcher
    max_body_bytes: int = 1_000_000
    log_flush_seconds: float = 1.0
    log_max_records: int = 5000
    #: when set, /predict, /metrics and the docs want it in an ``X-API-Key`` header (or
    #: ``Authorization: Bearer``); /health and /ready stay open for health checks
    api_key: str | None = None

    def to_environ(self) -> str:
        """The options for worker processes (JSON, without the API key: that stays in
        ``CLOSEDLOOP_SERVE_API_KEY``)."""
        return json.dumps({k: v for k, v in asdict(self).items() if k != "api_key"})


#: the environment variable that carries :class:`ServeConfig` to worker processes
CONFIG_ENV = "CLOSEDLOOP_SERVE_CONFIG"


#: set by ``closedloop serve --workers N`` (N > 1) for its workers: the directory of their
#: metric files, the same as PROMETHEUS_MULTIPROC_DIR
WORKERS_METRICS_ENV = "CLOSEDLOOP_SERVE_WORKERS_METRICS"


def multiprocess() -> bool:
    """Whether this process is one of several workers whose metrics /metrics adds up
    (``--workers`` > 1). Not prometheus_client's own mode: a lone server can inherit
    PROMETHEUS_MULTIPROC_DIR (Feast sets it in any process that imports it, e.g. the one
    that starts the server); its values then go to files in a directory other processes
    share, and only its own registry says what it did."""
    return bool(os.environ.get(WORKERS_METRICS_ENV))


class Metrics:
    """The service's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        buckets = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0)
        self.requests = Counter(
            "closedloop_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "closedloop_request_latency_seconds", "Time in the handler, by endpoint",
            ["endpoint"], buckets=buckets, registry=r,
        )  # fmt: skip
        self.predict_latency = Histogram(
            "closedloop_predict_latency_seconds", "Answered /predict calls by model version",
            ["model_version"], buckets=buckets, registry=r,
        )  # fmt: skip
        self.predictions = Counter(
            "closedloop_predictions", "Predictions by model version and A/B arm",
            ["model_version", "arm"], registry=r,
        )  # fmt: skip
        self.batch_rows = Histogram(
            "closedloop_scoring_batch_rows", "Bookings per lookup+predict call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r,
        )  # fmt: skip
        # multiprocess_mode: how /metrics combines the workers' values (``--workers``)
        self.serving = Gauge(
            "closedloop_serving_model_version", "1 for the version each alias serves",
            ["alias", "version"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.swaps = Counter("closedloop_model_swaps", "Hot swaps", ["alias"], registry=r)
        self.failures = Counter(
            "closedloop_model_reload_failures", "Failed registry polls or model loads",
            registry=r,
        )  # fmt: skip
        self.registry_up = Gauge(
            "closedloop_registry_up", "1 if the last registry poll succeeded", registry=r,
            multiprocess_mode="livemin",
        )  # fmt: skip
        self.log_records = Counter(
            "closedloop_prediction_log_records", "Prediction records flushed",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.log_pending = Gauge(
            "closedloop_prediction_log_pending", "Records not yet written", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip

    def exposition(self) -> bytes:
        """The text /metrics answers: this process's registry, or every worker's values
        when the metrics live in files."""
        if not multiprocess():
            return prometheus_client.generate_latest(self.registry)
        from prometheus_client import CollectorRegistry
        from prometheus_client import multiprocess as mp

        combined = CollectorRegistry()
        mp.MultiProcessCollector(combined)
        return prometheus_client.generate_latest(combined)


class Batcher:
    """Scores on the event loop's thread, in one call, the requests that are ready
    together (see the module).

    :meth:`submit_async` queues a request's events and, unless it is scheduled already,
    schedules the scoring call with ``call_soon``: it runs after the other requests the
    loop has ready at that moment, which have queued theirs by then. A lone request
    waits for nothing; under load one call serves every request that arrived while the
    previous call ran. No thread: an answer waits for no hand-over between threads,
    and the loop and a scoring thread no longer take the GIL from each other."""

    def __init__(self, score: Any, max_rows: int) -> None:
        self.score = score  # list[event] -> list[result]
        self.max_rows = max_rows
        self._pending: list[tuple[list[dict[str, Any]], asyncio.Future]] = []
        self._scheduled = False

    def submit_async(self, events: list[dict[str, Any]]) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((events, future))
        if not self._scheduled:
            # after the other requests the loop has ready now, which join this call
            self._scheduled = True
            loop.call_soon(self._drain)
        return future

    def _drain(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        group: list[tuple[list[dict[str, Any]], asyncio.Future]] = []
        rows = 0
        for item in pending:
            if group and rows + len(item[0]) > self.max_rows:
                self._score(group)
                group, rows = [], 0
            group.append(item)
            rows += len(item[0])
        if group:
            self._score(group)

    def _score(self, items: list[tuple[list[dict[str, Any]], asyncio.Future]]) -> None:
        try:
            results = self.score([e for events, _ in items for e in events])
        except Exception as exc:
            log.exception("scoring failed")
            for _, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        at = 0
        for events, future in items:
            if not future.done():
                future.set_result(results[at : at + len(events)])
            at += len(events)


class Service:
    """The state behind the endpoints: store, scorer, follower, batcher, log writer."""

    def __init__(self, settings: Settings, config: ServeConfig) -> None:
        self.settings, self.config = settings, config
        self.metrics = Metrics()
        self.scorer: Any = None
        self.follower: Any = None
        self.batcher: Batcher | None = None
        self.writer: Any = None
        self.adapter: TypeAdapter | None = None
        self.event: Any = None
        self.fields: list[str] = []
        self.error: str | None = None
        self._probe: dict[str, Any] | None = None
        self._serving_labels: list[tuple[str, str]] = []

    # -- life cycle -----------------------------------------------------------------
    def start(self) -> None:
        from closedloop.core.feature_store import open_store
        from closedloop.core.prediction_log import PredictionLog
        from closedloop.serving.follower import ModelFollower
        from closedloop.serving.logwriter import PredictionLogWriter
        from closedloop.serving.scorer import OnlineScorer

        self.writer = PredictionLogWriter(
            PredictionLog(self.settings.prediction_log_dir),
            max_records=self.config.log_max_records,
            flush_seconds=self.config.log_flush_seconds,
            on_flush=self._flushed,
        )
        self.follower = ModelFollower(
            self.settings,
            challenger_share=self.config.challenger_share,
            poll_seconds=self.config.poll_seconds,
            accept=self._accept,
            on_event=self._event,
        )
        deployment = self.follower.load_initial()  # no champion: the clearest error first
        self.scorer = OnlineScorer(self.settings, open_store(self.settings))
        for model in (deployment.champion, deployment.challenger):
            if model is not None:
                self._accept(model)
        self.fields = self.scorer.fields
        self.event = event_model(self.settings.usecase)
        self.adapter = TypeAdapter(list[self.event])
        self._published(deployment)
        self.metrics.registry_up.set(1)  # the registry answered the initial load
        self.batcher = Batcher(self._score, self.config.max_rows)
        self.follower.start()

    def stop(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        if self.writer is not None:
            self.writer.close()

    # -- model follower hooks ---------------------------------------------------------
    def _accept(self, model: Any) -> None:
        """Refuse a model the service cannot feed; score a probe event with it."""
        if self.scorer is None:
            return
        missing = [c for c in model.feature_names if c not in self.scorer.provided]
        if missing:
            raise ValueError(
                f"{model.name} v{model.version} reads {missing}, which neither this "
                "service's requests, their derived features nor its online store provide"
            )
        if self._probe is not None:
            import pandas as pd

            model.model.predict_proba(pd.DataFrame([self._probe])[model.feature_names])

    def _flushed(self, records: int, ok: bool) -> None:
        self.metrics.log_records.labels("written" if ok else "failed").inc(records)
        self.metrics.log_pending.set(self.writer.pending)

    def _event(self, kind: str, detail: str) -> None:
        m = self.metrics
        if kind == "poll":  # set by every worker's own poll (--workers: /metrics combines)
            m.registry_up.set(1 if detail == "ok" else 0)
        elif kind == "failure":
            m.failures.inc()
        else:
            m.swaps.labels(detail).inc()
            self._published(self.follower.deployment)

    def _published(self, deployment: Any) -> None:
        # remove() rather than clear(): clear() warns whenever Feast has set
        # PROMETHEUS_MULTIPROC_DIR, although our values live in memory (see the imports).
        # Set to 0 first: a worker's file keeps a removed series' last value.
        for labels in self._serving_labels:
            self.metrics.serving.labels(*labels).set(0)
            self.metrics.serving.remove(*labels)
        self._serving_labels = list(deployment.versions().items())
        for alias, version in self._serving_labels:
            self.metrics.serving.labels(alias, version).set(1)

    # -- scoring (on the batcher's thread) -------------------------------------------
    def _score(self, events: list[dict[str, Any]]) -> list[Any]:
        results = self.scorer.score(self.follower.deployment, events)
        self.metrics.batch_rows.observe(len(events))
        if self._probe is None:
            self._probe = next((r["_record"] for r in results if isinstance(r, dict)), None)
        return results


class ServingApp:
    """The ASGI application ``closedloop serve`` runs: ``POST /predict`` is answered
    here, everything else (health, readiness, metrics, the docs, other methods) by the
    FastAPI application ``api``, which also declares ``/predict`` for the OpenAPI docs.

    Why by hand: under load the event loop's thread spent 60 % of its time in
    Starlette's middleware stack, router and FastAPI's request wrappers around the
    endpoint, and that thread shares the GIL with the scoring thread — the server's
    throughput is their sum. This is the same ASGI exchange without the layers: the
    body read with a size limit, the API key checked, one JSON answer; an exception
    is logged and answered 500, as Starlette's error middleware does.
    """

    def __init__(self, api: FastAPI, answer: Any, count: Any, max_body_bytes: int) -> None:
        self.api, self.answer, self.count = api, answer, count
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/predict" or scope["method"] != "POST":
            await self.api(scope, receive, send)
            return
        headers = dict(scope["headers"])
        size = headers.get(b"content-length", b"")
        if size.isdigit() and int(size) > self.max_body_bytes:
            status, payload, extra = self._refusal(413, f"body of {int(size)} bytes, at most "
                                                   f"{self.max_body_bytes}")  # fmt: skip
        else:
            body, more = b"", True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > self.max_body_bytes:
                    break
            if len(body) > self.max_body_bytes:
                status, payload, extra = self._refusal(
                    413, f"body larger than {self.max_body_bytes} bytes"
                )
            else:
                try:
                    status, payload, extra = await self.answer(headers, body)
                except Exception:
                    log.exception("POST /predict failed")
                    status, payload, extra = self._refusal(500, "internal error (see the log)")
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    def _refusal(self, status: int, message: str) -> tuple[int, bytes, list]:
        """A refusal made here, before ``answer`` (which counts its own)."""
        self.count("/predict", status)
        return status, json.dumps({"detail": [message]}).encode(), []


def _given_key(headers: dict[bytes, bytes]) -> bytes | None:
    """The API key a request carries (``X-API-Key`` or ``Authorization: Bearer``)."""
    given = headers.get(b"x-api-key")
    bearer = headers.get(b"authorization", b"")
    if given is None and bearer[:7].lower() == b"bearer ":
        given = bearer[7:].strip()
    return given


def create_app(settings: Settings, config: ServeConfig | None = None) -> ServingApp:
    """The ASGI application (:class:`ServingApp` over FastAPI); models and stores load
    at start-up (lifespan)."""
    config = config or ServeConfig()
    service = Service(settings, config)

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
    key = config.api_key.encode() if config.api_key is not None else None
    counted: dict[tuple[str, int], Any] = {}  # metric children by label, made once

    def _count(path: str, status: int) -> None:
        child = counted.get((path, status))
        if child is None:
            child = counted[(path, status)] = m.requests.labels(path, str(status))
        child.inc()

    def _json(status: int, payload: Any) -> Response:
        return Response(json.dumps(payload), status_code=status, media_type="application/json")

    def _key_refused(given: bytes | None) -> bool:
        return key is not None and (given is None or not secrets.compare_digest(given, key))

    async def require_api_key(request: Request, call_next: Any) -> Response:
        # FastAPI's security classes document a key, they do not check it for every
        # route but two: a small middleware does, in constant time.
        if request.url.path in OPEN_PATHS:
            return await call_next(request)
        if _key_refused(_given_key({k: v for k, v in request.headers.raw})):
            _count(request.url.path, 401)
            return Response(
                json.dumps({"detail": [KEY_REFUSED]}),
                status_code=401,
                media_type="application/json",
                headers={"WWW-Authenticate": "ApiKey"},
            )
        return await call_next(request)

    if key is not None:  # without a key, no middleware and its cost per request
        app.middleware("http")(require_api_key)

    async def answer(headers: dict[bytes, bytes], body: bytes) -> tuple[int, bytes, list]:
        """``POST /predict``: (status, JSON body, extra headers), counted and timed."""
        began = time.perf_counter()
        if _key_refused(_given_key(headers)):
            status, payload, extra = 401, KEY_REFUSED_BODY, [(b"www-authenticate", b"ApiKey")]
        else:
            status, payload = await _predict(body)
            extra = []
        _count("/predict", status)
        m.latency.labels("/predict").observe(time.perf_counter() - began)
        return status, payload, extra

    async def _predict(body: bytes) -> tuple[int, bytes]:
        def refuse(status: int, *messages: str) -> tuple[int, bytes]:
            return status, json.dumps({"detail": list(messages)}).encode()

        if service.batcher is None or service.adapter is None:
            return refuse(503, "not ready: models and feature store not loaded")
        try:
            payload = json.loads(body)
        except ValueError as exc:
            return refuse(400, f"the body is not JSON: {exc}")
        single = isinstance(payload, dict)
        items = [payload] if single else payload
        if not isinstance(items, list) or not items:
            return refuse(422, "the body must be an event object or a non-empty list of events")
        if len(items) > config.max_events:
            return refuse(413, f"{len(items)} events in one request, at most "
                               f"{config.max_events}")  # fmt: skip
        try:
            events = service.adapter.validate_python(items)
        except ValidationError as exc:
            return refuse(422, *describe_errors(exc.errors(), single))
        began = time.perf_counter()
        try:
            results = await service.batcher.submit_async([e.model_dump() for e in events])
        except Exception as exc:
            return refuse(503, f"scoring failed: {type(exc).__name__}: {exc}")
        unknown = [str(r) for r in results if isinstance(r, Exception)]
        if unknown:
            return refuse(404, *unknown)
        service.writer.add([r.pop("_record") for r in results])
        for r in results:
            m.predictions.labels(r["model_version"], r["arm"]).inc()
        m.predict_latency.labels(results[0]["model_version"]).observe(time.perf_counter() - began)
        return 200, json.dumps({"predictions": results}).encode()

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
        (Answered by :class:`ServingApp`; declared here for the docs.)"""
        status, payload, extra = await answer(dict(request.headers.raw), await request.body())
        return Response(payload, status, {k.decode(): v.decode() for k, v in extra},
                        media_type="application/json")  # fmt: skip

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
        once the model has loaded: the body is validated by hand, see ``_predict``)."""
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
    return ServingApp(app, answer, _count, config.max_body_bytes)


def app_from_environ() -> ServingApp:
    """The application of one worker process of ``closedloop serve --workers N``
    (uvicorn's factory): settings from the environment as everywhere, the options from
    :data:`CONFIG_ENV`, the API key from ``CLOSEDLOOP_SERVE_API_KEY``."""
    from closedloop.core.settings import load_settings

    options = json.loads(os.environ[CONFIG_ENV])
    config = ServeConfig(**options, api_key=os.environ.get("CLOSEDLOOP_SERVE_API_KEY") or None)
    return create_app(load_settings(), config)
