"""Airflow connections reach closedloop's operators through its hooks: a
``closedloop_mlflow`` connection names the tracking server and its login, a
``closedloop_feast`` connection's extra JSON overrides settings; without them, settings
alone decide (the embedded profile needs no connection)."""

from __future__ import annotations

import json
import os

import pytest

from closedloop.hooks.mlflow import MlflowHook
from closedloop.operators.features import FeastMaterializeOperator


@pytest.fixture
def connections(tmp_path, monkeypatch):
    """Connections as a deployment gives them (Airflow reads ``AIRFLOW_CONN_<ID>``)."""
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOSEDLOOP_HOME", str(tmp_path / "from-settings"))
    monkeypatch.setenv(
        "AIRFLOW_CONN_TEAM_MLFLOW",
        json.dumps({"conn_type": "closedloop_mlflow", "host": "mlflow.internal", "port": 5005,
                    "login": "trainer", "password": "not-in-the-repo"}),
    )  # fmt: skip
    monkeypatch.setenv(
        "AIRFLOW_CONN_TEAM_FEAST",
        json.dumps({"conn_type": "closedloop_feast", "extra": {"home": str(tmp_path / "team")}}),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_TLS_MLFLOW",
        json.dumps({"conn_type": "closedloop_mlflow", "host": "https://mlflow.example.org/"}),
    )
    return tmp_path


def test_an_operator_takes_the_server_login_and_settings_from_its_connections(connections):
    op = FeastMaterializeOperator(
        task_id="materialize", mlflow_conn_id="team_mlflow", feast_conn_id="team_feast"
    )
    settings = op.settings()
    assert settings.mlflow_tracking_uri == "http://mlflow.internal:5005"
    assert settings.home == connections / "team"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "trainer"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "not-in-the-repo"


def test_without_connections_settings_alone_decide(connections):
    settings = FeastMaterializeOperator(task_id="materialize").settings()
    assert settings.home == connections / "from-settings"
    assert settings.mlflow_tracking_uri.startswith("sqlite:///")
    assert "MLFLOW_TRACKING_USERNAME" not in os.environ


def test_a_url_in_the_host_is_the_tracking_uri(connections):
    assert MlflowHook("tls_mlflow").overrides() == {
        "stores": {"mlflow_tracking_uri": "https://mlflow.example.org/"}
    }


def test_an_unknown_connection_fails_naming_it(connections):
    with pytest.raises(Exception, match="no_such_conn"):
        FeastMaterializeOperator(task_id="materialize", mlflow_conn_id="no_such_conn").settings()


def test_the_generated_dags_hand_their_connections_to_every_closedloop_operator():
    from closedloop.core.settings import PACKAGE_USECASES
    from closedloop.core.usecase import UseCase
    from closedloop.factory import usecase_dags
    from closedloop.operators.base import ClosedLoopOperator

    path = PACKAGE_USECASES / "hotel_bookings.yaml"
    connections = {"mlflow_conn_id": "team_mlflow", "feast_conn_id": "team_feast"}
    ours = [
        task
        for dag in usecase_dags(UseCase.from_yaml(path), path, connections)
        for task in dag.tasks
        if isinstance(task, ClosedLoopOperator)
    ]
    assert len(ours) > 15
    assert {(t.mlflow_conn_id, t.feast_conn_id) for t in ours} == {("team_mlflow", "team_feast")}
