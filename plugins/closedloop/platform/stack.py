"""The production profile as processes: PostgreSQL, Redis, CeleryExecutor, MLflow with
basic-auth; the same DAGs, configured by settings only.

``closedloop stack run <component>`` checks that the component's credentials are in the
environment (no default password anywhere), writes the files it reads them from, and
replaces itself with the component's own command. The compose stack
(``compose/docker-compose.yml``) runs exactly these commands, one per service;
``closedloop stack up`` runs all of them on this machine (:class:`ProductionStack`).
Components (:data:`COMPONENTS`): ``init``, ``mlflow``, ``api-server``, ``scheduler``,
``dag-processor``, ``triggerer`` and ``worker`` (a Celery worker whose forked tasks share
the libraries its main process imported: :mod:`closedloop.platform.celery_config`).

One module of this size: each component's credentials, command, health check and
files side by side, as the compose file mirrors them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from closedloop.core.settings import PROJECT_ROOT
from closedloop.platform.local_airflow import LocalAirflow
from closedloop.platform.runtime import airflow_environ

if TYPE_CHECKING:
    from collections.abc import Iterator

    from closedloop.core.settings import Settings

#: credential -> what it is. Each is read from the environment only.
CREDENTIALS = {
    "MLFLOW_TRACKING_USERNAME": "MLflow user of every client; the server's admin",
    "MLFLOW_TRACKING_PASSWORD": "that user's password",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "signs the MLflow server's sessions and CSRF tokens",
    "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": "encrypts the webhooks' signing secrets the "
    "MLflow server stores (a Fernet key)",
    "CLOSEDLOOP_AIRFLOW_ADMIN_PASSWORD": "password of Airflow's `admin` user",
    "AIRFLOW__API__SECRET_KEY": "signs the Airflow UI's login sessions (FAB auth manager)",
    "AIRFLOW__API_AUTH__JWT_SECRET": "signs Airflow's API and task tokens (64+ characters)",
    "AIRFLOW__CORE__FERNET_KEY": "encrypts Airflow connections and variables",
}
_AIRFLOW_SECRETS = ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY")
_MLFLOW_CLIENT = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")

#: component -> the credentials it refuses to start without
COMPONENTS: dict[str, tuple[str, ...]] = {
    "init": (),
    "mlflow": (
        *_MLFLOW_CLIENT,
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY",
    ),
    "api-server": (
        *_AIRFLOW_SECRETS,
        "CLOSEDLOOP_AIRFLOW_ADMIN_PASSWORD",
        "AIRFLOW__API__SECRET_KEY",
    ),
    "scheduler": _AIRFLOW_SECRETS,
    "dag-processor": _AIRFLOW_SECRETS,
    "triggerer": _AIRFLOW_SECRETS,
    # tasks run here: they log to MLflow and read the registry
    "worker": (*_AIRFLOW_SECRETS, *_MLFLOW_CLIENT),
}
#: the long-running ones, in start order
SERVICES = ("mlflow", "api-server", "scheduler", "dag-processor", "triggerer", "worker")
AIRFLOW_ADMIN = "admin"
#: the production profile's Airflow auth manager: FAB's users and roles, with per-DAG
#: rights (``closedloop users sync``, docs/roles.md)
FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
#: seconds the API server trusts what it read of a token's user (FAB's default: 30): a
#: deleted or deactivated user's tokens are refused within this time
FAB_CACHE_TTL = 10
MIN_JWT_SECRET = 64


class MissingCredentials(RuntimeError):
    """A credential the component needs is not in the environment (or is empty)."""


#: the MLflow server's object store, for an ``s3://`` artifacts destination: optional,
#: so compose passes them empty when there is none (``--profile s3`` runs MinIO)
OBJECT_STORE_VARIABLES = ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


class ObjectStoreUnusable(MissingCredentials):
    """An ``s3://`` artifacts destination the MLflow server could not write to."""


