"""``closedloop users sync`` against the production profile's real services: Airflow's API
server with the FAB auth manager, the MLflow tracking server with basic-auth, both on
PostgreSQL, the scheduler, DAG processor and a Celery worker on Redis.

The shipped roles declaration gets four users. Each logs in as itself and tries a sample
of what its role may and may not do, through Airflow's and MLflow's REST APIs: the
stakeholder reads but triggers nothing, the data engineer triggers the features DAG but
not training, the data scientist logs runs but cannot move ``champion``, and the ML
engineer triggers training and approves the promotion it holds (which the ledger then
names). A second sync changes nothing; a rotated password replaces the old one in both
servers, and a user taken out of the declaration is refused by both.
"""

from __future__ import annotations

import os
import secrets
import time
from datetime import UTC, date, datetime, timedelta

import pytest
import requests
import yaml
from click.testing import CliRunner

from closedloop.core.ledger import read_history
from closedloop.core.registry import CHAMPION, alias_version, client_for
from closedloop.core.roles import SHIPPED
from closedloop.core.settings import PACKAGE_USECASES, load_settings
from closedloop.platform.stack import FAB_CACHE_TTL

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]

USERS = {
    "bob": "data_scientist",  # R3
    "carol": "ml_engineer",  # R7
    "dave": "business_stakeholder",  # R1
    "erin": "data_engineer",  # R4
    "frank": "solution_architect",  # R2
    "grace": "software_engineer",  # R5
    "heidi": "devops_engineer",  # R6
    "pipeline": "training_pipeline",  # the account the DAGs' tasks log to MLflow as
}
#: the Airflow connection that holds the pipeline's MLflow login
PIPELINE_CONNECTION = "closedloop_mlflow_pipeline"
FIRST, DAYS = date(2026, 1, 1), 24
FEATURES, TRAINING = "hotel_bookings_features", "hotel_bookings_training"
BATCH, MONITORING = "hotel_bookings_batch_inference", "hotel_bookings_monitoring"


