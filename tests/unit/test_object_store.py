"""The MLflow server with its artifacts in an object store (``s3://``, MinIO in compose's
``s3`` profile): it refuses to start without what it needs to write there, and the
variables compose passes empty for a stack without an object store never reach boto3."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from closedloop.core.settings import load_settings
from closedloop.platform.stack import (
    OBJECT_STORE_VARIABLES,
    ObjectStoreUnusable,
    component_command,
    prepare,
)

CREDENTIALS = {
    "MLFLOW_TRACKING_USERNAME": "ops",
    "MLFLOW_TRACKING_PASSWORD": "pw-for-this-test-only",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "key-for-this-test-only",
    "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": "fernet-key-for-this-test-only",
}
MINIO = {"MLFLOW_S3_ENDPOINT_URL": "http://minio:9000"}
KEYS = {"AWS_ACCESS_KEY_ID": "id-for-this-test", "AWS_SECRET_ACCESS_KEY": "s3-for-this-test"}


def _settings(home: Path, destination: str | None):
    stores = {"postgres_url": "postgresql://cl@db:5432", "redis_url": "redis://cache:6379/0"}
    if destination:
        stores["mlflow_artifacts_destination"] = destination
    return load_settings(home=home, profile="production", stores=stores)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Run in an empty folder: a destination taken for a path would appear here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    "missing",
    [
        pytest.param(["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"], id="no-keys"),
        pytest.param(["AWS_SECRET_ACCESS_KEY"], id="no-secret"),
    ],
)
def test_minio_without_its_keys_is_refused(in_tmp, missing):
    settings = _settings(in_tmp / "home", "s3://mlflow/artifacts")
    environ = {**CREDENTIALS, **MINIO, **KEYS}
    for name in missing:
        environ[name] = ""  # what compose passes for an unset ${VAR:-}
    with pytest.raises(ObjectStoreUnusable) as refused:
        prepare(settings, "mlflow", environ)
    assert all(name in str(refused.value) for name in missing)


def test_minio_with_its_keys_starts_with_an_s3_destination(in_tmp):
    settings = _settings(in_tmp / "home", "s3://mlflow/artifacts")
    env = prepare(settings, "mlflow", {**CREDENTIALS, **MINIO, **KEYS})
    assert {k: env[k] for k in OBJECT_STORE_VARIABLES} == {**MINIO, **KEYS}
    command = component_command(settings, "mlflow")
    assert command[command.index("--artifacts-destination") + 1] == "s3://mlflow/artifacts"
    assert command[1].endswith("mlflow/server.sh")  # it serves artifacts: clients never reach S3
    assert list(in_tmp.iterdir()) == [in_tmp / "home"]  # no local folder "s3:"


def test_s3_on_aws_needs_no_key_in_the_environment(in_tmp):
    """An instance role or a credentials file may provide it: boto3 looks there."""
    settings = _settings(in_tmp / "home", "s3://bucket/mlflow")
    env = prepare(settings, "mlflow", {**CREDENTIALS, **dict.fromkeys(KEYS, "")})
    assert not set(OBJECT_STORE_VARIABLES) & set(env)


def test_an_s3_destination_without_boto3_is_refused(in_tmp, monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 -> not installed
    settings = _settings(in_tmp / "home", "s3://mlflow/artifacts")
    with pytest.raises(ObjectStoreUnusable, match=r"closedloop\[s3\]"):
        prepare(settings, "mlflow", {**CREDENTIALS, **MINIO, **KEYS})


def test_without_an_object_store_the_empty_variables_are_dropped(in_tmp):
    settings = _settings(in_tmp / "home", None)
    environ = {**CREDENTIALS, **dict.fromkeys(OBJECT_STORE_VARIABLES, "")}
    env = prepare(settings, "mlflow", environ)
    assert not set(OBJECT_STORE_VARIABLES) & set(env)
    assert Path(settings.mlflow_artifacts_destination).is_dir()
