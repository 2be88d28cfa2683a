"""LocalAirflow's REST calls ride out an API server that answers late or with a 5xx."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from closedloop.core.settings import load_settings
from closedloop.platform.local_airflow import LocalAirflow


def _server(answers: list[tuple[float, int]]):
    """A server answering its n-th request after ``answers[n][0]`` s with status
    ``answers[n][1]`` (the last entry repeats); it counts the requests."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            delay, status = answers[min(len(seen), len(answers) - 1)]
            seen.append(self.path)
            time.sleep(delay)
            body = b'{"ok": true}'
            try:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the client gave up on this one
                return

        def log_message(self, *args):
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


@contextmanager
def serving(airflow: LocalAirflow, answers: list[tuple[float, int]]):
    """``airflow`` pointed at a :func:`_server`; yields the requests it saw."""
    server, seen = _server(answers)
    airflow.port = server.server_address[1]
    try:
        yield seen
    finally:
        server.shutdown()


@pytest.fixture
def airflow(tmp_path, monkeypatch):
    monkeypatch.setenv("CLOSEDLOOP_HOME", str(tmp_path))
    return LocalAirflow(load_settings(), request_timeout=0.5)


def test_an_answer_later_than_the_timeout_is_asked_again(airflow):
    with serving(airflow, [(1.5, 200), (0.0, 200)]) as seen:
        assert airflow._request("GET", "/x", auth=False) == {"ok": True}
        assert len(seen) == 2


def test_a_server_that_never_answers_in_time_fails_after_the_attempts(airflow):
    with serving(airflow, [(1.5, 200)]) as seen:
        with pytest.raises(TimeoutError):
            airflow._request("GET", "/x", auth=False, attempts=3)
        assert len(seen) == 3


def test_a_5xx_is_retried_and_a_4xx_is_not(airflow):
    with serving(airflow, [(0.0, 500), (0.0, 200)]) as seen:
        assert airflow._request("GET", "/x", auth=False) == {"ok": True}
        assert len(seen) == 2
    with serving(airflow, [(0.0, 404)]) as seen:
        with pytest.raises(RuntimeError, match="404"):
            airflow._request("GET", "/x", auth=False)
        assert len(seen) == 1