@pytest.fixture(scope="module")
def stack(production_env, tmp_path_factory):
    """The whole stack, with a use case whose promotions wait for a person's approval and
    its history in the stores."""
    from closedloop.core.feature_pipeline import backfill
    from closedloop.platform.stack import ProductionStack, ensure_databases
    from closedloop.usecases.hotel.generator import write_batches

    usecases = tmp_path_factory.mktemp("usecases")
    declaration = yaml.safe_load((PACKAGE_USECASES / "hotel_bookings.yaml").read_text())
    declaration["model"]["gate"] = {
        **declaration["model"].get("gate", {}),
        "approval": "required",
        "min_improvement": -1.0,
        "max_segment_regression": 1.0,
    }
    (usecases / "hotel_bookings.yaml").write_text(yaml.safe_dump(declaration, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOSEDLOOP_USECASES_DIR", str(usecases))
        # the DAGs' tasks log to MLflow with the login this connection holds (written by
        # the sync below), not with the MLflow admin's of the worker's environment
        mp.setenv("CLOSEDLOOP_MLFLOW_CONN_ID", PIPELINE_CONNECTION)
        settings = load_settings()
        ensure_databases(settings)
        processes = ProductionStack(settings, use_job_schedule=False)
        with processes.starting(timeout=240):
            write_batches(settings.landing_dir, FIRST, DAYS, rows_per_day=150)
            backfill(settings, FIRST, DAYS)
        try:
            processes.wait_for_dags([FEATURES, TRAINING])
            processes.set_paused(TRAINING, False)
            yield processes
        finally:
            processes.stop()


@pytest.fixture(scope="module")
def passwords():
    return {name: secrets.token_urlsafe(18) for name in USERS}


@pytest.fixture(scope="module")
def declared(stack, passwords, tmp_path_factory):
    """The roles file naming :data:`USERS`, their passwords in the environment, and the
    output of the first two syncs."""
    path = _roles_file(tmp_path_factory.mktemp("roles"), USERS)
    with pytest.MonkeyPatch.context() as mp:
        for name, password in passwords.items():
            mp.setenv(f"TEST_PASSWORD_{name.upper()}", password)
        yield path, _sync(stack, path), _sync(stack, path)


def _roles_file(folder, users: dict[str, str]):
    roles = yaml.safe_load(SHIPPED.read_text())
    roles["users"] = {
        name: {"role": role, "password_env": f"TEST_PASSWORD_{name.upper()}"}
        for name, role in users.items()
    }
    if "pipeline" in roles["users"]:
        roles["users"]["pipeline"]["airflow_connection"] = PIPELINE_CONNECTION
    path = folder / f"roles-{len(users)}.yaml"
    path.write_text(yaml.safe_dump(roles, sort_keys=False))
    return path


def _sync(stack, path) -> str:
    from closedloop.cli import main

    result = CliRunner().invoke(main, ["users", "sync", "--roles", str(path)])
    if result.exit_code != 0:  # the servers' own account of it, if one went away
        tails = []
        for name in ("mlflow", "api-server"):
            log = stack.settings.airflow_home / "logs" / f"{name}.log"
            tails.append(log.read_text(errors="replace")[-3000:] if log.exists() else "")
        alive = {name: proc.poll() for name, proc in stack.processes.items()}
        pytest.fail(f"{result.output}{result.exception!r}\nprocesses: {alive}\n" + "\n".join(tails))
    return result.output


class Mlflow:
    """MLflow's REST API as one user."""

    def __init__(self, uri: str, user: str, password: str) -> None:
        self.base, self.auth = f"{uri.rstrip('/')}/api/2.0/mlflow", (user, password)

    def post(self, path: str, body: dict) -> requests.Response:
        return requests.post(f"{self.base}/{path}", json=body, auth=self.auth, timeout=30)

    def get(self, path: str, **params) -> requests.Response:
        return requests.get(f"{self.base}/{path}", params=params, auth=self.auth, timeout=30)


class Airflow:
    """Airflow's REST API as one user, with the token its login gets."""

    def __init__(self, base: str, user: str, password: str) -> None:
        self.base, self.user = base.rstrip("/"), user
        login = requests.post(f"{self.base}/auth/token", timeout=30,
                              json={"username": user, "password": password})  # fmt: skip
        self.login_status = login.status_code
        token = login.json().get("access_token") if login.status_code == 201 else None
        self.headers = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, body: dict | None = None) -> requests.Response:
        return requests.request(method, f"{self.base}/api/v2{path}", json=body,
                                headers=self.headers, timeout=30)  # fmt: skip

    def trigger(self, dag_id: str, day: int, run_id: str) -> requests.Response:
        as_of = datetime.combine(FIRST + timedelta(days=day), datetime.min.time(), UTC)
        return self.call("POST", f"/dags/{dag_id}/dagRuns", {
            "dag_run_id": run_id, "logical_date": as_of.isoformat(),
            "conf": {"as_of": as_of.isoformat(), "reason": "manual"},
        })  # fmt: skip


def _airflow(stack, passwords, name: str, password: str | None = None) -> Airflow:
    client = Airflow(stack.settings.airflow_api_url, name, password or passwords[name])
    assert client.login_status == 201, f"{name} could not log in: {client.login_status}"
    return client


def test_users_sync_applies_the_declaration_once(stack, declared):
    settings = stack.settings
    _, first, second = declared
    for name, role in USERS.items():
        assert f"mlflow: created user {name}" in first, first
        if name != "pipeline":  # no Airflow login for a pipeline's account
            assert f"airflow: created user {name} (closedloop_{role})" in first, first
    assert f"airflow: created connection {PIPELINE_CONNECTION} (MLflow login of pipeline)" in first
    for role in ("business_stakeholder", "data_engineer", "ml_engineer"):
        assert f"airflow: created role closedloop_{role} (" in first
    assert "closedloop_training_pipeline" not in first
    assert "airflow: created user pipeline" not in first
    assert "mlflow: bob: closedloop/hotel_bookings NO_PERMISSIONS -> EDIT" in first
    assert f"mlflow: carol: model {settings.model_name} NO_PERMISSIONS -> MANAGE" in first
    assert second.strip().splitlines() == ["nothing to change"]


def test_each_role_gets_its_airflow_rights(stack, passwords, declared):
    bob, carol, dave, erin = (
        _airflow(stack, passwords, n) for n in ("bob", "carol", "dave", "erin")
    )
    # R1: sees the loop's DAGs and runs, triggers nothing
    assert dave.call("GET", f"/dags/{TRAINING}").status_code == 200
    assert dave.call("GET", f"/dags/{TRAINING}/dagRuns").status_code == 200
    assert dave.trigger(TRAINING, DAYS, "dave_training").status_code == 403
    assert dave.trigger(FEATURES, DAYS, "dave_features").status_code == 403
    # R4: reruns the feature pipeline, not training
    assert erin.trigger(FEATURES, DAYS - 1, "erin_features").status_code == 200
    assert erin.trigger(TRAINING, DAYS, "erin_training").status_code == 403
    # R3: experiments in MLflow, triggers no DAG
    assert bob.trigger(TRAINING, DAYS, "bob_training").status_code == 403
    # R2: reads every DAG, operates none
    frank = _airflow(stack, passwords, "frank")
    assert frank.call("GET", f"/dags/{FEATURES}").status_code == 200
    assert frank.trigger(FEATURES, DAYS, "frank_features").status_code == 403
    # R5: sees only the batch inference DAG whose output it consumes
    grace = _airflow(stack, passwords, "grace")
    assert grace.call("GET", f"/dags/{BATCH}").status_code == 200
    assert grace.call("GET", f"/dags/{TRAINING}").status_code == 403
    listed = {d["dag_id"] for d in grace.call("GET", "/dags").json()["dags"]}
    assert listed == {BATCH}
    # R6: reruns monitoring, never training
    heidi = _airflow(stack, passwords, "heidi")
    assert heidi.trigger(MONITORING, DAYS - 1, "heidi_monitoring").status_code == 200
    assert heidi.trigger(TRAINING, DAYS, "heidi_training").status_code == 403

    # R7: trains, and answers the promotion the gate holds for a person
    assert carol.trigger(TRAINING, DAYS, "carol_training").status_code == 200
    stack.wait_for_input(TRAINING, "carol_training", "approve")
    hitl = f"/dags/{TRAINING}/dagRuns/carol_training/taskInstances/approve/-1/hitlDetails"
    answer = {"chosen_options": ["Approve"], "params_input": {"reason": "reviewed"}}
    assert dave.call("PATCH", hitl, answer).status_code == 403
    assert bob.call("PATCH", hitl, answer).status_code == 403
    assert erin.call("PATCH", hitl, answer).status_code == 403
    assert heidi.call("PATCH", hitl, answer).status_code == 403  # operates, never promotes
    # a person answers seconds after the request at the earliest (tests/integration/
    # test_approval.py says why an answer within the scheduler's next loop is unsafe)
    time.sleep(5)
    response = carol.call("PATCH", hitl, answer)
    assert response.status_code == 200, response.text
    assert stack.wait(TRAINING, "carol_training") == "success"

    # the tasks logged, registered and promoted as the pipeline's account: the operators
    # take the login from the connection (a missing one fails the task)
    connection = stack._request("GET", f"/api/v2/connections/{PIPELINE_CONNECTION}")
    assert connection["login"] == "pipeline"
    settings = stack.settings
    (entry,) = [e for e in read_history(settings.closedloop_db, settings.model_name)
                if e.run_id == "carol_training"]  # fmt: skip
    assert entry.action == "promote" and entry.actor == "user:carol", entry
    assert alias_version(client_for(settings), settings.model_name, CHAMPION) == entry.version


def test_each_role_gets_its_mlflow_rights(stack, passwords, declared):
    settings = stack.settings
    uri, model = settings.mlflow_tracking_uri, settings.model_name
    admin = Mlflow(
        uri, os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    )
    experiment = admin.get("experiments/get-by-name", experiment_name="closedloop/hotel_bookings")
    experiment_id = experiment.json()["experiment"]["experiment_id"]
    run = admin.post("runs/create", {"experiment_id": experiment_id}).json()["run"]
    version = admin.post("model-versions/create", {
        "name": model, "source": run["info"]["artifact_uri"] + "/model",
        "run_id": run["info"]["run_id"],
    })  # fmt: skip
    assert version.status_code == 200, version.text
    number = version.json()["model_version"]["version"]
    alias = {"name": model, "alias": "challenger", "version": number}

    bob, carol, dave, grace, heidi = (
        Mlflow(uri, n, passwords[n]) for n in ("bob", "carol", "dave", "grace", "heidi")
    )
    # R3: logs runs in the use case's experiment, reads the model, cannot move an alias
    assert bob.post("runs/create", {"experiment_id": experiment_id}).status_code == 200
    assert bob.get("registered-models/get", name=model).status_code == 200
    assert bob.post("registered-models/alias", {**alias, "alias": CHAMPION}).status_code == 403
    assert bob.post("registered-models/alias", alias).status_code == 403
    # R1: reads, logs nothing, moves nothing
    assert dave.get("registered-models/get", name=model).status_code == 200
    assert dave.post("runs/create", {"experiment_id": experiment_id}).status_code == 403
    assert dave.post("registered-models/alias", alias).status_code == 403
    # R5: reads the model it serves, not the experiments; R6: reads, moves nothing
    assert grace.get("registered-models/get", name=model).status_code == 200
    assert grace.get("experiments/get", experiment_id=experiment_id).status_code == 403
    assert heidi.post("registered-models/alias", alias).status_code == 403
    # R7: moves aliases
    assert carol.post("registered-models/alias", alias).status_code == 200
    got = admin.get("registered-models/get", name=model).json()["registered_model"]
    assert {"alias": "challenger", "version": number} in got["aliases"]


def test_rotated_and_revoked_users(stack, passwords, declared, monkeypatch):
    path = declared[0]
    settings = stack.settings
    uri, model = settings.mlflow_tracking_uri, settings.model_name
    for name, password in passwords.items():
        monkeypatch.setenv(f"TEST_PASSWORD_{name.upper()}", password)
    bob = _airflow(stack, passwords, "bob")

    # a rotated password replaces the old one in both servers
    rotated = secrets.token_urlsafe(18)
    monkeypatch.setenv("TEST_PASSWORD_CAROL", rotated)
    changed = _sync(stack, path)
    assert "mlflow: carol: password updated" in changed
    assert "airflow: carol: password updated" in changed
    assert Airflow(settings.airflow_api_url, "carol", passwords["carol"]).login_status == 401
    _airflow(stack, passwords, "carol", rotated)
    assert Mlflow(uri, "carol", passwords["carol"]).get(
        "registered-models/get", name=model).status_code == 401  # fmt: skip
    assert Mlflow(uri, "carol", rotated).get("registered-models/get", name=model).status_code == 200

    # bob taken out of the declaration: deleted, refused by both from then on
    smaller = _roles_file(path.parent, {k: v for k, v in USERS.items() if k != "bob"})
    removed = _sync(stack, smaller)
    assert "airflow: deleted user bob (no longer declared)" in removed
    assert "mlflow: deleted user bob (no longer declared)" in removed
    assert Airflow(settings.airflow_api_url, "bob", passwords["bob"]).login_status == 401
    # his old token too, once the API server's cache of who a token names expires
    deadline = time.monotonic() + FAB_CACHE_TTL + 5
    while (status := bob.call("GET", f"/dags/{TRAINING}").status_code) == 200:
        assert time.monotonic() < deadline, f"bob's token still works {FAB_CACHE_TTL}s after"
        time.sleep(1)
    assert status in (401, 403)
    assert Mlflow(uri, "bob", passwords["bob"]).get(
        "registered-models/get", name=model).status_code == 401  # fmt: skip
    assert _sync(stack, smaller).strip().splitlines() == ["nothing to change"]
