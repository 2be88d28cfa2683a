"""The compose stack, checked without a Docker engine: it is a valid Compose file, and its
services, credentials, settings, health checks, volumes and ports agree with the code
(``closedloop.platform.stack``, ``closedloop.core.settings``) — and no secret is in the
repository."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from closedloop.cli import main as cli
from closedloop.core.settings import (
    PROJECT_ROOT,
    Settings,
    SparkSettings,
    StoreSettings,
    load_settings,
)
from closedloop.platform.stack import COMPONENTS, CREDENTIALS

COMPOSE = PROJECT_ROOT / "compose" / "docker-compose.yml"
ENV_EXAMPLE = PROJECT_ROOT / "compose" / ".env.example"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")
#: what a user needs from outside: the two UIs and the prediction service
PUBLISHED = {"airflow-api-server", "mlflow", "serving"}
#: the object store's access key (optional: only with an s3:// artifacts destination),
#: by the name each service reads it under -> the compose variable it comes from
OBJECT_STORE_KEYS = {
    "AWS_ACCESS_KEY_ID": "S3_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY": "S3_SECRET_ACCESS_KEY",
    "MINIO_ROOT_USER": "S3_ACCESS_KEY_ID",
    "MINIO_ROOT_PASSWORD": "S3_SECRET_ACCESS_KEY",
}
#: the Spark cluster's shared secret (optional: only with the `spark` profile), by the
#: name each service reads it under -> the compose variable it comes from
SPARK_SECRET_KEYS = {
    "SPARK_AUTHENTICATE_SECRET": "SPARK_AUTHENTICATE_SECRET",
    "CLOSEDLOOP_SPARK__AUTHENTICATE_SECRET": "SPARK_AUTHENTICATE_SECRET",
}
#: the Spark cluster set-up .env.example documents
SPARK_SETUP = {
    "CLOSEDLOOP_COMPUTE": "spark",
    "CLOSEDLOOP_SPARK__MASTER": "spark://spark-master:7077",
}
#: the MinIO set-up .env.example documents
S3_SETUP = {
    "MLFLOW_ARTIFACTS_DESTINATION": "s3://mlflow/artifacts",
    "MLFLOW_S3_ENDPOINT_URL": "http://minio:9000",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``, then ``$$``."""

    def one(match: re.Match) -> str:
        name, op, arg = match.groups()
        if env.get(name):
            return env[name]
        if op and op.endswith("-"):
            return arg
        raise KeyError(f"{name} unset: {arg}")

    return VARIABLE.sub(one, value).replace("$$", "$")


def _component(service: dict) -> str | None:
    command = service.get("command") or []
    return command[2] if command[:2] == ["stack", "run"] else None


def test_is_a_valid_compose_file():
    checker = Path(sys.executable).with_name("check-jsonschema")
    done = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_one_service_per_component_with_exactly_its_credentials(services):
    by_component = {_component(s): name for name, s in services.items() if _component(s)}
    assert set(by_component) == set(COMPONENTS)
    for component, name in by_component.items():
        given = set(services[name].get("environment", {})) & set(CREDENTIALS)
        assert given == set(COMPONENTS[component]), name
    stack = cli.commands["stack"].commands
    assert {"run", "health", "up"} <= set(stack)


def test_credentials_come_only_from_the_environment(services):
    """Every credential is ``${VAR:?...}``: compose refuses to start without it. The
    optional object store's key is ``${VAR:-}``, empty unless set, never a value."""
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            optional = OBJECT_STORE_KEYS | SPARK_SECRET_KEYS
            if key in optional:
                assert value == f"${{{optional[key]}:-}}", (name, key, value)
                continue
            secret = key in CREDENTIALS or "PASSWORD" in key or "SECRET" in key
            if secret:
                assert re.fullmatch(rf"\$\{{{key}:\?[^}}]+\}}", str(value)), (name, key, value)
    text = COMPOSE.read_text()
    for url in re.findall(r"(?:postgresql|redis)://[^\s\"']+", text):
        password = urlsplit(url).password
        assert password is None or password.startswith("${"), url


def test_env_example_lists_every_variable_and_holds_no_secret(compose):
    example = _example()
    used = {m.group(1) for m in VARIABLE.finditer(COMPOSE.read_text())}
    assert used == set(example), used ^ set(example)
    for key, value in example.items():
        if key in CREDENTIALS or "PASSWORD" in key or "SECRET" in key or "KEY" in key:
            assert value == "", f"{key} has a value in .env.example"
    tracked = subprocess.run(
        ["git", "ls-files", "compose"], cwd=PROJECT_ROOT, capture_output=True, text=True
    ).stdout.split()
    assert "compose/.env" not in tracked


