"""stop_process: SIGTERM first, SIGKILL only for a process that does not exit in time."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from closedloop.platform.runtime import stop_process


def _child(code: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"  # handlers set
    return proc


def test_a_process_that_handles_sigterm_exits_with_its_own_status():
    proc = _child(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    assert stop_process(proc, timeout=30) == 7


def test_a_process_that_ignores_sigterm_is_killed_after_the_timeout():
    proc = _child(
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    began = time.monotonic()
    assert stop_process(proc, timeout=1) == -signal.SIGKILL
    assert 1 <= time.monotonic() - began < 30


def test_a_process_that_has_exited_is_left_alone():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert stop_process(proc) == 0
