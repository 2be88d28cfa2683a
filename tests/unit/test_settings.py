"""Settings: one object, two profiles, file + environment overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from closedloop.core.settings import PACKAGE_USECASES, load_settings


def test_embedded_profile_keeps_everything_under_home(tmp_path: Path):
    s = load_settings(home=tmp_path)
    assert s.feast_registry["path"] == str(tmp_path / "feast" / "registry.db")
    assert s.feast_registry["serve_features_while_materializing"] is True
    assert s.feast_online_store == {"type": "sqlite", "path": str(tmp_path / "feast" / "online.db")}
    assert s.mlflow_tracking_uri == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    assert s.airflow_sql_alchemy_conn.startswith(f"sqlite:///{tmp_path}/")
    for path in (s.landing_dir, s.quarantine_dir, s.offline_dir, s.gx_dir):
        assert path.is_relative_to(tmp_path)


def test_production_profile_is_configuration_only(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CLOSEDLOOP_PROFILE", "production")
    monkeypatch.setenv("CLOSEDLOOP_STORES__POSTGRES_URL", "postgresql://cl@db.internal:5432")
    monkeypatch.setenv("CLOSEDLOOP_STORES__REDIS_URL", "redis://cache.internal:6379/3")
    monkeypatch.setenv("CLOSEDLOOP_STORES__MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    s = load_settings(home=tmp_path)
    assert s.feast_registry["registry_type"] == "sql"
    assert s.feast_registry["path"] == "postgresql+psycopg://cl@db.internal:5432/feast"
    assert s.feast_online_store == {
        "type": "redis",
        "connection_string": "cache.internal:6379,db=3",
    }
    assert s.mlflow_tracking_uri == "http://mlflow.internal:5000"
    assert s.mlflow_backend_store_uri == "postgresql://cl@db.internal:5432/mlflow"
    assert s.airflow_sql_alchemy_conn == "postgresql+psycopg2://cl@db.internal:5432/airflow"
    assert s.celery_broker_url == "redis://cache.internal:6379/3"
    assert s.celery_result_backend == "db+postgresql+psycopg2://cl@db.internal:5432/airflow"
    assert s.closedloop_db == "postgresql+psycopg://cl@db.internal:5432/closedloop"
    # Files (landing, offline tables, prediction log) stay under home.
    assert s.offline_dir.is_relative_to(tmp_path)


def test_production_database_prefix_and_explicit_urls(tmp_path: Path):
    s = load_settings(
        home=tmp_path,
        profile="production",
        stores={
            "postgres_url": "postgresql://cl@db:5432/",
            "database_prefix": "run7_",
            "redis_url": "redis://:s3cr%40t@cache:6380/2",
            "closedloop_db": "postgresql://other@ledger:5432/book",
        },
    )
    assert set(s.databases) == {"airflow", "mlflow", "mlflow_auth", "feast", "closedloop"}
    assert s.databases["airflow"] == "postgresql://cl@db:5432/run7_airflow"
    assert s.databases["mlflow_auth"] == "postgresql://cl@db:5432/run7_mlflow_auth"
    assert s.closedloop_db == "postgresql+psycopg://other@ledger:5432/book"
    # The password is URL-decoded for Feast's own connection-string format.
    assert s.feast_online_store["connection_string"] == "cache:6380,db=2,password=s3cr@t"


def test_production_profile_without_servers_names_the_missing_setting(tmp_path: Path):
    s = load_settings(home=tmp_path, profile="production")
    with pytest.raises(ValueError, match="CLOSEDLOOP_STORES__REDIS_URL"):
        _ = s.feast_online_store
    with pytest.raises(ValueError, match="POSTGRES_URL"):
        _ = s.mlflow_backend_store_uri
    with pytest.raises(ValueError, match="CLOSEDLOOP_STORES__AIRFLOW_SQL_ALCHEMY_CONN"):
        _ = s.airflow_sql_alchemy_conn


def test_redis_url_must_be_redis(tmp_path: Path):
    with pytest.raises(ValidationError, match="redis://"):
        load_settings(home=tmp_path, stores={"redis_url": "http://cache:6379"})
    bare = load_settings(home=tmp_path, stores={"redis_url": "cache:6379"})
    assert bare.stores.redis_url == "redis://cache:6379"


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


def test_the_usecase_is_chosen_by_name_from_the_folder(tmp_path: Path):
    import yaml

    raw = yaml.safe_load((PACKAGE_USECASES / "hotel_bookings.yaml").read_text())
    for name in ("first", "second"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**raw, "name": name}))
    settings = load_settings(home=tmp_path, usecases_dir=tmp_path, usecase_name="second")
    assert settings.usecase.name == "second"
    assert settings.landing_dir == tmp_path / "landing" / "second"
    assert settings.for_usecase("first").usecase.name == "first"
    with pytest.raises(ValueError, match=r"no use case 'third'.*declared: \['first', 'second'\]"):
        _ = settings.for_usecase("third").usecase
    with pytest.raises(ValueError, match=r"2 use cases .* name one"):
        _ = load_settings(home=tmp_path, usecases_dir=tmp_path, usecase_name=None).usecase


def test_a_usecase_file_outside_the_folder_wins(tmp_path: Path):
    import yaml

    raw = yaml.safe_load((PACKAGE_USECASES / "hotel_bookings.yaml").read_text())
    path = tmp_path / "elsewhere.yaml"
    path.write_text(yaml.safe_dump({**raw, "name": "elsewhere"}))
    settings = load_settings(home=tmp_path, usecase_file=path, usecase_name="hotel_bookings")
    assert settings.usecase.name == "elsewhere"


def test_hotel_usecase_resolves_its_generator_and_names(tmp_path: Path):
    usecase = load_settings(home=tmp_path).usecase
    assert callable(usecase.hook("generator"))
    assert usecase.feature_service == "hotel_cancellation_v1"
