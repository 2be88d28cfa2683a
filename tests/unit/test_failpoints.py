"""Fault-injection points: off without the environment variable, once per arming."""

from __future__ import annotations

import os
import threading
import time

import pytest

from closedloop.core import failpoints


def test_a_point_is_a_no_op_unless_a_folder_is_configured(monkeypatch, tmp_path):
    monkeypatch.delenv(failpoints.ENV, raising=False)
    failpoints.arm(tmp_path, "batch.outputs_staged", seconds=30)
    started = time.monotonic()
    failpoints.hold("batch.outputs_staged")
    assert time.monotonic() - started < 1
    assert failpoints.held_by(tmp_path, "batch.outputs_staged") is None


def test_an_armed_point_holds_one_caller_once_and_names_its_pid(monkeypatch, tmp_path):
    monkeypatch.setenv(failpoints.ENV, str(tmp_path))
    failpoints.hold("train.model_logged")  # not armed: returns at once
    failpoints.arm(tmp_path, "train.model_logged", seconds=1.0)
    holder = threading.Thread(target=failpoints.hold, args=("train.model_logged",))
    holder.start()
    deadline = time.monotonic() + 5
    while failpoints.held_by(tmp_path, "train.model_logged") is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert failpoints.held_by(tmp_path, "train.model_logged") == os.getpid()
    assert holder.is_alive()
    started = time.monotonic()
    failpoints.hold("train.model_logged")  # taken: the next caller (a retry) runs through
    assert time.monotonic() - started < 0.5
    holder.join(timeout=5)
    assert not holder.is_alive()


def test_unknown_points_are_refused(monkeypatch, tmp_path):
    monkeypatch.setenv(failpoints.ENV, str(tmp_path))
    with pytest.raises(ValueError, match="unknown failpoint"):
        failpoints.hold("nowhere")
    with pytest.raises(ValueError, match="unknown failpoint"):
        failpoints.arm(tmp_path, "nowhere")
