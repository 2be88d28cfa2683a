"""The service's check of MLflow webhook deliveries: a delivery signed the way MLflow's
own sender signs it passes, anything else is refused with the reason."""

from __future__ import annotations

import json
import time

import pytest

from closedloop.serving import webhook

SECRET = "s" * 40
EVENT = {"name": "m", "alias": "champion", "version": "3"}
BODY = json.dumps({"entity": "model_version_alias", "action": "created", "data": EVENT}).encode()


def _headers(secret: str = SECRET, stamp: str | None = None, delivery: str = "d-1") -> dict:
    from mlflow.webhooks.delivery import _generate_hmac_signature  # what MLflow sends

    stamp = stamp or str(int(time.time()))
    return {
        webhook.DELIVERY: delivery,
        webhook.TIMESTAMP: stamp,
        webhook.SIGNATURE: _generate_hmac_signature(secret, delivery, stamp, BODY.decode()),
    }


def test_a_delivery_signed_as_mlflow_signs_passes_once():
    verifier = webhook.Verifier(SECRET)
    headers = _headers()
    assert (
        webhook.signature(SECRET, "d-1", headers[webhook.TIMESTAMP], BODY)
        == headers[webhook.SIGNATURE]
    )
    payload = verifier.verify(headers, BODY)
    assert webhook.concerns(payload, "m") and not webhook.concerns(payload, "other")
    with pytest.raises(webhook.Refused, match="received before"):
        verifier.verify(headers, BODY)


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        (lambda: _headers(secret="t" * 40), BODY, "signature does not match"),
        (lambda: _headers(), BODY.replace(b'"3"', b'"4"'), "signature does not match"),
        (lambda: _headers(stamp=str(int(time.time()) - 3600)), BODY, r"36\d\d s old"),
        (lambda: {k: v for k, v in _headers().items() if k != webhook.SIGNATURE}, BODY,
         "not a signed"),
        (lambda: {}, BODY, "not a signed"),
    ],
)  # fmt: skip
def test_anything_else_is_refused_with_its_reason(headers, body, reason):
    with pytest.raises(webhook.Refused, match=reason):
        webhook.Verifier(SECRET).verify(headers(), body)


def test_a_short_secret_is_refused():
    with pytest.raises(ValueError, match="32"):
        webhook.secret_from_environ({webhook.SECRET_ENV: "short"})
    assert webhook.secret_from_environ({webhook.SECRET_ENV: SECRET}) == SECRET
