"""``closedloop serve --roles``: each declared user's API key opens the endpoints of its
role's ``serving`` rights and gets 403 on the others; an unknown key gets 401; the
service's own key (``CLOSEDLOOP_SERVE_API_KEY``) opens all. The checks run before any
endpoint's work, so no store is needed."""

from __future__ import annotations

import pytest
import yaml
from fastapi.testclient import TestClient

from closedloop.core.roles import SHIPPED, load_roles, serving_keys

KEYS = {
    "eve": ("software_engineer", "eve-key-0123456789"),  # R5: predict, metrics, explain
    "sam": ("solution_architect", "sam-key-0123456789"),  # R2: metrics
    "ria": ("data_scientist", "ria-key-0123456789"),  # R3: explain
    "dan": ("business_stakeholder", "dan-key-0123456789"),  # R1: none
}
ADMIN = "admin-key-0123456789"


@pytest.fixture
def roles_file(tmp_path, monkeypatch):
    declared = yaml.safe_load(SHIPPED.read_text())
    declared["users"] = {}
    for name, (role, key) in KEYS.items():
        variable = f"TEST_SERVE_KEY_{name.upper()}"
        monkeypatch.setenv(variable, key)
        monkeypatch.setenv(f"TEST_PASSWORD_{name.upper()}", "not-used-here-0123")
        declared["users"][name] = {"role": role, "serving_key_env": variable,
                                   "password_env": f"TEST_PASSWORD_{name.upper()}"}  # fmt: skip
    path = tmp_path / "roles.yaml"
    path.write_text(yaml.safe_dump(declared, sort_keys=False))
    return path


@pytest.fixture
def client(roles_file, tmp_path, monkeypatch):
    from closedloop.core.settings import load_settings
    from closedloop.serving.app import ServeConfig, create_app

    monkeypatch.setenv("CLOSEDLOOP_HOME", str(tmp_path / "home"))
    config = ServeConfig(api_key=ADMIN, roles_file=str(roles_file))
    return TestClient(create_app(load_settings(), config))


def _status(client, method: str, path: str, key: str | None) -> int:
    headers = {"X-API-Key": key} if key else {}
    if method == "POST":
        return client.post(path, content=b"[]", headers=headers).status_code
    return client.get(path, headers=headers).status_code


@pytest.mark.parametrize(
    ("user", "allowed"),
    [("eve", {"predict", "metrics", "explain"}), ("sam", {"metrics"}), ("ria", {"explain"}),
     ("dan", set()), ("admin", {"predict", "metrics", "explain"})],
)  # fmt: skip
def test_each_key_opens_its_roles_endpoints_and_gets_403_on_the_others(client, user, allowed):
    key = ADMIN if user == "admin" else KEYS[user][1]
    endpoints = {"predict": ("POST", "/predict"), "metrics": ("GET", "/metrics"),
                 "explain": ("GET", "/explain/no-such-id")}  # fmt: skip
    for scope, (method, path) in endpoints.items():
        status = _status(client, method, path, key)
        if scope in allowed:
            assert status not in (401, 403), (user, scope, status)
        else:
            assert status == 403, (user, scope, status)
    assert _status(client, "GET", "/health", None) == 200  # open for health checks


def test_a_missing_or_unknown_key_is_401_and_the_service_keeps_answering(client):
    for key in (None, "not-a-key-0123456789", KEYS["eve"][1] + "x"):
        for method, path in (("POST", "/predict"), ("GET", "/metrics"), ("GET", "/docs")):
            assert _status(client, method, path, key) == 401, (key, path)
    assert _status(client, "GET", "/metrics", KEYS["sam"][1]) == 200
    assert _status(client, "GET", "/docs", KEYS["dan"][1]) == 200  # any known key reads docs


def test_a_missing_or_short_serving_key_is_an_error_naming_its_variable(roles_file, monkeypatch):
    roles = load_roles(roles_file)
    assert sorted(name for name, _ in serving_keys(roles).values()) == sorted(KEYS)
    monkeypatch.setenv("TEST_SERVE_KEY_SAM", "short")
    with pytest.raises(ValueError, match=r"users\.sam\.serving_key_env: TEST_SERVE_KEY_SAM"):
        serving_keys(roles)
    monkeypatch.setenv("TEST_SERVE_KEY_SAM", KEYS["eve"][1])
    with pytest.raises(ValueError, match="the same API key as eve"):
        serving_keys(roles)
