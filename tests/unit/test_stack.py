"""The production stack's start-up rules, without servers: credentials from the
environment or no start, the component commands follow the settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from closedloop.core.settings import PROJECT_ROOT, load_settings
from closedloop.platform.stack import (
    COMPONENTS,
    CREDENTIALS,
    MissingCredentials,
    check_credentials,
    component_command,
    production_environ,
)

CLOSEDLOOP = str(Path(sys.executable).with_name("closedloop"))


@pytest.fixture
def production(tmp_path: Path):
    return load_settings(
        home=tmp_path,
        profile="production",
        stores={
            "postgres_url": "postgresql://cl@db:5432",
            "redis_url": "redis://cache:6379/1",
            "mlflow_tracking_uri": "http://mlflow:5000",
            "airflow_api_url": "http://airflow-api:8080",
        },
    )


def test_every_needed_credential_is_named_when_missing():
    with pytest.raises(MissingCredentials) as caught:
        check_credentials(list(COMPONENTS), environ={"MLFLOW_TRACKING_USERNAME": "ops"})
    message = str(caught.value)
    for name in set(CREDENTIALS) - {"MLFLOW_TRACKING_USERNAME"}:
        assert name in message
    assert "MLFLOW_TRACKING_USERNAME:" not in message


def test_an_empty_credential_or_a_short_jwt_secret_is_refused():
    environ = {name: "x" * 80 for name in CREDENTIALS}
    check_credentials(list(COMPONENTS), environ=environ)  # all there: no error
    with pytest.raises(MissingCredentials, match="CLOSEDLOOP_AIRFLOW_ADMIN_PASSWORD"):
        check_credentials(
            ["api-server"], environ={**environ, "CLOSEDLOOP_AIRFLOW_ADMIN_PASSWORD": ""}
        )
    with pytest.raises(MissingCredentials, match="64"):
        check_credentials(
            ["scheduler"], environ={**environ, "AIRFLOW__API_AUTH__JWT_SECRET": "short"}
        )


def test_each_component_asks_only_for_what_it_uses():
    assert "CLOSEDLOOP_AIRFLOW_ADMIN_PASSWORD" not in COMPONENTS["mlflow"]
    assert "MLFLOW_TRACKING_PASSWORD" in COMPONENTS["worker"]  # tasks log to MLflow
    assert set(COMPONENTS["init"]) == set()


@pytest.mark.parametrize("component", ["mlflow", "api-server", "worker"])
def test_stack_run_refuses_to_start_without_credentials(tmp_path: Path, component: str):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in CREDENTIALS and k != "MLFLOW_AUTH_ADMIN_PASSWORD"
    }
    env.update(
        CLOSEDLOOP_HOME=str(tmp_path),
        CLOSEDLOOP_PROFILE="production",
        CLOSEDLOOP_STORES__POSTGRES_URL="postgresql://nobody@127.0.0.1:1",
        CLOSEDLOOP_STORES__REDIS_URL="redis://127.0.0.1:1/0",
    )
    done = subprocess.run(
        [CLOSEDLOOP, "stack", "run", component], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "refusing to start" in done.stderr
    for name in COMPONENTS[component]:
        assert name in done.stderr
    assert not (tmp_path / "mlflow" / "basic_auth.ini").exists()  # refused before writing


def test_commands_follow_the_settings(production):
    mlflow = component_command(production, "mlflow")
    assert mlflow[:2] == ["/bin/sh", str(PROJECT_ROOT / "mlflow" / "server.sh")]
    assert Path(mlflow[2]).name == "mlflow"
    assert mlflow[mlflow.index("--backend-store-uri") + 1] == "postgresql://cl@db:5432/mlflow"
    # A service name in the URL: listen on every interface of the container.
    assert mlflow[mlflow.index("--host") + 1] == "0.0.0.0"
    assert mlflow[mlflow.index("--port") + 1] == "5000"
    assert component_command(production, "worker")[1:] == ["celery", "worker", "--skip-serve-logs"]
    with pytest.raises(KeyError):
        component_command(production, "webserver")


def test_production_environ_is_celery_on_postgres_and_redis(production):
    env = production_environ(production)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://cache:6379/1"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "postgresql+psycopg2://cl@db:5432/airflow"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-api:8080/execution/"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    # Tasks resolve the same settings from the environment.
    assert env["CLOSEDLOOP_STORES__REDIS_URL"] == "redis://cache:6379/1"
    assert not set(env) & set(CREDENTIALS), "credentials are passed through, never generated"


def test_embedded_settings_are_not_a_stack(tmp_path: Path):
    with pytest.raises(ValueError, match="production"):
        production_environ(load_settings(home=tmp_path))


def test_stack_up_refuses_before_touching_any_server(tmp_path: Path):
    """Every credential of every component is checked before the first process starts."""
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIALS}
    env.update(
        CLOSEDLOOP_HOME=str(tmp_path),
        CLOSEDLOOP_PROFILE="production",
        # nothing listens here: reaching it would fail differently
        CLOSEDLOOP_STORES__POSTGRES_URL="postgresql://nobody@127.0.0.1:1",
        CLOSEDLOOP_STORES__REDIS_URL="redis://127.0.0.1:1/0",
        AIRFLOW__API_AUTH__JWT_SECRET="j" * 64,
    )
    done = subprocess.run(
        [CLOSEDLOOP, "stack", "up"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "refusing to start" in done.stderr
    missing = set(CREDENTIALS) - {"AIRFLOW__API_AUTH__JWT_SECRET"}
    assert all(name in done.stderr for name in missing), done.stderr
    assert "AIRFLOW__API_AUTH__JWT_SECRET:" not in done.stderr
    assert not (tmp_path / "airflow" / "logs" / "init.log").exists(), "nothing was started"


@pytest.mark.parametrize(("ci", "outcome"), [("true", "1 error"), ("", "1 skipped")])
def test_production_suite_fails_in_ci_when_a_server_is_missing(ci: str, outcome: str):
    """tests/production against a PostgreSQL that is not there: an error under CI, a skip
    on a developer's machine."""
    env = {**os.environ, "CI": ci, "CLOSEDLOOP_TEST_POSTGRES_URL": "postgresql://x@127.0.0.1:1"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "require_login"],
        cwd=Path(__file__).resolve().parents[2] / "tests" / "production",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert outcome in done.stdout, done.stdout[-3000:]
    assert "PostgreSQL is not reachable" in done.stdout
    assert (done.returncode != 0) == bool(ci)


