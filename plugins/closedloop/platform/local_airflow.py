"""A real Airflow on this machine: API server, execution API server, scheduler
(LocalExecutor) and DAG processor as separate processes on the embedded profile, driven
through the REST API.

Used by ``closedloop loop`` / ``make demo`` (the closed loop under a real scheduler),
``closedloop up`` and the end-to-end test. Every task is forked from the scheduler, so
the heavy libraries are imported once in the scheduler before it forks
(``closedloop.platform.preload`` via ``airflow_local_settings``): a task then starts in ~1 s
instead of ~20 s of imports.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from closedloop.platform.runtime import airflow_environ

if TYPE_CHECKING:
    from closedloop.core.settings import Settings

COMPONENTS = ("api-server", "execution-api", "scheduler", "dag-processor")
FINISHED = ("success", "failed")
_LOCAL_SETTINGS = '''\
"""Written by closedloop: preload the heavy libraries in the scheduler, whose forked
task processes then share them (see closedloop.platform.preload)."""
import sys

if len(sys.argv) > 1 and sys.argv[1] == "scheduler":
    from closedloop.platform.preload import preload

    preload()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _eligible_now() -> datetime:
    """A run's ``run_after`` that the scheduler's next loop already finds due. The
    scheduler starts a queued run once ``run_after <= now()`` in the metadata database;
    SQLite's ``now()`` (``CURRENT_TIMESTAMP``) has whole seconds, so a run triggered
    at 12:00:00.06 waited until 12:00:01: half a second per run on average, 26 s of
    the demo's 41 runs (benchmarks/loop.py). One second ago is due. The microseconds
    stay: Airflow names a run triggered without an id after its ``run_after``, so runs
    triggered within one second would collide on a whole second."""
    return datetime.now(UTC) - timedelta(seconds=1)


@dataclass
class LocalAirflow:
    """Start, drive and stop Airflow's components for ``settings``."""

    settings: Settings
    port: int = field(default_factory=free_port)
    #: the task execution API's own server (see :meth:`command`)
    execution_port: int = field(default_factory=free_port)
    preload: bool = True
    #: the ``airflow`` sub-commands started as processes (a subclass adds e.g. a Celery
    #: worker and the triggerer)
    components: tuple[str, ...] = COMPONENTS
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    #: seconds to wait for the API server's answer (longer than SQLite's lock timeout)
    request_timeout: float = 90.0
    _token: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def execution_url(self) -> str:
        return f"http://127.0.0.1:{self.execution_port}/execution/"

    def command(self, name: str) -> list[str]:
        """The ``airflow`` arguments of component ``name``.

        The task execution API runs in a server of its own (``api-server --apps
        execution``), the REST API and UI in another (``--apps core``). In one server on
        SQLite they deadlock now and then: a REST call that writes (triggering a run)
        records its audit-log row from an ``async`` dependency, blocking the event loop
        on SQLite's write lock — held by a task's execution-API call whose commit waits
        for that same event loop. Both wait out the lock's timeout (60 s), and the task's
        call fails. Apart, the task's call commits and the REST call simply waits.
        """
        if name == "api-server":
            return ["api-server", "--apps", "core"]
        if name == "execution-api":
            return ["api-server", "--apps", "execution", "--port", str(self.execution_port)]
        return name.split()

    def environ(self) -> dict[str, str]:
        env = {
            **os.environ,
            **airflow_environ(self.settings),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": self.execution_url,
            # A fresh signing secret per start: nothing to keep, nothing in the repo.
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.25",
            # A task's supervisor waits for events up to this long between heartbeats;
            # once the task's sockets are closed, it notices the process exit only when
            # that wait ends. Its slot (and a skipped or failed task's state) waits as
            # long: 1 s rather than 5 s.
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            # The loop is driven by explicit runs for simulated days: no cron runs for
            # today's wall-clock date (they would find no data and hold max_active_runs).
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        }
        # Links (extra links, alerts, the closedloop view) name this server, unless the
        # settings name the public URL themselves.
        if not self.settings.stores.airflow_public_url:
            env["CLOSEDLOOP_STORES__AIRFLOW_PUBLIC_URL"] = self.base_url
        return env

    def public_settings(self) -> Settings:
        """The settings as the components see them: links point at this server."""
        if self.settings.stores.airflow_public_url:
            return self.settings
        stores = self.settings.stores.model_copy(update={"airflow_public_url": self.base_url})
        return self.settings.model_copy(update={"stores": stores})

    def start(self, timeout: float = 240) -> None:
        """Start the components and wait until the API answers and the scheduler is up."""
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Migrate the metadata DB and start the components; returns without waiting, so
        the caller can work while they come up (see :meth:`wait_ready`)."""
        from closedloop.platform.airflow_runs import ensure_metadata_db

        airflow_home = self.settings.airflow_home
        config = airflow_home / "config"
        config.mkdir(parents=True, exist_ok=True)
        local_settings = config / "airflow_local_settings.py"
        if self.preload:
            local_settings.write_text(_LOCAL_SETTINGS)
        else:
            local_settings.unlink(missing_ok=True)
        ensure_metadata_db()
        env = self.environ()
        logs = self.logs_dir
        logs.mkdir(parents=True, exist_ok=True)
        airflow = str(Path(sys.executable).with_name("airflow"))
        for name in self.components:
            log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
            self.processes[name] = subprocess.Popen(
                [airflow, *self.command(name)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def logs_dir(self) -> Path:
        return self.settings.airflow_home / "logs"

    def wait_ready(self, timeout: float = 240) -> None:
        """Wait until the API answers, the scheduler reports healthy and the execution
        API answers (the first request builds it: now rather than in the first task)."""
        deadline = time.monotonic() + timeout
        while not (self._healthy() and self._execution_answers()):
            self.check_alive()
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(
                    f"Airflow did not come up within {timeout:.0f}s; see {self.logs_dir}"
                )
            time.sleep(1)

    def _execution_answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.execution_url + "health", timeout=30) as answer:
                return answer.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def _healthy(self) -> bool:
        try:
            health = self._request("GET", "/api/v2/monitor/health", auth=False)
        except (OSError, urllib.error.URLError):
            return False
        return health.get("scheduler", {}).get("status") == "healthy"

    def check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                self.stop()
                raise RuntimeError(
                    f"airflow {name} exited with {proc.returncode}; see "
                    f"{self.logs_dir / (name + '.log')}"
                )

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM every component (and its children), then wait; SIGKILL stragglers."""
        for proc in self.processes.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.processes.clear()

    def __enter__(self) -> LocalAirflow:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- REST API ----------------------------------------------------------------------
    @property
    def password_file(self) -> Path:
        """Where Airflow's simple auth manager wrote the generated admin password."""
        return self.settings.airflow_home / "simple_auth_manager_passwords.json.generated"

    def _password(self) -> str:
        return json.loads(self.password_file.read_text())["admin"]

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        auth: bool = True,
        ok: tuple[int, ...] = (200, 201, 204),
        attempts: int = 4,
    ) -> Any:
        """One REST call. A 5xx or no answer in time is retried (``attempts`` in all,
        backing off): on SQLite the API server's write can lose a race for the database
        lock to the scheduler's and answer 500 — or, on a loaded machine, wait out the
        lock's whole 60 s timeout before it answers (seen in CI), so the client waits
        longer than that. Every call made here may be repeated — reads, pauses, and runs
        triggered with an explicit run id (see :meth:`trigger`)."""
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(1, attempts + 1):
            request = urllib.request.Request(
                self.base_url + path, data=data, headers=headers, method=method
            )
            try:
                with urllib.request.urlopen(request, timeout=self.request_timeout) as response:
                    raw = response.read()
                    status = response.status
            except TimeoutError:
                if attempt < attempts:
                    continue
                raise
            except urllib.error.HTTPError as exc:
                if exc.code in ok:
                    return {}
                detail = exc.read().decode()[:500]
                if exc.code >= 500 and attempt < attempts:
                    time.sleep(attempt)
                    continue
                raise RuntimeError(f"{method} {path}: {exc.code} {detail}") from exc
            if status not in ok:
                raise RuntimeError(f"{method} {path}: {status}")
            return json.loads(raw) if raw else {}
        raise AssertionError("unreachable")

    def token(self) -> str:
        if self._token is None:
            answer = self._request(
                "POST",
                "/auth/token",
                {"username": "admin", "password": self._password()},
                auth=False,
            )
            self._token = answer["access_token"]
        return self._token

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            found = {d["dag_id"] for d in self._request("GET", "/api/v2/dags?limit=100")["dags"]}
            if set(dag_ids) <= found:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"DAGs not parsed: {sorted(set(dag_ids) - found)}")
            time.sleep(1)

    def trigger(
        self,
        dag_id: str,
        logical_date: datetime,
        conf: dict | None = None,
        run_id: str | None = None,
    ) -> str:
        """Start a run; with ``run_id`` the call is idempotent: if a retried request finds
        the run already created (409), that run is the answer."""
        body: dict[str, Any] = {
            "logical_date": logical_date.isoformat(),
            "conf": conf or {},
            "run_after": _eligible_now().isoformat(),
        }
        path = f"/api/v2/dags/{dag_id}/dagRuns"
        if run_id is None:
            return self._request("POST", path, body, attempts=1)["dag_run_id"]
        body["dag_run_id"] = run_id
        self._request("POST", path, body, ok=(200, 201, 409))
        return run_id

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self._request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": paused})

    def backfill(
        self, dag_id: str, first: datetime, last: datetime, timeout: float = 3600
    ) -> list[dict[str, Any]]:
        """Airflow's own backfill of ``dag_id``: the runs of the intervals starting from
        ``first`` to ``last``, one at a time and in order, executed by the scheduler;
        waits for it to complete and returns its runs."""
        body = {
            "dag_id": dag_id,
            "from_date": first.isoformat(),
            "to_date": last.isoformat(),
            "max_active_runs": 1,
            "reprocess_behavior": "completed",
        }
        backfill = self._request("POST", "/api/v2/backfills", body, attempts=1)
        deadline = time.monotonic() + timeout
        while not self._request("GET", f"/api/v2/backfills/{backfill['id']}").get("completed_at"):
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"backfill {backfill['id']} of {dag_id} not done in {timeout}s")
            time.sleep(1)
        runs = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns?run_type=backfill&limit=1000")[
            "dag_runs"
        ]

        def logical(run: dict[str, Any]) -> datetime:
            return datetime.fromisoformat(run["logical_date"].replace("Z", "+00:00"))

        return sorted((r for r in runs if first <= logical(r) <= last), key=logical)

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        answer = self._request(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100"
        )
        return {t["task_id"]: str(t["state"]) for t in answer["task_instances"]}

    def failed_tasks(self, dag_id: str, run_id: str) -> list[str]:
        states = self.task_states(dag_id, run_id)
        return sorted(t for t, s in states.items() if s == "failed")

    def wait(self, dag_id: str, run_id: str, timeout: float = 600) -> str:
        """Wait until the run finishes; returns its state."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.run(dag_id, run_id)["state"]
            if state in FINISHED:
                return state
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dag_id} {run_id} still {state} after {timeout:.0f}s")
            time.sleep(0.2)

    def hitl_path(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
        run = urllib.parse.quote(run_id, safe="")
        return (
            f"/api/v2/dags/{dag_id}/dagRuns/{run}/taskInstances/{task_id}/{map_index}/hitlDetails"
        )

    def wait_for_input(
        self, dag_id: str, run_id: str, task_id: str, timeout: float = 600
    ) -> dict[str, Any]:
        """Wait until a human-in-the-loop task asks (state ``awaiting_input``); returns
        its request (subject, body, options). Fails if the task ends without asking."""
        deadline = time.monotonic() + timeout
        while (state := self.task_states(dag_id, run_id).get(task_id)) != "awaiting_input":
            if state in ("success", "failed", "skipped", "upstream_failed"):
                raise RuntimeError(f"{dag_id} {run_id}: {task_id} ended {state} without asking")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dag_id} {run_id}: {task_id} still {state}")
            self.check_alive()
            time.sleep(1)
        return self._request("GET", self.hitl_path(dag_id, run_id, task_id))

    def answer(
        self, dag_id: str, run_id: str, task_id: str, option: str, params: dict | None = None
    ) -> None:
        """Answer a waiting human-in-the-loop task as its user would (once: a second
        answer is Airflow's 409)."""
        body = {"chosen_options": [option], "params_input": params or {}}
        self._request("PATCH", self.hitl_path(dag_id, run_id, task_id), body, attempts=1)

    def run_and_wait(
        self, dag_id: str, logical_date: datetime, conf: dict | None = None, timeout: float = 600
    ) -> tuple[str, str]:
        run_id = self.trigger(dag_id, logical_date, conf)
        return run_id, self.wait(dag_id, run_id, timeout)
