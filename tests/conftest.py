"""Test-session set-up shared by every suite.

Airflow reads its configuration once, when first imported, so the session's
``AIRFLOW__*`` environment is put in place here, before any test module is collected.
Each test that touches data gets its own closedloop home (``home`` fixture); the Airflow
metadata database is shared by the session.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from closedloop.core.settings import Settings, load_settings
from closedloop.platform.runtime import apply_airflow_environ

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="closedloop-tests-"))
os.environ["CLOSEDLOOP_HOME"] = str(_SESSION_HOME)
# The suites run the shipped hotel use case unless a test declares its own.
os.environ["CLOSEDLOOP_USECASE_NAME"] = "hotel_bookings"
apply_airflow_environ(load_settings())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A fresh closedloop home for this test; tasks run in-process read it from the env."""
    monkeypatch.setenv("CLOSEDLOOP_HOME", str(tmp_path / "home"))
    return load_settings()


@pytest.fixture(scope="session")
def usecase():
    return load_settings().usecase
