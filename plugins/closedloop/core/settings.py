"""Where everything lives: one typed settings object, two profiles.

Values come, highest priority first, from keyword arguments, ``CLOSEDLOOP_*``
environment variables (nested with ``__``, e.g. ``CLOSEDLOOP_STORES__REDIS_URL``), a YAML
file (``$CLOSEDLOOP_CONFIG`` or ``./closedloop.yaml``) and the defaults below.

* ``embedded`` (default): everything under one home folder — Airflow metadata in SQLite,
  MLflow tracking and registry in SQLite with local artifacts, Feast file registry,
  Parquet offline store, SQLite online store.
* ``production``: the same layout of files for landing/quarantine/offline data, but the
  databases are servers — PostgreSQL for Airflow, MLflow and the Feast registry, Redis for
  the Feast online store. Only these URLs change; no code path does.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from closedloop.core.usecase import UseCase

PACKAGE_DIR = Path(__file__).resolve().parents[1]
DEFAULT_USECASE = PACKAGE_DIR / "usecases" / "hotel_bookings.yaml"
# In a source checkout (the supported way to run the DAGs) the Feast declarations sit
# beside the package: <root>/plugins/closedloop -> <root>/feature_repo.
PROJECT_ROOT = PACKAGE_DIR.parents[1]


class StoreSettings(BaseModel):
    """Server URLs of the production profile. Unset values fall back to the profile."""

    postgres_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the PostgreSQL server, without driver, e.g. "
        "postgresql://user:pw@host:5432 (database names are appended per component)",
    )
    redis_url: str | None = Field(default=None, description="host:port[,db=N] for Feast")
    mlflow_tracking_uri: str | None = None
    feast_registry: str | None = None
    airflow_sql_alchemy_conn: str | None = None
    closedloop_db: str | None = Field(
        default=None, description="SQLAlchemy URL of closedloop's own tables (promotion ledger)"
    )


class Settings(BaseSettings):
    """All of closedloop's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="CLOSEDLOOP_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    home: Path = Field(default=Path(".closedloop"), description="root of all local state")
    profile: Literal["embedded", "production"] = "embedded"
    usecase_file: Path = DEFAULT_USECASE
    feature_repo: Path = PROJECT_ROOT / "feature_repo"
    stores: StoreSettings = StoreSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = os.environ.get("CLOSEDLOOP_CONFIG", "closedloop.yaml")
        return (
            init_settings,
            env_settings,
            YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file),
        )

    @field_validator("home", "usecase_file", "feature_repo")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    # -- the use case --------------------------------------------------------------
    @cached_property
    def usecase(self) -> UseCase:
        return UseCase.from_yaml(self.usecase_file)

    # -- folders -------------------------------------------------------------------
    @property
    def landing_dir(self) -> Path:
        return self.home / "landing" / self.usecase.name

    @property
    def quarantine_dir(self) -> Path:
        return self.home / "quarantine" / self.usecase.name

    @property
    def staging_dir(self) -> Path:
        return self.home / "staging" / self.usecase.name

    @property
    def offline_dir(self) -> Path:
        return self.home / "offline" / self.usecase.name

    @property
    def gx_dir(self) -> Path:
        return self.home / "gx"

    @property
    def feast_dir(self) -> Path:
        return self.home / "feast"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    # -- stores, per profile -------------------------------------------------------
    def _require(self, value: str | None, what: str) -> str:
        if value:
            return value
        if self.stores.postgres_url and what != "redis_url":
            return f"{self.stores.postgres_url.rstrip('/')}/{{db}}"
        raise ValueError(
            f"profile 'production' needs CLOSEDLOOP_STORES__{what.upper()} "
            "(or CLOSEDLOOP_STORES__POSTGRES_URL for the PostgreSQL ones)"
        )

    @property
    def feast_registry(self) -> str | dict[str, Any]:
        if self.profile == "embedded":
            return str(self.feast_dir / "registry.db")
        url = self._require(self.stores.feast_registry, "feast_registry").format(db="feast")
        url = url.replace("postgresql://", "postgresql+psycopg://", 1)
        return {"registry_type": "sql", "path": url, "cache_ttl_seconds": 60}

    @property
    def feast_online_store(self) -> dict[str, Any]:
        if self.profile == "embedded":
            return {"type": "sqlite", "path": str(self.feast_dir / "online.db")}
        redis = self._require(self.stores.redis_url, "redis_url")
        return {"type": "redis", "connection_string": redis}

    @property
    def mlflow_tracking_uri(self) -> str:
        if self.profile == "embedded":
            return f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"
        return self._require(self.stores.mlflow_tracking_uri, "mlflow_tracking_uri").format(
            db="mlflow"
        )

    @property
    def airflow_sql_alchemy_conn(self) -> str:
        if self.profile == "embedded":
            return f"sqlite:///{self.airflow_home / 'airflow.db'}"
        url = self._require(self.stores.airflow_sql_alchemy_conn, "airflow_sql_alchemy_conn")
        return url.format(db="airflow").replace("postgresql://", "postgresql+psycopg2://", 1)

    @property
    def closedloop_db(self) -> str:
        """closedloop's own tables (the promotion ledger, ...)."""
        if self.profile == "embedded":
            return f"sqlite:///{self.home / 'closedloop.db'}"
        url = self._require(self.stores.closedloop_db, "closedloop_db").format(db="closedloop")
        return url.replace("postgresql://", "postgresql+psycopg://", 1)

    @property
    def model_name(self) -> str:
        """The registered model's name in MLflow."""
        return self.usecase.model.name

    @property
    def prediction_log_dir(self) -> Path:
        return self.home / "prediction_log" / self.usecase.name

    @property
    def training_dir(self) -> Path:
        return self.home / "training" / self.usecase.name

    def offline_table_dir(self, table: str) -> Path:
        """Folder of one offline table: one Parquet file per data interval."""
        return self.offline_dir / table


def load_settings(**overrides: Any) -> Settings:
    """Settings from keyword overrides, the environment and the YAML file."""
    return Settings(**overrides)
