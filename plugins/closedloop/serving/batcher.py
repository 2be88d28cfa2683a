"""The batcher: the requests ready at one moment, looked up and scored in one call."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


class Batcher:
    """Scores on the event loop's thread, in one call, the requests that are ready
    together.

    :meth:`submit_async` queues a request's events and, unless it is scheduled already,
    schedules the scoring call with ``call_soon``: it runs after the other requests the
    loop has ready at that moment, which have queued theirs by then. A lone request
    waits for nothing; under load one call serves every request that arrived while the
    previous call ran. No thread: an answer waits for no hand-over between threads,
    and the loop and a scoring thread no longer take the GIL from each other."""

    def __init__(self, score: Any, max_rows: int) -> None:
        self.score = score  # list[event] -> list[result]
        self.max_rows = max_rows
        self._pending: list[tuple[list[dict[str, Any]], asyncio.Future]] = []
        self._scheduled = False

    def submit_async(self, events: list[dict[str, Any]]) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((events, future))
        if not self._scheduled:
            # after the other requests the loop has ready now, which join this call
            self._scheduled = True
            loop.call_soon(self._drain)
        return future

    def _drain(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        group: list[tuple[list[dict[str, Any]], asyncio.Future]] = []
        rows = 0
        for item in pending:
            if group and rows + len(item[0]) > self.max_rows:
                self._score(group)
                group, rows = [], 0
            group.append(item)
            rows += len(item[0])
        if group:
            self._score(group)

    def _score(self, items: list[tuple[list[dict[str, Any]], asyncio.Future]]) -> None:
        try:
            results = self.score([e for events, _ in items for e in events])
        except Exception as exc:
            log.exception("scoring failed")
            for _, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        at = 0
        for events, future in items:
            if not future.done():
                future.set_result(results[at : at + len(events)])
            at += len(events)
