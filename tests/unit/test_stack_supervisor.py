"""``closedloop stack up`` supervises its components: one that exits (Airflow's scheduler
does when PostgreSQL drops its connection mid-query) is started again, as compose's
``restart: unless-stopped`` does — without servers: the components are stand-ins."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from closedloop.core.settings import load_settings
from closedloop.platform.stack import ProductionStack


def _stack(tmp_path: Path, started: list[str]) -> ProductionStack:
    settings = load_settings(
        home=tmp_path,
        profile="production",
        stores={"postgres_url": "postgresql://cl@db:5432", "redis_url": "redis://cache:6379/1"},
    )
    stack = ProductionStack(settings, components=("scheduler", "worker"))

    def spawn(name: str, env: dict[str, str]) -> subprocess.Popen:
        started.append(name)
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    stack._spawn = spawn  # type: ignore[method-assign]
    return stack


def test_an_exited_component_is_started_again_and_a_running_one_is_left_alone(tmp_path):
    started: list[str] = []
    stack = _stack(tmp_path, started)
    stack.processes["scheduler"] = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    stack.processes["worker"] = running = stack._spawn("worker", {})
    stack.processes["scheduler"].wait()
    try:
        assert stack.supervise() == ["scheduler"]
        assert started == ["worker", "scheduler"]
        assert stack.processes["worker"] is running
        stack.check_alive()  # every component runs again
        assert stack.supervise() == []
    finally:
        for proc in stack.processes.values():
            proc.kill()
            proc.wait()


def test_a_crash_loop_is_started_again_at_most_once_per_interval(tmp_path):
    started: list[str] = []
    stack = _stack(tmp_path, started)
    stack._spawn = lambda name, env: (
        started.append(name)
        or subprocess.Popen(  # type: ignore[method-assign]
            [sys.executable, "-c", "raise SystemExit(1)"]
        )
    )
    stack.processes["scheduler"] = stack._spawn("scheduler", {})
    try:
        stack.processes["scheduler"].wait()
        assert stack.supervise(min_interval=60) == ["scheduler"]
        stack.processes["scheduler"].wait()
        assert stack.supervise(min_interval=60) == []
        assert stack.supervise(min_interval=0) == ["scheduler"]
        assert started == ["scheduler"] * 3
    finally:
        stack.processes["scheduler"].wait()