def check_object_store(destination: str, environ) -> None:
    """Refuse an ``s3://`` artifacts destination without boto3 (the ``s3`` extra) or, on an
    S3-compatible server (``MLFLOW_S3_ENDPOINT_URL``, e.g. MinIO), without its access key
    — at start-up, not at the first artifact a training run uploads. On AWS itself the
    key may come from elsewhere (an instance role), so none is required there."""
    import importlib.util

    if urlsplit(destination).scheme != "s3":
        return
    if importlib.util.find_spec("boto3") is None:
        raise ObjectStoreUnusable(
            f"artifacts destination {destination} needs boto3: install closedloop[s3]"
        )
    if environ.get("MLFLOW_S3_ENDPOINT_URL"):
        missing = [n for n in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not environ.get(n)]
        if missing:
            raise ObjectStoreUnusable(
                f"refusing to start mlflow: the object store at "
                f"{environ['MLFLOW_S3_ENDPOINT_URL']} needs {' and '.join(missing)} "
                "(there are no defaults)"
            )


def check_credentials(components: list[str] | tuple[str, ...], environ=None) -> None:
    """Raise :class:`MissingCredentials` naming every missing credential of ``components``."""
    environ = os.environ if environ is None else environ
    needed = dict.fromkeys(name for c in components for name in COMPONENTS[c])
    missing = [name for name in needed if not environ.get(name)]
    if missing:
        lines = "\n".join(f"  {name}: {CREDENTIALS[name]}" for name in missing)
        raise MissingCredentials(
            f"refusing to start {', '.join(components)}: set these in the environment "
            f"(there are no defaults):\n{lines}"
        )
    jwt = environ.get("AIRFLOW__API_AUTH__JWT_SECRET", "")
    if "AIRFLOW__API_AUTH__JWT_SECRET" in needed and len(jwt) < MIN_JWT_SECRET:
        raise MissingCredentials(
            f"AIRFLOW__API_AUTH__JWT_SECRET is {len(jwt)} characters; use {MIN_JWT_SECRET}+"
        )


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def _bind_host(host: str) -> str:
    """Listen on loopback when the URL is on this machine, on every interface otherwise
    (a service name in compose)."""
    return host if host in ("127.0.0.1", "localhost", "::1") else "0.0.0.0"


def production_environ(settings: Settings) -> dict[str, str]:
    """Everything but the credentials that the production profile's processes need:
    Airflow on PostgreSQL with the CeleryExecutor on Redis, and the settings' stores
    spelled out, so that every task resolves the same settings."""
    if settings.profile != "production":
        raise ValueError("the stack runs the 'production' profile (CLOSEDLOOP_PROFILE)")
    api = settings.airflow_api_url
    host, port = _host_port(api, 8080)
    env = {
        **airflow_environ(settings),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": settings.celery_broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": settings.celery_result_backend,
        "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "closedloop.platform.celery_config.CELERY_CONFIG",
        # two cores: two task processes per worker; add workers to scale out
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
        "AIRFLOW__API__HOST": _bind_host(host),
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": settings.airflow_public_url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
        "AIRFLOW__CORE__AUTH_MANAGER": FAB_AUTH_MANAGER,
        "AIRFLOW__FAB__CACHE_TTL": str(FAB_CACHE_TTL),
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.25",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "MLFLOW_REGISTRY_URI": settings.mlflow_tracking_uri,
    }
    for name, value in settings.stores.model_dump(exclude_none=True).items():
        if value != "":
            env[f"CLOSEDLOOP_STORES__{name.upper()}"] = str(value)
    return env


#: the MLflow server's basic-auth configuration, with ``{database_uri}`` to fill in
MLFLOW_AUTH_TEMPLATE = PROJECT_ROOT / "mlflow" / "basic_auth.ini"
#: starts the server with the auth app and proxied artifacts, refusing without credentials
MLFLOW_START_SCRIPT = PROJECT_ROOT / "mlflow" / "server.sh"


