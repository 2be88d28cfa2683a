"""``closedloop users sync`` against the production profile's real MLflow tracking server
(basic-auth, PostgreSQL; started with Airflow's API server by ``ProductionStack``): the
declared users are created with their roles' permissions, a second run changes nothing,
each role can do what the shipped declaration allows and is refused the rest through
MLflow's REST API, a rotated password replaces the old one and a user taken out of the
declaration is refused."""

from __future__ import annotations

import os
import secrets

import pytest
import requests
import yaml
from click.testing import CliRunner

from closedloop.core.roles import SHIPPED
from closedloop.core.settings import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]

USERS = {
    "bob": "data_scientist",  # R3
    "carol": "ml_engineer",  # R7
    "dave": "business_stakeholder",  # R1
}


@pytest.fixture(scope="module")
def stack(production_env):
    from closedloop.platform.stack import ProductionStack, ensure_databases

    settings = load_settings()
    ensure_databases(settings)
    processes = ProductionStack(settings, components=("mlflow", "api-server"),
                                use_job_schedule=False)  # fmt: skip
    processes.start(timeout=300)
    try:
        yield processes
    finally:
        processes.stop()


@pytest.fixture(scope="module")
def passwords():
    return {name: secrets.token_urlsafe(18) for name in USERS}


def _roles_file(tmp_path, users: dict[str, str]):
    declared = yaml.safe_load(SHIPPED.read_text())
    declared["users"] = {
        name: {"role": role, "password_env": f"TEST_PASSWORD_{name.upper()}"}
        for name, role in users.items()
    }
    path = tmp_path / "roles.yaml"
    path.write_text(yaml.safe_dump(declared, sort_keys=False))
    return path


def _sync(stack, path) -> str:
    from closedloop.cli import main

    result = CliRunner().invoke(main, ["users", "sync", "--roles", str(path)])
    if result.exit_code != 0:  # the server's own account of it, if it went away
        log = stack.settings.airflow_home / "logs" / "mlflow.log"
        tail = log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"
        alive = {name: proc.poll() for name, proc in stack.processes.items()}
        pytest.fail(f"{result.output}{result.exception!r}\nprocesses: {alive}\n{tail}")
    return result.output


class As:
    """MLflow's REST API as one user."""

    def __init__(self, uri: str, user: str, password: str) -> None:
        self.base, self.auth = f"{uri.rstrip('/')}/api/2.0/mlflow", (user, password)

    def post(self, path: str, body: dict) -> requests.Response:
        return requests.post(f"{self.base}/{path}", json=body, auth=self.auth, timeout=30)

    def get(self, path: str, **params) -> requests.Response:
        return requests.get(f"{self.base}/{path}", params=params, auth=self.auth, timeout=30)


def test_users_sync_gives_each_role_its_rights_in_mlflow(stack, passwords, tmp_path, monkeypatch):
    settings = stack.settings
    for name, password in passwords.items():
        monkeypatch.setenv(f"TEST_PASSWORD_{name.upper()}", password)
    path = _roles_file(tmp_path, USERS)

    first = _sync(stack, path)
    for name in USERS:
        assert f"mlflow: created user {name}" in first, first
    assert "mlflow: bob: closedloop/hotel_bookings NO_PERMISSIONS -> EDIT" in first
    assert f"mlflow: carol: model {settings.model_name} NO_PERMISSIONS -> MANAGE" in first
    assert _sync(stack, path).strip().splitlines()[-1] == "nothing to change"

    uri, model = settings.mlflow_tracking_uri, settings.model_name
    admin = As(uri, os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"])
    experiment = admin.get("experiments/get-by-name", experiment_name="closedloop/hotel_bookings")
    experiment_id = experiment.json()["experiment"]["experiment_id"]
    run = admin.post("runs/create", {"experiment_id": experiment_id}).json()["run"]
    version = admin.post("model-versions/create", {
        "name": model, "source": run["info"]["artifact_uri"] + "/model",
        "run_id": run["info"]["run_id"],
    })  # fmt: skip
    assert version.status_code == 200, version.text
    number = version.json()["model_version"]["version"]
    alias = {"name": model, "alias": "champion", "version": number}

    bob, carol, dave = (As(uri, n, passwords[n]) for n in ("bob", "carol", "dave"))
    # R3: logs runs in the use case's experiment, reads the model, cannot promote
    assert bob.post("runs/create", {"experiment_id": experiment_id}).status_code == 200
    assert bob.get("registered-models/get", name=model).status_code == 200
    assert bob.post("registered-models/alias", alias).status_code == 403
    # R1: reads, logs nothing, moves nothing
    assert dave.get("registered-models/get", name=model).status_code == 200
    assert dave.post("runs/create", {"experiment_id": experiment_id}).status_code == 403
    assert dave.post("registered-models/alias", alias).status_code == 403
    # R7: promotes
    assert carol.post("registered-models/alias", alias).status_code == 200
    got = admin.get("registered-models/get", name=model).json()["registered_model"]
    assert {"alias": "champion", "version": number} in got["aliases"]

    # a rotated password replaces the old one
    rotated = secrets.token_urlsafe(18)
    monkeypatch.setenv("TEST_PASSWORD_CAROL", rotated)
    assert "mlflow: carol: password updated" in _sync(stack, path)
    assert carol.get("registered-models/get", name=model).status_code == 401
    assert As(uri, "carol", rotated).get("registered-models/get", name=model).status_code == 200

    # bob taken out of the declaration: deleted, refused from then on
    smaller = _roles_file(tmp_path, {k: v for k, v in USERS.items() if k != "bob"})
    assert "mlflow: deleted user bob (no longer declared)" in _sync(stack, smaller)
    assert bob.get("registered-models/get", name=model).status_code == 401
    assert _sync(stack, smaller).strip().splitlines()[-1] == "nothing to change"
