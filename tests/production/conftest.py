"""The production profile against this machine's real PostgreSQL and Redis.

Each test session gets its own databases (``cltest_<random>_<component>``) and a Redis
database of its own (claimed with a marker key, flushed afterwards), random credentials,
and a private home folder; everything is dropped at the end. A missing server is a
failure when ``CI`` is set, a skip otherwise.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

POSTGRES_URL = os.environ.get(
    "CLOSEDLOOP_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432"
)
REDIS_URL = os.environ.get("CLOSEDLOOP_TEST_REDIS_URL", "redis://127.0.0.1:6379")
CLAIM_KEY = "closedloop:test-claim"


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or default_port), timeout=3):
            return True
    except OSError:
        return False


def require(url: str, default_port: int, what: str) -> None:
    """Fail (in CI) or skip (elsewhere) when ``what`` does not answer at ``url``."""
    if _reachable(url, default_port):
        return
    message = f"{what} is not reachable at {url}"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must provide it", pytrace=False)
    pytest.skip(message)


def random_credentials() -> dict[str, str]:
    """Fresh values for every credential the stack refuses to start without."""
    from cryptography.fernet import Fernet

    return {
        "MLFLOW_TRACKING_USERNAME": f"admin_{secrets.token_hex(3)}",
        "MLFLOW_TRACKING_PASSWORD": secrets.token_urlsafe(24),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32),
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "CLOSEDLOOP_AIRFLOW_ADMIN_PASSWORD": secrets.token_urlsafe(24),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
    }


def claim_redis_db(base_url: str) -> int:
    """An empty Redis database, marked as this session's (``SET NX`` of a marker key)."""
    import redis

    token = secrets.token_hex(8)
    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{base_url.rstrip('/')}/{db}")
        try:
            if client.dbsize() == 0 and client.set(CLAIM_KEY, token, nx=True, ex=3600):
                if client.dbsize() == 1:
                    return db
                client.delete(CLAIM_KEY)
        finally:
            client.close()
    pytest.fail("no empty Redis database (1-15) to run the production suite in")


def release_redis_db(base_url: str, db: int) -> None:
    import redis

    client = redis.Redis.from_url(f"{base_url.rstrip('/')}/{db}")
    try:
        client.flushdb()
    finally:
        client.close()


@pytest.fixture(scope="module")
def production_env():
    """The environment of a production-profile session: own databases, own Redis
    database, own home, random credentials — put into this process's environment (the
    Feast declarations and MLflow's client read it) and removed afterwards.

    Module-scoped, not session-scoped: ``pytest tests`` runs ``tests/unit`` after this
    folder, and those tests must see the embedded profile again."""
    from closedloop.platform.local_airflow import free_port

    require(POSTGRES_URL, 5432, "PostgreSQL")
    require(REDIS_URL, 6379, "Redis")
    db = claim_redis_db(REDIS_URL)
    home = Path(tempfile.mkdtemp(prefix="closedloop-prod-"))
    prefix = f"cltest_{secrets.token_hex(4)}_"
    env = {
        "CLOSEDLOOP_HOME": str(home),
        "CLOSEDLOOP_PROFILE": "production",
        "CLOSEDLOOP_STORES__POSTGRES_URL": POSTGRES_URL,
        "CLOSEDLOOP_STORES__DATABASE_PREFIX": prefix,
        "CLOSEDLOOP_STORES__REDIS_URL": f"{REDIS_URL.rstrip('/')}/{db}",
        "CLOSEDLOOP_STORES__MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
        "CLOSEDLOOP_STORES__AIRFLOW_API_URL": f"http://127.0.0.1:{free_port()}",
        **random_credentials(),
    }
    mp = pytest.MonkeyPatch()
    for key, value in env.items():
        mp.setenv(key, value)
    from closedloop.core.settings import load_settings
    from closedloop.platform.stack import drop_databases

    databases = list(load_settings().databases.values())
    try:
        yield env
    finally:
        mp.undo()
        drop_databases(databases)
        release_redis_db(REDIS_URL, db)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def postgres_url() -> str:
    """The PostgreSQL server's URL, once it answers (see :func:`require`)."""
    require(POSTGRES_URL, 5432, "PostgreSQL")
    return POSTGRES_URL
