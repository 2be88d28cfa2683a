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


class AlertReceiver:
    """A webhook receiver on 127.0.0.1 (a thread): records each JSON message POSTed to
    it; ``statuses`` are the answers to the first requests (then 200), ``delay`` how long
    each answer takes."""

    def __init__(self, port: int = 0, statuses: list[int] | None = None, delay: float = 0.0):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.messages: list[dict] = []
        self.statuses = list(statuses or [])
        self.requests = 0
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if delay:
                    import time

                    time.sleep(delay)
                with lock:
                    receiver.requests += 1
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    if status == 200:
                        receiver.messages.append(json.loads(body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/T000/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[str]:
        return [m["event"] for m in self.messages]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def alert_receiver():
    """Start receivers (``alert_receiver(port=..., statuses=..., delay=...)``); all are
    stopped after the test."""
    started: list[AlertReceiver] = []

    def start(**kwargs) -> AlertReceiver:
        started.append(AlertReceiver(**kwargs))
        return started[-1]

    yield start
    for receiver in started:
        receiver.close()