def test_settings_of_the_services_point_at_the_services(services, tmp_path):
    env = {key: value or f"x{key.lower()}" for key, value in _example().items()}
    settings_env = {
        key: _interpolate(str(value), env)
        for key, value in services["airflow-worker"]["environment"].items()
        if key.startswith("CLOSEDLOOP_")
    }
    fields = set(Settings.model_fields)
    stores = {
        k.removeprefix("CLOSEDLOOP_STORES__").lower()
        for k in settings_env
        if k.startswith("CLOSEDLOOP_STORES__")
    }
    assert stores <= set(StoreSettings.model_fields), stores - set(StoreSettings.model_fields)
    spark = {
        k.removeprefix("CLOSEDLOOP_SPARK__").lower()
        for k in settings_env
        if k.startswith("CLOSEDLOOP_SPARK__")
    }
    assert spark <= set(SparkSettings.model_fields), spark - set(SparkSettings.model_fields)
    assert {k for k in settings_env if "__" in k} == {
        *(f"CLOSEDLOOP_STORES__{k.upper()}" for k in stores),
        *(f"CLOSEDLOOP_SPARK__{k.upper()}" for k in spark),
    }
    top = {k.removeprefix("CLOSEDLOOP_").lower() for k in settings_env if "__" not in k}
    assert top - {"airflow_admin_password"} <= fields
    nested: dict = {}
    for key, value in settings_env.items():
        if key.startswith("CLOSEDLOOP_STORES__"):
            nested[key.removeprefix("CLOSEDLOOP_STORES__").lower()] = value
    settings = load_settings(
        profile=settings_env["CLOSEDLOOP_PROFILE"], home=tmp_path, stores=nested
    )
    assert urlsplit(settings.database("airflow")).hostname == "postgres"
    assert urlsplit(settings.stores.redis_url).hostname == "redis"
    assert settings.feast_online_store["connection_string"].startswith("redis:6379,db=0,password=")
    for url, service in (
        (settings.mlflow_tracking_uri, "mlflow"),
        (settings.airflow_api_url, "airflow-api-server"),
    ):
        assert urlsplit(url).hostname == service and service in services
        port = str(urlsplit(url).port)
        published = [p.rsplit(":", 1)[1] for p in services[service].get("ports", [])]
        assert published == [port], (service, published)
    home = services["airflow-worker"]["volumes"][0].split(":")[1]
    assert settings_env["CLOSEDLOOP_HOME"] == home


def _one_shot(service: dict) -> bool:
    """A service that does its job and exits (``init``, ``minio-init``)."""
    return service.get("restart") == "no"


def test_health_checks_and_dependencies(services):
    assert _one_shot(services["init"])
    for name, service in services.items():
        if not _one_shot(service):
            assert "healthcheck" in service, name
            test = service["healthcheck"]["test"]
            if test[1:4] == ["closedloop", "stack", "health"]:
                assert test[4] == _component(service)
        for needed, how in (service.get("depends_on") or {}).items():
            assert needed in services, (name, needed)
            done = _one_shot(services[needed])
            wanted = "service_completed_successfully" if done else "service_healthy"
            assert how["condition"] == wanted, (name, needed)
            # a service of every stack may wait for an optional one only if it is there
            optional = set(services[needed].get("profiles", [])) - set(service.get("profiles", []))
            assert how.get("required", True) is not bool(optional), (name, needed)
    for name, service in services.items():
        if _component(service) not in (None, "init"):
            assert "init" in service["depends_on"], name


def test_named_volumes_only_and_only_needed_ports_on_loopback(compose, services):
    declared = set(compose["volumes"])
    used = set()
    for name, service in services.items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            assert not source.startswith((".", "/", "~")), f"{name} bind-mounts {source}"
            used.add(source)
        ports = service.get("ports", [])
        if name in PUBLISHED:
            assert ports and all(p.startswith("127.0.0.1:") for p in ports), (name, ports)
        else:
            assert not ports, f"{name} publishes {ports}"
        assert "network_mode" not in service and "privileged" not in service
    assert used == declared


