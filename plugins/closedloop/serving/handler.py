"""``POST /predict`` by hand: the ASGI exchange without Starlette's layers
(:class:`ServingApp`) and the request's answer (:class:`PredictHandler`: API key, JSON,
validation against the declared event, the batcher, the prediction log, the metrics).
Everything else goes to the FastAPI application (:mod:`closedloop.serving.api`)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from closedloop.serving.schema import describe_errors

if TYPE_CHECKING:
    from fastapi import FastAPI

    from closedloop.serving.service import ServeConfig, Service

log = logging.getLogger(__name__)

KEY_REFUSED = "missing or wrong API key (send it as X-API-Key)"
KEY_REFUSED_BODY = json.dumps({"detail": [KEY_REFUSED]}).encode()
#: every endpoint: what ``CLOSEDLOOP_SERVE_API_KEY`` opens
ALL_SCOPES = frozenset({"predict", "metrics", "explain"})


def key_forbidden(scope: str) -> bytes:
    """The 403 body of a known key whose role may not use ``scope``."""
    return json.dumps({"detail": [f"this API key's role may not use {scope}"]}).encode()


def serve_keys(config: ServeConfig) -> dict[bytes, frozenset[str]] | None:
    """SHA-256 of each accepted API key -> the endpoints it opens: the service's own key
    (all of them) and, with ``roles_file``, each declared user's (its role's ``serving``);
    None when there is no key (the service is open, on loopback only). Keys are looked
    up by their digest: a dictionary lookup is not constant-time, a digest the caller
    cannot steer makes that harmless."""
    keys: dict[bytes, frozenset[str]] = {}
    if config.api_key is not None:
        keys[_digest(config.api_key.encode())] = ALL_SCOPES
    if config.roles_file is not None:
        from pathlib import Path

        from closedloop.core.roles import load_roles, serving_keys

        for key, (_, scopes) in serving_keys(load_roles(Path(config.roles_file))).items():
            keys[_digest(key.encode())] = scopes
    return keys or None


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def given_key(headers: dict[bytes, bytes]) -> bytes | None:
    """The API key a request carries (``X-API-Key`` or ``Authorization: Bearer``)."""
    given = headers.get(b"x-api-key")
    bearer = headers.get(b"authorization", b"")
    if given is None and bearer[:7].lower() == b"bearer ":
        given = bearer[7:].strip()
    return given


class PredictHandler:
    """The answer to ``POST /predict``, counted and timed, and the API key check every
    protected endpoint shares."""

    def __init__(self, service: Service, config: ServeConfig) -> None:
        self.service, self.config = service, config
        self.keys = serve_keys(config)
        self._counted: dict[tuple[str, int], Any] = {}  # metric children by label, made once

    def count(self, path: str, status: int) -> None:
        child = self._counted.get((path, status))
        if child is None:
            requests = self.service.metrics.requests
            child = self._counted[(path, status)] = requests.labels(path, str(status))
        child.inc()

    def access(self, given: bytes | None, scope: str | None) -> int | None:
        """None when ``given`` may use ``scope`` (None: any known key will do), else the
        status: 401 for a missing or unknown key, 403 for a key whose role lacks it."""
        if self.keys is None:
            return None
        scopes = self.keys.get(_digest(given)) if given is not None else None
        if scopes is None:
            return 401
        return None if scope is None or scope in scopes else 403

    async def answer(self, headers: dict[bytes, bytes], body: bytes) -> tuple[int, bytes, list]:
        """(status, JSON body, extra headers), counted and timed."""
        began = time.perf_counter()
        refused = self.access(given_key(headers), "predict")
        if refused == 401:
            status, payload, extra = 401, KEY_REFUSED_BODY, [(b"www-authenticate", b"ApiKey")]
        elif refused == 403:
            status, payload, extra = 403, key_forbidden("/predict"), []
        else:
            status, payload = await self._predict(body)
            extra = []
        self.count("/predict", status)
        self.service.metrics.latency.labels("/predict").observe(time.perf_counter() - began)
        return status, payload, extra

    async def _predict(self, body: bytes) -> tuple[int, bytes]:
        service, config, m = self.service, self.config, self.service.metrics

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