def test_airflow_env_prints_the_production_configuration(tmp_path: Path):
    env = {
        **os.environ,
        "CLOSEDLOOP_HOME": str(tmp_path),
        "CLOSEDLOOP_PROFILE": "production",
        "CLOSEDLOOP_STORES__POSTGRES_URL": "postgresql://cl@db:5432",
        "CLOSEDLOOP_STORES__REDIS_URL": "redis://cache:6379/1",
    }
    done = subprocess.run(
        [CLOSEDLOOP, "airflow-env"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert 'export AIRFLOW__CORE__EXECUTOR="CeleryExecutor"' in done.stdout
    assert "postgresql+psycopg2://cl@db:5432/airflow" in done.stdout


def test_task_retry_delay_is_30_seconds_unless_the_environment_sets_it(production, monkeypatch):
    """The DAGs take their retry delay from ``[core] default_task_retry_delay``; a
    deployment (or the worker-fault tests) sets it once, for every component."""
    monkeypatch.delenv("AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY", raising=False)
    assert production_environ(production)["AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY"] == "30"
    monkeypatch.setenv("AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY", "2")
    assert production_environ(production)["AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY"] == "2"


def test_kill_takes_a_component_with_everything_it_started(production):
    """As a dead machine would: also what moved to a process group of its own (Airflow's
    task processes do), which a signal to the component's group would miss."""
    import time

    from closedloop.platform.stack import ProductionStack, session_processes

    grandchild = "import os, time; os.setpgid(0, 0); time.sleep(60)"
    script = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', {grandchild!r}])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], start_new_session=True, stdout=subprocess.PIPE, text=True
    )
    child = int(proc.stdout.readline())
    deadline = time.monotonic() + 10
    while os.getpgid(child) == proc.pid:  # until it has its own group
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stack = ProductionStack(production)
    stack.processes["worker"] = proc

    killed = stack.kill("worker")

    assert {proc.pid, child} <= set(killed)
    assert session_processes(proc.pid) == []
    assert proc.returncode == -9
    proc.stdout.close()


def test_the_mlflow_server_reads_the_repositorys_auth_template_filled_in_and_private(
    tmp_path: Path,
):
    """mlflow/basic_auth.ini is the server's configuration: prepare fills in the
    permissions database (its password only in the written file, readable by its owner)
    and points MLflow at it."""
    import configparser
    import stat

    from closedloop.platform.stack import MLFLOW_AUTH_TEMPLATE, prepare

    settings = load_settings(
        home=tmp_path,
        profile="production",
        stores={
            "postgres_url": "postgresql://cl:pw-from-env@db:5432",
            "redis_url": "redis://cache:6379/1",
            "mlflow_tracking_uri": "http://mlflow:5000",
            "mlflow_artifacts_destination": str(tmp_path / "artifacts"),
        },
    )
    environ = {name: "x" * 80 for name in CREDENTIALS}
    env = prepare(settings, "mlflow", environ)
    written = Path(env["MLFLOW_AUTH_CONFIG_PATH"])
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    config = configparser.ConfigParser()
    config.read(written)
    template = configparser.ConfigParser(interpolation=None)
    template.read(MLFLOW_AUTH_TEMPLATE)
    assert dict(config["mlflow"]) == {
        **dict(template["mlflow"]),
        "database_uri": "postgresql://cl:pw-from-env@db:5432/mlflow_auth",
    }
    assert config["mlflow"]["default_permission"] == "NO_PERMISSIONS"
    assert "pw-from-env" not in MLFLOW_AUTH_TEMPLATE.read_text()
    assert env["MLFLOW_AUTH_ADMIN_USERNAME"] == environ["MLFLOW_TRACKING_USERNAME"]


def test_the_mlflow_conventions_name_every_tag_key_closedloop_uses():
    from closedloop.core import tags
    from closedloop.core.settings import PROJECT_ROOT

    conventions = (PROJECT_ROOT / "mlflow" / "conventions.md").read_text()
    keys = [v for k, v in vars(tags).items() if k.isupper() and k != "PREFIX"]
    assert len(keys) >= 15
    assert [k for k in keys if f"`{k}`" not in conventions] == []
    for alias in ("champion", "challenger", "previous"):
        assert f"`{alias}`" in conventions


SERVER_SCRIPT = PROJECT_ROOT / "mlflow" / "server.sh"


@pytest.fixture
def start_script_env(tmp_path):
    """What `stack run mlflow` hands the start script, and a program that prints its
    arguments in place of MLflow's (the real server runs in tests/production)."""
    config = tmp_path / "basic_auth.ini"
    config.write_text("[mlflow]\n")
    config.chmod(0o600)
    program = tmp_path / "mlflow"
    program.write_text('#!/bin/sh\necho "$@"\n')
    program.chmod(0o755)
    env = {
        "PATH": os.environ["PATH"],
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "not-a-default",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "k",
    }
    return env, program, config


def _start(env, program, *args):
    return subprocess.run(
        ["/bin/sh", str(SERVER_SCRIPT), str(program), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_start_script_runs_the_auth_app_with_proxied_artifacts(start_script_env):
    env, program, _ = start_script_env
    done = _start(env, program, "--port", "5000")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "server",
        "--app-name",
        "basic-auth",
        "--serve-artifacts",
        "--workers",
        "1",
        "--port",
        "5000",
    ]


@pytest.mark.parametrize(
    "breakage, named",
    [
        ("no config", "MLFLOW_AUTH_CONFIG_PATH"),
        ("config readable by others", "chmod 600"),
        ("no admin password", "MLFLOW_AUTH_ADMIN_PASSWORD"),
        ("no secret key", "MLFLOW_FLASK_SERVER_SECRET_KEY"),
    ],
)
def test_the_start_script_refuses_a_server_without_auth(start_script_env, breakage, named):
    env, program, config = start_script_env
    if breakage == "no config":
        env.pop("MLFLOW_AUTH_CONFIG_PATH")
    elif breakage == "config readable by others":
        config.chmod(0o644)
    elif breakage == "no admin password":
        env["MLFLOW_AUTH_ADMIN_PASSWORD"] = ""
    else:
        env.pop("MLFLOW_FLASK_SERVER_SECRET_KEY")
    done = _start(env, program)
    assert done.returncode == 2
    assert "refusing to start" in done.stderr and named in done.stderr
    assert done.stdout == ""  # the program never ran