def test_images_are_pinned_and_the_project_image_is_built_from_the_dockerfile(services):
    for name, service in services.items():
        image = service["image"]
        if "build" in service:
            assert service["build"]["dockerfile"] == "Dockerfile"
            assert (COMPOSE.parent / service["build"]["context"]).resolve() == DOCKERFILE.parent
        else:
            assert ":" in image and not image.endswith(":latest"), name
    docker = DOCKERFILE.read_text()
    assert "requirements.lock" in docker
    assert re.search(r"^USER (?!root)\S+", docker, re.M), "the image runs as a non-root user"
    assert 'ENTRYPOINT ["closedloop"]' in docker
    assert "PASSWORD" not in docker and "SECRET" not in docker
    serve = services["serving"]["command"]
    assert serve[0] == "serve"
    if "serve" in cli.commands:  # the serving service's command, where it exists
        options = {o for p in cli.commands["serve"].params for o in p.opts}
        assert {"--host", "--port"} <= options


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).with_name("hadolint")
    done = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_s3_profile_runs_minio_for_the_mlflow_server_only(compose, services):
    s3 = {name for name, service in services.items() if "s3" in service.get("profiles", [])}
    assert s3 == {"minio", "minio-init"}
    minio = services["minio"]
    assert "minio-data:/data" in minio["volumes"] and "minio-data" in compose["volumes"]
    assert minio["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    assert "ports" not in minio  # only the MLflow server talks to it, on the stack's network
    assert services["mlflow"]["depends_on"]["minio-init"]["required"] is False
    # clients never hold the object store's key: artifacts go through the MLflow server
    for name, service in services.items():
        has_key = set(OBJECT_STORE_KEYS) & set(service.get("environment") or {})
        assert bool(has_key) == (name in {"mlflow", *s3}), name
    text = ENV_EXAMPLE.read_text()
    assert all(f"{key}={value}" in text for key, value in S3_SETUP.items())


def test_the_documented_s3_setup_starts_mlflow_on_minio(services, tmp_path, monkeypatch):
    """The mlflow service's environment, filled in as .env.example says for MinIO, gives
    the server an s3:// destination on the minio service, with the key MinIO runs with."""
    from closedloop.platform.stack import component_command, prepare

    monkeypatch.chdir(tmp_path)
    env = {key: value or f"x{key.lower()}" for key, value in _example().items()}
    env.update(S3_SETUP)
    service_env = {
        key: _interpolate(str(value), env)
        for key, value in services["mlflow"]["environment"].items()
    }
    service_env["CLOSEDLOOP_HOME"] = str(tmp_path / "home")  # not the container's path
    stores = {
        key.removeprefix("CLOSEDLOOP_STORES__").lower(): value
        for key, value in service_env.items()
        if key.startswith("CLOSEDLOOP_STORES__")
    }
    settings = load_settings(profile="production", home=tmp_path / "home", stores=stores)
    server_env = prepare(settings, "mlflow", service_env)
    command = component_command(settings, "mlflow")
    assert (
        command[command.index("--artifacts-destination") + 1]
        == S3_SETUP["MLFLOW_ARTIFACTS_DESTINATION"]
    )
    endpoint = urlsplit(server_env["MLFLOW_S3_ENDPOINT_URL"])
    assert endpoint.hostname in services and "s3" in services[endpoint.hostname]["profiles"]
    minio_env = {
        key: _interpolate(str(value), env)
        for key, value in services["minio"]["environment"].items()
    }
    assert server_env["AWS_ACCESS_KEY_ID"] == minio_env["MINIO_ROOT_USER"]
    assert server_env["AWS_SECRET_ACCESS_KEY"] == minio_env["MINIO_ROOT_PASSWORD"]


def _fake(bin_dir: Path, name: str) -> None:
    """A stand-in for one of an image's programs that prints how it was called (and
    the variables the services export for them)."""
    path = bin_dir / name
    shown = "SPARK_DAEMON_JAVA_OPTS" if name == "spark-class" else "MC_HOST_store"
    path.write_text(f'#!/bin/sh\necho "{name} $* {shown}=${shown}"\n')
    path.chmod(0o755)


def _run_service_command(service: dict, environment: dict, tmp_path: Path):
    """The service's entrypoint + command under a real ``sh``, its programs faked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("minio", "mc", "spark-class"):
        _fake(bin_dir, name)
    script = service["command"][0].replace("$$", "$")
    assert service["entrypoint"] == ["/bin/sh", "-c"]
    return subprocess.run(
        ["sh", "-c", script],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", **environment},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    "environment",
    [
        pytest.param({}, id="no-key"),
        pytest.param({"MINIO_ROOT_USER": "ops"}, id="no-password"),
        pytest.param({"MINIO_ROOT_USER": "", "MINIO_ROOT_PASSWORD": "p" * 12}, id="empty-user"),
    ],
)
def test_minio_refuses_to_start_without_its_key(services, tmp_path, environment):
    """MinIO would fall back to its well-known default pair: the command refuses first."""
    done = _run_service_command(services["minio"], environment, tmp_path)
    assert done.returncode != 0 and "minio server" not in done.stdout
    assert "S3_ACCESS_KEY_ID" in done.stderr
    started = _run_service_command(
        services["minio"], {"MINIO_ROOT_USER": "ops", "MINIO_ROOT_PASSWORD": "p" * 12}, tmp_path
    )
    assert started.returncode == 0 and started.stdout.startswith("minio server /data")


@pytest.mark.parametrize(
    ("destination", "bucket"),
    [
        pytest.param("s3://mlflow/artifacts", "mlflow", id="bucket-and-prefix"),
        pytest.param("s3://artifacts", "artifacts", id="bucket-only"),
        pytest.param("/var/lib/closedloop/mlflow/artifacts", None, id="not-s3"),
        pytest.param("", None, id="unset"),
    ],
)
def test_minio_init_creates_the_destinations_bucket(services, tmp_path, destination, bucket):
    environment = {
        "MLFLOW_ARTIFACTS_DESTINATION": destination,
        "MINIO_ROOT_USER": "ops",
        "MINIO_ROOT_PASSWORD": "p" * 12,
    }
    done = _run_service_command(services["minio-init"], environment, tmp_path)
    if bucket is None:
        assert done.returncode != 0 and "MLFLOW_ARTIFACTS_DESTINATION" in done.stderr
        assert "mc " not in done.stdout
    else:
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [
            "mc",
            "mb",
            "--ignore-existing",
            f"store/{bucket}",
            f"MC_HOST_store=http://ops:{'p' * 12}@minio:9000",
        ]


def test_the_spark_profile_runs_a_master_and_workers_of_the_closedloop_image(services):
    spark = {name for name, service in services.items() if "spark" in service.get("profiles", [])}
    assert spark == {"spark-master", "spark-worker"}
    worker_home = services["airflow-worker"]["volumes"]
    for name in spark:
        service = services[name]
        # the executors' Python is the image's: Feast, the model's libraries, closedloop
        assert service["image"] == services["airflow-worker"]["image"]
        assert service["build"] == services["airflow-worker"]["build"]
        # the offline tables at the same path as where the driver names them
        assert service["volumes"] == worker_home
        assert "ports" not in service
    master = services["spark-master"]["command"][0]
    assert "--host spark-master --port 7077" in master
    worker = services["spark-worker"]["command"][0]
    assert worker.endswith(SPARK_SETUP["CLOSEDLOOP_SPARK__MASTER"])
    assert services["spark-worker"]["depends_on"]["spark-master"]["condition"] == "service_healthy"
    text = ENV_EXAMPLE.read_text()
    assert all(f"{key}={value}" in text for key, value in SPARK_SETUP.items())


@pytest.mark.parametrize("name", ["spark-master", "spark-worker"])
def test_the_spark_cluster_refuses_to_start_without_its_secret(services, tmp_path, name):
    """An unauthenticated Spark master runs what any client on the network sends it."""
    done = _run_service_command(services[name], {"SPARK_AUTHENTICATE_SECRET": ""}, tmp_path)
    assert done.returncode != 0 and "spark-class" not in done.stdout
    assert "SPARK_AUTHENTICATE_SECRET" in done.stderr
    secret = "s" * 32
    started = _run_service_command(services[name], {"SPARK_AUTHENTICATE_SECRET": secret}, tmp_path)
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("spark-class org.apache.spark.deploy.")
    options = f"-Dspark.authenticate=true -Dspark.authenticate.secret={secret}"
    assert f"SPARK_DAEMON_JAVA_OPTS={options}" in started.stdout


def test_the_documented_spark_setup_makes_the_worker_a_driver_of_the_cluster(services):
    from closedloop.core.spark import spark_conf

    env = {key: value or f"x{key.lower()}" for key, value in _example().items()}
    env.update(SPARK_SETUP, SPARK_AUTHENTICATE_SECRET="s" * 32)
    worker_env = {
        key: _interpolate(str(value), env)
        for key, value in services["airflow-worker"]["environment"].items()
        if key.startswith("CLOSEDLOOP_SPARK__") or key == "CLOSEDLOOP_COMPUTE"
    }
    settings = load_settings(
        compute=worker_env["CLOSEDLOOP_COMPUTE"],
        spark={
            "master": worker_env["CLOSEDLOOP_SPARK__MASTER"],
            "authenticate_secret": worker_env["CLOSEDLOOP_SPARK__AUTHENTICATE_SECRET"],
        },
    )
    conf = spark_conf(settings)
    assert conf["spark.master"] == "spark://spark-master:7077"
    assert conf["spark.authenticate"] == "true"
    assert conf["spark.authenticate.secret"] == "s" * 32
    assert "spark.driver.host" not in conf  # the executors reach the worker by its name
    # without the spark profile's secret, the worker's settings hold none
    env.update(SPARK_AUTHENTICATE_SECRET="")
    empty = _interpolate(
        services["airflow-worker"]["environment"]["CLOSEDLOOP_SPARK__AUTHENTICATE_SECRET"], env
    )
    assert load_settings(spark={"authenticate_secret": empty}).spark.authenticate_secret is None
