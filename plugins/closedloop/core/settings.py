"""Where everything lives: one typed settings object, two profiles.

Values come, highest priority first, from keyword arguments, ``CLOSEDLOOP_*``
environment variables (nested with ``__``, e.g. ``CLOSEDLOOP_STORES__REDIS_URL``), a YAML
file (``$CLOSEDLOOP_CONFIG`` or ``./closedloop.yaml``) and the defaults below.

* ``embedded`` (default): everything under one home folder — Airflow metadata in SQLite,
  MLflow tracking and registry in SQLite with local artifacts, Feast file registry,
  Parquet offline store, SQLite online store.
* ``production``: the same layout of files for landing/quarantine/offline data, but the
  databases are servers — PostgreSQL for Airflow (CeleryExecutor, Redis broker), the
  MLflow tracking server (clients reach it over HTTP with basic-auth), the Feast SQL
  registry and the promotion ledger; Redis for the Feast online store. Only these URLs
  change; no code path does. ``closedloop.platform.stack`` starts the servers from them.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from closedloop.core.usecase import UseCase

PACKAGE_DIR = Path(__file__).resolve().parents[1]
#: the use cases that ship with closedloop (a deployment points usecases_dir at its own)
PACKAGE_USECASES = PACKAGE_DIR / "usecases"
# In a source checkout (the supported way to run the DAGs) the Feast declarations sit
# beside the package: <root>/plugins/closedloop -> <root>/feature_repo.
PROJECT_ROOT = PACKAGE_DIR.parents[1]


class StoreSettings(BaseModel):
    """Server addresses of the production profile. Unset values are derived from
    ``postgres_url`` and ``redis_url``; credentials travel inside the URLs (from the
    environment), never in a file of this repository."""

    postgres_url: str | None = Field(
        default=None,
        description="URL of the PostgreSQL server, without driver or database, e.g. "
        "postgresql://user:pw@host:5432 (one database per component is appended)",
    )
    database_prefix: str = Field(
        default="",
        pattern=r"^[a-z0-9_]*$",
        description="prefix of the per-component database names (airflow, mlflow, ...)",
    )
    redis_url: str | None = Field(
        default=None, description="redis://[:password@]host:port/db (Feast online store)"
    )
    mlflow_tracking_uri: str | None = Field(
        default=None, description="the MLflow tracking server clients talk to"
    )
    mlflow_backend_store_uri: str | None = Field(
        default=None, description="the MLflow server's own database (server side only)"
    )
    mlflow_artifacts_destination: str | None = Field(
        default=None,
        description="where the MLflow server keeps artifacts it proxies (path or s3://...)",
    )
    feast_registry: str | None = None
    airflow_sql_alchemy_conn: str | None = None
    airflow_api_url: str | None = Field(
        default=None, description="the Airflow API server (workers call its execution API)"
    )
    airflow_public_url: str | None = Field(
        default=None,
        description="the Airflow UI as a browser reaches it (links, login redirects); "
        "defaults to airflow_api_url",
    )
    mlflow_public_url: str | None = Field(
        default=None,
        description="the MLflow UI as a browser reaches it (links); defaults to the "
        "tracking server, or to where `closedloop up` serves it in the embedded profile",
    )
    evidently_public_url: str | None = Field(
        default=None,
        description="the Evidently UI as a browser reaches it (links to drift reports)",
    )
    celery_broker_url: str | None = Field(default=None, description="defaults to redis_url")
    celery_result_backend: str | None = None
    closedloop_db: str | None = Field(
        default=None, description="SQLAlchemy URL of closedloop's own tables (promotion ledger)"
    )

    @field_validator("redis_url", "celery_broker_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value and "://" not in value:
            value = f"redis://{value}"
        if value and urlsplit(value).scheme not in ("redis", "rediss"):
            raise ValueError(f"{value!r} is not a redis:// URL")
        return value


#: the events an alert can be about (``closedloop.core.alerts``)
AlertEvent = Literal[
    "quarantined",
    "drift",
    "performance",
    "retraining",
    "promoted",
    "rejected",
    "approval_waiting",
    "task_failed",
    "out_of_band",
]
ALERT_EVENTS: tuple[str, ...] = AlertEvent.__args__  # type: ignore[attr-defined]


class AlertSettings(BaseModel):
    """Where the loop's alerts go (``closedloop.core.alerts``). Webhook URLs are secrets
    (a chat tool's incoming webhook carries its token in the path): set them in the
    environment, e.g. ``CLOSEDLOOP_ALERTS__WEBHOOKS='["https://hooks.example/T0/B0/x"]'``,
    never in a file of this repository."""

    webhooks: list[SecretStr] = Field(
        default_factory=list,
        description="URLs each alert is POSTed to as JSON (env: a JSON list)",
    )
    events: list[AlertEvent] = Field(
        default_factory=lambda: list(ALERT_EVENTS),
        description="the events that alert (default: all)",
    )
    timeout_seconds: float = Field(default=5.0, gt=0, description="per HTTP attempt")
    retries: int = Field(default=2, ge=0, description="further attempts after a failed one")
    backoff_seconds: float = Field(
        default=0.5, ge=0, description="wait before the first retry; doubles with each"
    )
    slack_webhook_conn_id: str | None = Field(
        default=None,
        description="also send through Airflow's SlackWebhookNotifier (if the slack "
        "provider is installed) with this connection",
    )
    smtp_conn_id: str | None = Field(
        default=None, description="also e-mail through Airflow's SmtpNotifier (to smtp_to)"
    )
    smtp_to: list[str] = Field(default_factory=list, description="recipients of the e-mails")


class SparkSettings(BaseModel):
    """Where the data path runs when ``compute`` is ``spark`` (docs/scaling.md): Feast's
    Spark offline store and compute engine, and closedloop's own Spark jobs."""

    master: str = Field(
        default="local[2]",
        description="spark.master: local[N] on this machine; spark://host:7077 for a "
        "standalone cluster, k8s://https://host:443 for Kubernetes",
    )
    conf: dict[str, str] = Field(
        default_factory=dict,
        description="more Spark properties, over closedloop's (spark.executor.memory, "
        "spark.hadoop.fs.s3a.*, ...); env: a JSON object",
    )
    staging_location: str | None = Field(
        default=None,
        description="where Feast's Spark store stages what it exports (a path the "
        "cluster reads); default <home>/spark/staging",
    )
    java_home: Path | None = Field(
        default=None,
        description="the JDK (17 or 21) Spark runs on; default $JAVA_HOME, else the `java` on PATH",
    )
    authenticate_secret: SecretStr | None = Field(
        default=None,
        description="the shared secret of a cluster run with spark.authenticate (the "
        "compose stack's Spark master and workers); from the environment only",
    )
    aggregation_shards: int = Field(
        default=16,
        ge=1,
        le=4096,
        description="shards of the aggregation state, cut by the hash of the entity's key: "
        "a Python worker advances one shard of an interval at a time (its events and "
        "state); a new count rebuilds the state from the event table",
    )
    online_write_partitions: int = Field(
        default=0,
        ge=0,
        description="partitions of a view's rows while they are written to the online "
        "store (Feast's engine `partitions`); 0 keeps Spark's",
    )

    @field_validator("authenticate_secret")
    @classmethod
    def _unset_when_empty(cls, value: SecretStr | None) -> SecretStr | None:
        """An empty variable (compose's ``${VAR:-}``) means no secret."""
        return value if value is not None and value.get_secret_value() else None


#: production: component database -> the StoreSettings field that may name it explicitly
#: (the MLflow server's user store has none: it is always derived)
DATABASE_FIELDS: dict[str, str | None] = {
    "airflow": "airflow_sql_alchemy_conn",
    "mlflow": "mlflow_backend_store_uri",
    "mlflow_auth": None,
    "feast": "feast_registry",
    "closedloop": "closedloop_db",
}
#: where the production profile's servers listen when nothing else is configured
DEFAULT_MLFLOW_URL = "http://127.0.0.1:5000"
DEFAULT_AIRFLOW_API_URL = "http://127.0.0.1:8080"
#: where `closedloop up` serves the Evidently UI
DEFAULT_EVIDENTLY_URL = "http://127.0.0.1:8000"


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
    usecases_dir: Path = Field(
        default=PACKAGE_USECASES,
        description="folder of use-case declarations (<name>.yaml); one set of DAGs each",
    )
    usecase_name: str | None = Field(
        default=None, description="the use case commands act on, when the folder holds several"
    )
    usecase_file: Path | None = Field(
        default=None, description="a declaration outside usecases_dir (overrides usecase_name)"
    )
    feature_repo: Path = PROJECT_ROOT / "feature_repo"
    dags_folder: Path = Field(
        default=PROJECT_ROOT / "dags", description="the DAG folder Airflow parses"
    )
    stores: StoreSettings = StoreSettings()
    alerts: AlertSettings = AlertSettings()
    compute: Literal["local", "spark"] = Field(
        default="local",
        description="where the data path runs: `local` (pandas and Feast's file store in "
        "the task's process) or `spark` (Feast's Spark offline store and compute engine; "
        "`spark.*`)",
    )
    spark: SparkSettings = SparkSettings()
    mlflow_conn_id: str | None = Field(
        default=None,
        description="an Airflow connection (closedloop_mlflow) the DAGs' operators take the "
        "MLflow server and its login from; unset: settings only",
    )
    feast_conn_id: str | None = Field(
        default=None,
        description="an Airflow connection (closedloop_feast) whose extra JSON overrides the "
        "settings of the DAGs' operators; unset: settings only",
    )

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

    @field_validator("home", "usecase_file", "feature_repo", "usecases_dir", "dags_folder")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().resolve()

    # -- the use case --------------------------------------------------------------
    @cached_property
    def usecase(self) -> UseCase:
        return UseCase.from_yaml(self.usecase_path)

    @property
    def usecase_path(self) -> Path:
        """The declaration in use: ``usecase_file``, else ``<usecases_dir>/<usecase_name>
        .yaml``, else the folder's only declaration."""
        if self.usecase_file is not None:
            return self.usecase_file
        found = usecase_files(self.usecases_dir)
        if self.usecase_name is not None:
            if self.usecase_name not in found:
                raise ValueError(
                    f"no use case {self.usecase_name!r} in {self.usecases_dir}; "
                    f"declared: {sorted(found) or 'none'}"
                )
            return found[self.usecase_name]
        if len(found) == 1:
            return next(iter(found.values()))
        raise ValueError(
            f"{len(found)} use cases in {self.usecases_dir} ({', '.join(sorted(found)) or '-'}): "
            "name one (--usecase NAME or CLOSEDLOOP_USECASE_NAME)"
        )

    def for_usecase(self, name: str | None = None, *, file: Path | None = None) -> Settings:
        """These settings for another use case of the folder (or another file)."""
        values = {field: getattr(self, field) for field in type(self).model_fields}
        values.update(usecase_name=name, usecase_file=file)
        return type(self)(**values)

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
    def spark_staging_location(self) -> str:
        return self.spark.staging_location or str(self.home / "spark" / "staging")

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    # -- stores, per profile -------------------------------------------------------
    def database(self, component: str) -> str:
        """Production: the plain ``postgresql://`` URL of one component's database, as
        configured or ``<postgres_url>/<database_prefix><component>``."""
        field = DATABASE_FIELDS[component]
        explicit = getattr(self.stores, field) if field else None
        if explicit:
            return explicit
        if self.stores.postgres_url:
            base = self.stores.postgres_url.rstrip("/")
            return f"{base}/{self.stores.database_prefix}{component}"
        raise ValueError(
            f"profile 'production' needs CLOSEDLOOP_STORES__{(field or 'postgres_url').upper()} "
            "(or CLOSEDLOOP_STORES__POSTGRES_URL for the PostgreSQL ones)"
        )

    @property
    def databases(self) -> dict[str, str]:
        """Production: every component database (``closedloop up`` creates missing ones)."""
        return {component: self.database(component) for component in DATABASE_FIELDS}

    def _redis(self) -> str:
        if self.stores.redis_url:
            return self.stores.redis_url
        raise ValueError("profile 'production' needs CLOSEDLOOP_STORES__REDIS_URL")

    @property
    def feast_registry(self) -> dict[str, Any]:
        # A materialization sets its views MATERIALIZING in the registry until it ends;
        # Feast then refuses them to every reader, offline too: a retrain whose training
        # set was built during the next day's materialization failed (and waited for
        # its retry), and so would online lookups and a view left so by a killed run.
        # The values read meanwhile are the last materialized ones, as without the state.
        serve = {"serve_features_while_materializing": True}
        if self.profile == "embedded":
            return {"registry_type": "file", "path": str(self.feast_dir / "registry.db")} | serve
        url = _driver(self.database("feast"), "psycopg")
        return serve | {
            "registry_type": "sql",
            "path": url,
            "cache_ttl_seconds": 60,
            # refresh in a background thread: no 27 ms refresh spike on a read path
            "cache_mode": "thread",
            # test a pooled connection before using it: after PostgreSQL dropped the
            # connections (a restart, a failover) the first registry call of every
            # process failed, e.g. a materialization between two views
            "sqlalchemy_config_kwargs": {"echo": False, "pool_pre_ping": True},
        }

    @property
    def feast_online_store(self) -> dict[str, Any]:
        if self.profile == "embedded":
            return {"type": "sqlite", "path": str(self.feast_dir / "online.db")}
        return {"type": "redis", "connection_string": feast_redis_connection(self._redis())}

    @property
    def mlflow_tracking_uri(self) -> str:
        """What clients (tasks, CLI, tests) talk to: the tracking server (basic-auth,
        proxied artifacts) in production, or wherever ``stores.mlflow_tracking_uri`` (or
        an MLflow connection) names one; else, in the embedded profile, a file."""
        if self.profile == "embedded" and not self.stores.mlflow_tracking_uri:
            return f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"
        return self.stores.mlflow_tracking_uri or DEFAULT_MLFLOW_URL

    @property
    def mlflow_backend_store_uri(self) -> str:
        """The tracking server's database (the embedded profile has no server)."""
        if self.profile == "embedded":
            return self.mlflow_tracking_uri
        return self.database("mlflow")

    @property
    def mlflow_artifacts_destination(self) -> str:
        return self.stores.mlflow_artifacts_destination or str(self.mlflow_dir / "artifacts")

    @property
    def airflow_sql_alchemy_conn(self) -> str:
        if self.profile == "embedded":
            return f"sqlite:///{self.airflow_home / 'airflow.db'}"
        return _driver(self.database("airflow"), "psycopg2")

    @property
    def airflow_api_url(self) -> str:
        return (self.stores.airflow_api_url or DEFAULT_AIRFLOW_API_URL).rstrip("/")

    @property
    def airflow_public_url(self) -> str:
        return (self.stores.airflow_public_url or self.airflow_api_url).rstrip("/")

    @property
    def mlflow_public_url(self) -> str:
        if self.stores.mlflow_public_url:
            return self.stores.mlflow_public_url.rstrip("/")
        tracking = self.mlflow_tracking_uri
        return (tracking if tracking.startswith("http") else DEFAULT_MLFLOW_URL).rstrip("/")

    @property
    def evidently_public_url(self) -> str:
        return (self.stores.evidently_public_url or DEFAULT_EVIDENTLY_URL).rstrip("/")

    @property
    def reports_dir(self) -> Path:
        """The monitoring reports of this use case, one folder per day."""
        return self.home / "reports" / self.usecase.name

    @property
    def evidently_workspace(self) -> Path:
        return self.home / "evidently"

    @property
    def celery_broker_url(self) -> str:
        return self.stores.celery_broker_url or self._redis()

    @property
    def celery_result_backend(self) -> str:
        explicit = self.stores.celery_result_backend
        return explicit or "db+" + _driver(self.database("airflow"), "psycopg2")

    @property
    def closedloop_db(self) -> str:
        """closedloop's own tables (the promotion ledger, ...)."""
        if self.profile == "embedded":
            return f"sqlite:///{self.home / 'closedloop.db'}"
        return _driver(self.database("closedloop"), "psycopg")

    @property
    def model_name(self) -> str:
        """The registered model's name in MLflow."""
        return self.usecase.model.name

    @property
    def prediction_log_dir(self) -> Path:
        return self.home / "prediction_log" / self.usecase.name

    @property
    def aggregation_state_dir(self) -> Path:
        """Snapshots of the aggregation engine's state, one folder per interval."""
        return self.home / "state" / self.usecase.name

    @property
    def training_dir(self) -> Path:
        return self.home / "training" / self.usecase.name

    def offline_table_dir(self, table: str) -> Path:
        """Folder of one offline table: one Parquet file per data interval."""
        return self.offline_dir / table


def usecase_files(folder: Path) -> dict[str, Path]:
    """Use-case name -> declaration file of a folder (``<name>.yaml``, sorted)."""
    if not folder.is_dir():
        return {}
    return {path.stem: path for path in sorted(folder.glob("*.yaml"))}


def _driver(url: str, driver: str) -> str:
    """``postgresql://...`` with an explicit SQLAlchemy driver (others unchanged)."""
    return url.replace("postgresql://", f"postgresql+{driver}://", 1)


def feast_redis_connection(url: str) -> str:
    """Feast's ``host:port,db=N[,password=..][,ssl=true]`` from a ``redis://`` URL."""
    parts = urlsplit(url)
    out = f"{parts.hostname}:{parts.port or 6379}"
    db = parts.path.strip("/")
    if db:
        out += f",db={int(db)}"
    if parts.password:
        out += f",password={unquote(parts.password)}"
    if parts.scheme == "rediss":
        out += ",ssl=true"
    return out


def load_settings(**overrides: Any) -> Settings:
    """Settings from keyword overrides, the environment and the YAML file."""
    return Settings(**overrides)
