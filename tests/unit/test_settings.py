"""Settings: one object, two profiles, file + environment overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from closedloop.core.settings import load_settings
from closedloop.core.usecase import UseCase


def test_embedded_profile_keeps_everything_under_home(tmp_path: Path):
    s = load_settings(home=tmp_path)
    assert s.feast_registry == str(tmp_path / "feast" / "registry.db")
    assert s.feast_online_store == {"type": "sqlite", "path": str(tmp_path / "feast" / "online.db")}
    assert s.mlflow_tracking_uri == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    assert s.airflow_sql_alchemy_conn.startswith(f"sqlite:///{tmp_path}/")
    for path in (s.landing_dir, s.quarantine_dir, s.offline_dir, s.gx_dir):
        assert path.is_relative_to(tmp_path)


def test_production_profile_is_configuration_only(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CLOSEDLOOP_PROFILE", "production")
    monkeypatch.setenv("CLOSEDLOOP_STORES__POSTGRES_URL", "postgresql://cl@db.internal:5432")
    monkeypatch.setenv("CLOSEDLOOP_STORES__REDIS_URL", "cache.internal:6379")
    s = load_settings(home=tmp_path)
    assert s.feast_registry["path"] == "postgresql+psycopg://cl@db.internal:5432/feast"
    assert s.feast_online_store == {"type": "redis", "connection_string": "cache.internal:6379"}
    assert s.mlflow_tracking_uri == "postgresql://cl@db.internal:5432/mlflow"
    assert s.airflow_sql_alchemy_conn == "postgresql+psycopg2://cl@db.internal:5432/airflow"


def test_production_profile_without_servers_names_the_missing_setting(tmp_path: Path):
    s = load_settings(home=tmp_path, profile="production")
    with pytest.raises(ValueError, match="CLOSEDLOOP_STORES__REDIS_URL"):
        _ = s.feast_online_store
    with pytest.raises(ValueError, match="POSTGRES_URL"):
        _ = s.mlflow_tracking_uri


def test_yaml_file_is_read_and_environment_wins(tmp_path: Path, monkeypatch):
    config = tmp_path / "closedloop.yaml"
    config.write_text(f"home: {tmp_path / 'from-file'}\nprofile: embedded\n")
    monkeypatch.setenv("CLOSEDLOOP_CONFIG", str(config))
    monkeypatch.delenv("CLOSEDLOOP_HOME", raising=False)
    assert load_settings().home == tmp_path / "from-file"
    monkeypatch.setenv("CLOSEDLOOP_HOME", str(tmp_path / "from-env"))
    assert load_settings().home == tmp_path / "from-env"


def test_unknown_setting_is_rejected(tmp_path: Path):
    with pytest.raises(ValidationError, match="profle"):
        load_settings(home=tmp_path, profle="embedded")


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        pytest.param({"label": {"column": "nope"}}, "not declared", id="label-not-a-column"),
        pytest.param({"name": "Hotel Bookings"}, "pattern", id="bad-name"),
        pytest.param(
            {"columns": {"hotel": {"type": "category"}}}, "categories", id="category-without-set"
        ),
    ],
)
def test_usecase_file_errors_name_the_problem(tmp_path: Path, patch, message):
    import yaml

    raw = yaml.safe_load(load_settings(home=tmp_path).usecase_file.read_text())
    for key, value in patch.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    path = tmp_path / "usecase.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValidationError, match=message):
        UseCase.from_yaml(path)


def test_hotel_usecase_hooks_resolve(tmp_path: Path):
    usecase = load_settings(home=tmp_path).usecase
    assert callable(usecase.hook("generator"))
    assert callable(usecase.hook("engineer"))
    assert usecase.feast.feature_service == "hotel_cancellation_v1"
