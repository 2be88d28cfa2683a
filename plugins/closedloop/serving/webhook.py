"""Hot swap by MLflow webhook: the registry tells the service that an alias moved.

``closedloop serve --webhook-url URL`` registers (or updates) one webhook on the MLflow
tracking server (:func:`register`, through MLflow's own client), for the events
``model_version_alias.created`` and ``.deleted``, signed with the secret in
``CLOSEDLOOP_SERVE_WEBHOOK_SECRET``. The server posts each event to ``POST
/webhooks/mlflow``; :func:`verify` checks it the way MLflow signs it (HMAC-SHA256 of
``<delivery id>.<timestamp>.<body>``, base64, ``v1,`` prefix; MLflow ships the signing
side only), refuses an old timestamp or a delivery seen before, and an event of the
service's model wakes the model follower, which reads the aliases and swaps within
about 100 ms. The follower's poll stays as the fallback for a lost delivery.

Webhooks are delivered by the MLflow server process (the production profile); the
embedded profile has no server and keeps polling.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    from closedloop.core.settings import Settings

#: the variable holding the webhook's signing secret (the server and the service share it)
SECRET_ENV = "CLOSEDLOOP_SERVE_WEBHOOK_SECRET"
MIN_SECRET_CHARS = 32
#: the route MLflow posts to
PATH = "/webhooks/mlflow"
EVENTS = ("model_version_alias.created", "model_version_alias.deleted")
#: an alias event is a few hundred bytes
MAX_BODY_BYTES = 65_536
#: an event older (or further in the future) than this is refused: a replay
MAX_AGE_S = 300
#: MLflow's headers (mlflow.webhooks.constants)
SIGNATURE, TIMESTAMP, DELIVERY = "x-mlflow-signature", "x-mlflow-timestamp", "x-mlflow-delivery-id"


class Refused(ValueError):
    """A delivery that is not MLflow's, or not a fresh one; the message says why."""


def secret_from_environ(environ: Mapping[str, str]) -> str:
    secret = environ.get(SECRET_ENV, "")
    if len(secret) < MIN_SECRET_CHARS:
        raise ValueError(f"{SECRET_ENV} is missing or shorter than {MIN_SECRET_CHARS} characters")
    return secret


def signature(secret: str, delivery: str, timestamp: str, body: bytes) -> str:
    """What MLflow puts in ``X-MLflow-Signature`` for this delivery."""
    signed = f"{delivery}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class Verifier:
    """Checks deliveries: the signature, the timestamp's age, and that a delivery id is
    not used twice (the last 1,000 are kept: within ``MAX_AGE_S`` a replay is refused)."""

    def __init__(self, secret: str, *, max_age_s: float = MAX_AGE_S) -> None:
        self.secret, self.max_age_s = secret, max_age_s
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def verify(
        self, headers: Mapping[str, str], body: bytes, now: float | None = None
    ) -> dict[str, Any]:
        """The delivery's JSON payload, or :class:`Refused` naming what is wrong."""
        given = headers.get(SIGNATURE, "")
        timestamp = headers.get(TIMESTAMP, "")
        delivery = headers.get(DELIVERY, "")
        if not (given and timestamp and delivery):
            raise Refused("not a signed MLflow webhook delivery")
        expected = signature(self.secret, delivery, timestamp, body)
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise Refused("the signature does not match")
        try:
            age = (time.time() if now is None else now) - int(timestamp)
        except ValueError:
            raise Refused("the timestamp is not a number") from None
        if abs(age) > self.max_age_s:
            raise Refused(f"the delivery is {age:.0f} s old")
        with self._lock:
            if delivery in self._seen:
                raise Refused("this delivery was received before")
            self._seen[delivery] = None
            while len(self._seen) > 1000:
                self._seen.popitem(last=False)
        try:
            payload = json.loads(body)
        except ValueError:
            raise Refused("the body is not JSON") from None
        if not isinstance(payload, dict):
            raise Refused("the body is not a JSON object")
        return payload


def concerns(payload: dict[str, Any], model: str) -> bool:
    """Whether a verified event moved an alias of ``model``."""
    data = payload.get("data") or {}
    return payload.get("entity") == "model_version_alias" and data.get("name") == model


def webhook_name(settings: Settings, url: str) -> str:
    """One webhook per model and receiving URL (two services of one model: two)."""
    return f"closedloop-serve-{settings.model_name}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


def register(settings: Settings, url: str, secret: str) -> tuple[str, str]:
    """Create, or bring up to date, the webhook that posts the model's alias moves to
    ``url``; returns its id and what was done. Needs the rights to manage webhooks on
    the MLflow server (its admin, in the production profile)."""
    from closedloop.core.registry import client_for

    client = client_for(settings)
    name = webhook_name(settings, url)
    token = None
    while True:
        page = client.list_webhooks(max_results=100, page_token=token)
        found = next((hook for hook in page if hook.name == name), None)
        token = page.token
        if found is not None or not token:
            break
    description = f"closedloop serve of {settings.model_name}: hot swap on alias moves"
    if found is None:
        hook = client.create_webhook(name=name, url=url, events=list(EVENTS),
                                     description=description, secret=secret)  # fmt: skip
        return hook.webhook_id, "created"
    # the secret cannot be read back: it is written again, with the rest
    client.update_webhook(found.webhook_id, url=url, events=list(EVENTS), secret=secret,
                          description=description, status="ACTIVE")  # fmt: skip
    return found.webhook_id, "updated"
