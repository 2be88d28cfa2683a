"""The read-ahead of batch inference's entity rows: order, errors, early stop."""

from __future__ import annotations

import threading
import time

import pytest

from closedloop.core.batch_inference import _prefetched


def test_items_arrive_in_order_and_all_of_them():
    assert list(_prefetched(iter(range(100)), depth=3)) == list(range(100))


def test_an_error_of_the_producer_is_raised_in_the_consumer_after_what_came_before():
    def items():
        yield 1
        yield 2
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for item in _prefetched(items()):
            got.append(item)
    assert got == [1, 2]


def test_a_consumer_that_stops_early_stops_the_producer():
    produced = []

    def items():
        for i in range(10_000):
            produced.append(i)
            yield i

    before = threading.active_count()
    for item in _prefetched(items(), depth=2):
        if item == 3:
            break
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before
    assert len(produced) < 10  # at most the queue's depth beyond what was taken
