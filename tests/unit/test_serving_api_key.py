"""The serving API's key: wanted on /predict, /metrics and the docs when configured;
/health and /ready stay open; `closedloop serve` refuses a public address without one."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from closedloop.cli import main
from closedloop.core.settings import load_settings
from closedloop.serving.app import ServeConfig, create_app

KEY = "k-0123456789abcdef"


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("CLOSEDLOOP_HOME", str(tmp_path))
    return load_settings()


def _client(settings, api_key):
    # without `with`, the lifespan does not run: no model is loaded, /predict answers
    # 503 once past the key check — which is what tells the two apart here
    return TestClient(create_app(settings, ServeConfig(api_key=api_key)))


def test_without_a_configured_key_nothing_asks_for_one(settings):
    client = _client(settings, None)
    assert client.post("/predict", json={}).status_code == 503
    assert client.get("/metrics").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"X-API-Key": KEY[:-1]}],
    ids=["none", "wrong", "wrong-bearer", "prefix"],
)
def test_a_missing_or_wrong_key_is_a_401(settings, headers):
    client = _client(settings, KEY)
    for method, path in (("post", "/predict"), ("get", "/metrics"), ("get", "/docs")):
        answer = getattr(client, method)(path, headers=headers)
        assert answer.status_code == 401, (path, answer.text)
        assert "API key" in answer.json()["detail"][0]
        assert answer.headers["WWW-Authenticate"] == "ApiKey"


def test_the_right_key_passes_as_header_or_bearer(settings):
    client = _client(settings, KEY)
    assert client.post("/predict", json={}, headers={"X-API-Key": KEY}).status_code == 503
    bearer = {"Authorization": f"Bearer {KEY}"}
    assert client.get("/metrics", headers=bearer).status_code == 200


def test_health_and_ready_need_no_key(settings):
    client = _client(settings, KEY)
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 503  # open, and not ready: no model


def test_serving_on_a_public_address_without_a_key_is_refused(settings, monkeypatch):
    monkeypatch.delenv("CLOSEDLOOP_SERVE_API_KEY", raising=False)
    result = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--port", "8999"])
    assert result.exit_code == 2
    assert "refusing to serve on 0.0.0.0 without an API key" in result.output