def mlflow_auth_config(settings: Settings) -> Path:
    return settings.mlflow_dir / "basic_auth.ini"


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds or points at credentials)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)


def ensure_databases(settings: Settings) -> list[str]:
    """Create every component database that does not exist yet; returns the created ones.

    Idempotent; connects to each server's ``postgres`` maintenance database.
    """
    import psycopg
    from psycopg import sql

    created = []
    for url in settings.databases.values():
        parts = urlsplit(url)
        name = parts.path.lstrip("/")
        admin = parts._replace(path="/postgres").geturl()
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if exists.fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                created.append(name)
    return created


def drop_databases(urls: list[str]) -> None:
    """Drop the databases at ``urls`` (connections to them are closed first): the
    teardown of what :func:`ensure_databases` created, for tests and benchmarks."""
    import psycopg
    from psycopg import sql

    for url in urls:
        parts = urlsplit(url)
        admin = parts._replace(path="/postgres").geturl()
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(parts.path.lstrip("/"))
                )
            )


def component_command(settings: Settings, component: str) -> list[str]:
    """The component's own command line (what ``closedloop stack run`` becomes)."""
    bin_dir = Path(sys.executable).parent
    airflow = str(bin_dir / "airflow")
    if component == "mlflow":
        host, port = _host_port(settings.mlflow_tracking_uri, 5000)
        return [
            "/bin/sh",
            str(MLFLOW_START_SCRIPT),
            str(bin_dir / "mlflow"),
            "--backend-store-uri",
            settings.mlflow_backend_store_uri,
            "--artifacts-destination",
            settings.mlflow_artifacts_destination,
            "--host",
            _bind_host(host),
            "--port",
            str(port),
            # Host headers it answers (DNS-rebinding guard): its own name, and loopback
            # for a UI reached through a published port.
            "--allowed-hosts",
            ",".join(dict.fromkeys(f"{h}:{port},{h}" for h in (host, "localhost", "127.0.0.1"))),
        ]
    if component == "worker":
        return [airflow, "celery", "worker", "--skip-serve-logs"]
    if component == "triggerer":
        return [airflow, "triggerer", "--skip-serve-logs"]
    if component == "init":
        return [airflow, "db", "migrate"]
    if component in COMPONENTS:
        return [airflow, component]
    raise KeyError(f"no component {component!r}; one of {', '.join(COMPONENTS)}")


_JOB_TYPES = {
    "scheduler": "SchedulerJob",
    "dag-processor": "DagProcessorJob",
    "triggerer": "TriggererJob",
}


def health_command(settings: Settings, component: str) -> list[str]:
    """A command that exits 0 while ``component`` (on this host) is healthy: Airflow's own
    job check or a Celery ping, on the production configuration (compose health checks)."""
    airflow = str(Path(sys.executable).parent / "airflow")
    if component in _JOB_TYPES:
        return [airflow, "jobs", "check", "--job-type", _JOB_TYPES[component], "--local"]
    if component == "worker":
        celery = str(Path(sys.executable).parent / "celery")
        app = "airflow.providers.celery.executors.celery_executor.app"
        return [celery, "--app", app, "inspect", "ping", "-d", f"celery@{socket.gethostname()}"]
    raise KeyError(f"{component!r} has an HTTP health endpoint; no command needed")


def run_health_check(settings: Settings, component: str) -> None:
    """Replace this process with ``component``'s health check (never returns)."""
    command = health_command(settings, component)
    os.execve(command[0], command, {**os.environ, **production_environ(settings)})


