"""closedloop.core.files: a file is replaced whole or not at all; the read-ahead that
batch inference decodes its entity rows with keeps order, raises the producer's error
and stops with its consumer."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from closedloop.core.files import move, prefetched, replacing, write_bytes, write_text


def test_a_write_replaces_the_file_readable_by_others_and_leaves_no_temporary(tmp_path: Path):
    target = tmp_path / "deep" / "report.json"
    write_text(target, "first")
    write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # mkstemp's are 0600
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]


def test_a_write_that_fails_keeps_the_old_file_and_removes_its_temporary(tmp_path: Path):
    target = tmp_path / "2026-01-01.parquet"
    target.write_text("old")
    with (
        pytest.raises(RuntimeError, match="killed"),
        replacing(target, prefix=".2026-01-01.") as tmp,
    ):
        tmp.write_text("half of the new")
        assert tmp.name.startswith(".2026-01-01.") and tmp.name.endswith(".tmp")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2026-01-01.parquet"]


def test_a_move_to_another_file_system_copies_then_removes_the_source(tmp_path, monkeypatch):
    source, target = tmp_path / "landed.csv", tmp_path / "quarantine" / "landed.csv"
    source.write_text("a,b\n1,2\n")
    target.parent.mkdir()
    real = os.replace

    def cross_device(src, dst):
        if Path(src) == source:
            raise OSError(18, "Invalid cross-device link")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", cross_device)
    move(source, target)
    assert not source.exists()
    assert target.read_text() == "a,b\n1,2\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["landed.csv"]


def test_items_arrive_in_order_and_all_of_them():
    assert list(prefetched(iter(range(100)), depth=3)) == list(range(100))


def test_an_error_of_the_producer_is_raised_in_the_consumer_after_what_came_before():
    def items():
        yield 1
        yield 2
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for item in prefetched(items()):
            got.append(item)
    assert got == [1, 2]


def test_a_consumer_that_stops_early_stops_the_producer():
    produced = []

    def items():
        for i in range(10_000):
            produced.append(i)
            yield i

    before = threading.active_count()
    for item in prefetched(items(), depth=2):
        if item == 3:
            break
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before
    assert len(produced) < 10  # at most the queue's depth beyond what was taken