def prepare(settings: Settings, component: str, environ=None) -> dict[str, str]:
    """Check the component's credentials, write the files it reads them from, and return
    the environment to run it with."""
    environ = dict(os.environ if environ is None else environ)
    check_credentials([component], environ)
    env = {**environ, **production_environ(settings)}
    if component == "init":
        ensure_databases(settings)
    elif component == "mlflow":
        for name in OBJECT_STORE_VARIABLES:
            if not env.get(name):  # an empty endpoint would reach boto3 as a URL
                env.pop(name, None)
        destination = settings.mlflow_artifacts_destination
        check_object_store(destination, env)
        if urlsplit(destination).scheme in ("", "file"):
            Path(destination.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
        config = mlflow_auth_config(settings)
        template = MLFLOW_AUTH_TEMPLATE.read_text()
        _write_private(config, template.format(database_uri=settings.database("mlflow_auth")))
        env.update(
            MLFLOW_AUTH_CONFIG_PATH=str(config),
            MLFLOW_AUTH_ADMIN_USERNAME=environ["MLFLOW_TRACKING_USERNAME"],
            MLFLOW_AUTH_ADMIN_PASSWORD=environ["MLFLOW_TRACKING_PASSWORD"],
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
            # Webhooks (closedloop serve --webhook-url) go to the serving service on the
            # stack's own network: plain HTTP to a private address. Only MLflow's admins
            # may create webhooks (its auth app), so no user can aim one elsewhere.
            MLFLOW_WEBHOOK_ALLOWED_SCHEMES="http,https",
            MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS="true",
            # how long the server trusts its list of webhooks (MLflow's default: 60 s)
            MLFLOW_WEBHOOK_CACHE_TTL="5",
        )
    elif component == "api-server":
        # the admin, created or given the environment's password, before the server starts
        command = [sys.executable, "-m", "closedloop.platform.airflow_admin", AIRFLOW_ADMIN]
        subprocess.run(command, env=env, check=True)
    return env


def run_component(settings: Settings, component: str) -> None:
    """Prepare ``component`` and replace this process with it (never returns)."""
    env = prepare(settings, component)
    command = component_command(settings, component)
    os.execve(command[0], command, env)


def _get(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        raw = response.read()
    try:
        return json.loads(raw)
    except ValueError:
        return {"body": raw.decode(errors="replace")}


def session_processes(sid: int) -> list[int]:
    """Live processes (not zombies) of the session ``sid``: a component started in a
    session of its own and everything it started, also what moved to process groups of
    their own (Airflow's task processes do)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getsid(int(entry)) != sid:
                continue
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            found.append(int(entry))
    return found


@dataclass
class ProductionStack(LocalAirflow):
    """All of the production profile's processes on this machine, on the PostgreSQL and
    Redis servers of ``settings``, driven like :class:`LocalAirflow` over REST."""

    components: tuple[str, ...] = SERVICES
    preload: bool = True
    #: False: no run of the DAGs' own schedules (a test or demo plays the clock)
    use_job_schedule: bool = True
    environ_extra: dict[str, str] = field(default_factory=dict)
    #: component -> when :meth:`supervise` last started it again (monotonic seconds)
    restarted_at: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.port = _host_port(self.settings.airflow_api_url, 8080)[1]

    @property
    def base_url(self) -> str:
        return self.settings.airflow_api_url

    def environ(self) -> dict[str, str]:
        env = {**os.environ, **production_environ(self.settings), **self.environ_extra}
        if not self.use_job_schedule:
            env["AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE"] = "False"
        if not self.preload:
            env["CLOSEDLOOP_PRELOAD"] = "0"
        return env

    def _password(self) -> str:
        return self.environ()["CLOSEDLOOP_AIRFLOW_ADMIN_PASSWORD"]

    def _spawn(self, name: str, env: dict[str, str]) -> subprocess.Popen:
        logs = self.settings.airflow_home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        closedloop = str(Path(sys.executable).with_name("closedloop"))
        with open(logs / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
            return subprocess.Popen(
                [closedloop, "stack", "run", name],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start(self, timeout: float = 300) -> None:
        """Check every credential, create the databases, migrate, start every component,
        and wait until MLflow and Airflow (scheduler, DAG processor, triggerer) are healthy."""
        env = self.environ()
        check_credentials(["init", *self.components], env)
        init = self._spawn("init", env)
        if init.wait(timeout=timeout) != 0:
            log = self.settings.airflow_home / "logs" / "init.log"
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(
                f"closedloop stack run init failed ({init.returncode}); see {log}:\n{tail}"
            )
        try:
            for name in self.components:
                self.processes[name] = self._spawn(name, env)
            deadline = time.monotonic() + timeout
            while not (self._mlflow_healthy() and self._healthy()):
                self.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the stack did not come up within {timeout:.0f}s")
                time.sleep(1)
            self._request("GET", "/execution/health", auth=False, ok=(200, 404))
        except BaseException:
            self.stop()
            raise

    @contextlib.contextmanager
    def starting(self, timeout: float = 300) -> Iterator[None]:
        """Start the stack in a background thread while the ``with`` body runs (e.g.
        loading history into the stores: both take tens of seconds), then wait for it.
        A failed start is raised after the body."""
        failure: list[BaseException] = []

        def start() -> None:
            try:
                self.start(timeout=timeout)
            except BaseException as exc:  # re-raised in the caller's thread
                failure.append(exc)

        starter = threading.Thread(target=start, name="stack-start")
        starter.start()
        try:
            yield
        finally:
            starter.join()
        if failure:
            raise failure[0]

    def check_alive(self) -> None:
        """Raise naming the first component that has exited (and its log); unlike the
        embedded profile's, it leaves the others running (``start`` stops them)."""
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                log = self.settings.airflow_home / "logs" / f"{name}.log"
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {log}")

    def supervise(self, min_interval: float = 10.0) -> list[str]:
        """Start again every component that has exited, as compose's ``restart:
        unless-stopped`` does for the same services. Airflow's scheduler and DAG processor
        exit when PostgreSQL drops their connection in the middle of a query (a restart, a
        failover) and leave starting them again to a supervisor. A component is started
        at most once per ``min_interval`` seconds, so a crash loop does not spin. Returns
        the components started again."""
        env = self.environ()
        restarted = []
        for name, proc in list(self.processes.items()):
            last = self.restarted_at.get(name)
            if proc.poll() is None or (last is not None and time.monotonic() - last < min_interval):
                continue
            self.processes[name] = self._spawn(name, env)
            self.restarted_at[name] = time.monotonic()
            restarted.append(name)
        return restarted

    def _mlflow_healthy(self) -> bool:
        if "mlflow" not in self.processes:
            return True
        try:
            return _get(f"{self.settings.mlflow_tracking_uri}/health").get("body") == "OK"
        except (OSError, urllib.error.URLError):
            return False

    def _healthy(self) -> bool:
        try:
            health = self._request("GET", "/api/v2/monitor/health", auth=False)
        except (OSError, urllib.error.URLError, RuntimeError):
            return False
        wanted = {"scheduler", "dag_processor", "triggerer"} & {
            c.replace("-", "_") for c in self.components
        }
        return all(health.get(c, {}).get("status") == "healthy" for c in wanted)

    def kill(self, component: str, timeout: float = 30) -> list[int]:
        """``kill -9`` a component and every process it started — for the Celery worker its
        pool and the task processes forked from it, which run in process groups of their
        own but stay in its session — as when the machine or container it runs on dies.
        Returns their pids, once every one is gone; :meth:`restart` starts it again."""
        proc = self.processes[component]
        killed: set[int] = set()
        deadline = time.monotonic() + timeout
        while members := session_processes(proc.pid):
            for pid in members:  # again and again: one may fork while we kill
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed.update(members)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{component}: processes {members} outlived SIGKILL")
            proc.poll()  # reap the component itself; init reaps the rest
            time.sleep(0.05)
        proc.wait(timeout=timeout)
        return sorted(killed)

    def restart(self, component: str, timeout: float = 60) -> None:
        """Start a component again with the stack's environment: after :meth:`kill`, or
        stopping it first (SIGTERM to its process group, SIGKILL after ``timeout``).
        Returns once it is started, not when it is ready."""
        proc = self.processes.get(component)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill(component)
        self.processes[component] = self._spawn(component, self.environ())
