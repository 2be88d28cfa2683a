"""Appends online predictions to the prediction log off the request path.

Requests hand their records to :meth:`PredictionLogWriter.add` (list appends, no I/O,
no wake-up); one thread writes them, a flush every ``flush_seconds`` (sooner once
``max_records`` wait), grouped by day, through
:meth:`closedloop.core.prediction_log.PredictionLog.append_online` — each flush a file
named by its first prediction id, so a retried flush rewrites it. A failed flush
keeps its records for the next attempt. :meth:`close` (the server's shutdown, e.g. on
SIGTERM) writes everything still queued before it returns.

Records are kept as columns as they arrive (:class:`_Columns`); a flush turns whole
columns into Arrow and writes (Arrow's writer releases the GIL). Building a pandas frame
of a second's records held the GIL for milliseconds at once, and the requests that
arrived meanwhile waited: about 1 % of answers, the p99.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from closedloop.core.prediction_log import PredictionLog

log = logging.getLogger(__name__)


class _Columns:
    """Records kept as columns, one record at a time. A record with the keys of the one
    before (every record of one model) costs a list append per field; a new layout adds
    its columns, padded with None, and fills the ones it lacks with None."""

    def __init__(self) -> None:
        self.data: dict[str, list[Any]] = {}
        self.rows = 0
        self._layout: tuple[str, ...] = ()
        self._into: list[Callable[[Any], None]] = []
        self._absent: list[Callable[[Any], None]] = []

    def append(self, record: dict[str, Any]) -> None:
        layout = tuple(record)
        if layout != self._layout:
            for name in layout:
                if name not in self.data:
                    self.data[name] = [None] * self.rows
            self._layout = layout
            self._into = [self.data[name].append for name in layout]
            self._absent = [col.append for name, col in self.data.items() if name not in record]
        for append, value in zip(self._into, record.values(), strict=True):
            append(value)
        for append in self._absent:
            append(None)
        self.rows += 1

    def table(self) -> pa.Table:
        return pa.table({name: pa.array(values) for name, values in self.data.items()})


class PredictionLogWriter:
    """A background writer of prediction records (see the module)."""

    def __init__(
        self,
        predictions: PredictionLog,
        *,
        max_records: int = 5000,
        flush_seconds: float = 1.0,
        on_flush: Callable[[int, bool], None] | None = None,
        on_written: Callable[[list[Path], int], None] | None = None,
    ) -> None:
        self.predictions = predictions
        self.max_records = max_records
        self.flush_seconds = flush_seconds
        self.on_flush = on_flush or (lambda n, ok: None)
        #: after a flush: the files written and their rows (``serve --shadow`` reads them)
        self.on_written = on_written or (lambda paths, n: None)
        # Requests append their records as columns and wake nothing. A queue whose get()
        # woke the writer for every request made it take the GIL from the event loop
        # hundreds of times a second, each time in the middle of a request; and turning a
        # second's records into columns at the flush held the GIL for about 1.5 ms at a
        # time. Appended as they come, they cost each request a few microseconds, and a
        # flush only converts whole lists (Arrow, in C). The writer wakes on its
        # interval, or when max_records wait.
        self._lock = threading.Lock()  # the loop's appends against the writer's swap
        self._columns = _Columns()
        self._batches: list[_Columns] = []  # taken from requests, not written yet
        self._wake = threading.Event()
        self._stopping = False
        self.added = self.written = 0
        # Arrow's first tz-aware timestamp loads its time zone support: 0.4 s holding
        # the GIL, here at start-up rather than in the first flush, under requests
        pa.array([datetime.now(UTC)])
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def add(self, records: list[dict[str, Any]]) -> None:
        """Queue records for writing (call from one thread, e.g. the event loop)."""
        with self._lock:
            for record in records:
                self._columns.append(record)
        self.added += len(records)
        if self.pending >= self.max_records:
            self._wake.set()

    @property
    def pending(self) -> int:
        """Records added but not written yet."""
        return self.added - self.written

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued so far, then stop the thread."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("prediction log writer did not finish in %.0f s", timeout)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            stopping = self._stopping  # read before draining: nothing added before is left
            self._drain()
            if stopping:
                for _ in range(3):  # last chance: a transient failure gets two retries
                    if self._flush():
                        return
                    time.sleep(0.2)
                log.error("lost %d prediction records at shutdown", self.pending)
                return
            self._flush()  # a failure keeps the records for the next round

    def _drain(self) -> None:
        with self._lock:
            taken, self._columns = self._columns, _Columns()
        if taken.rows:
            self._batches.append(taken)

    def _flush(self) -> bool:
        if not self._batches:
            return True
        rows = sum(batch.rows for batch in self._batches)
        try:
            tables = [batch.table() for batch in self._batches]
            table = (
                tables[0]
                if len(tables) == 1
                else pa.concat_tables(tables, promote_options="default")
            )
            paths = [self.predictions.append_online(part, day) for day, part in _by_day(table)]
        except Exception:
            log.exception("could not write %d prediction records; will retry", rows)
            self.on_flush(rows, False)
            return False
        self._batches = []
        self.written += rows
        self.on_flush(rows, True)
        self.on_written(paths, rows)
        return True


def _by_day(table: pa.Table) -> list[tuple[str, pa.Table]]:
    """The records of each UTC day of ``predicted_at``. Nearly every flush holds one
    day: its earliest and latest timestamps say so without formatting every one."""
    at = table.column("predicted_at")
    first, last = pc.min_max(at).values()
    if first.as_py().date() == last.as_py().date():
        return [(first.as_py().strftime("%Y-%m-%d"), table)]
    days = pc.strftime(at, "%Y-%m-%d")
    return [(day, table.filter(pc.equal(days, day))) for day in sorted(pc.unique(days).to_pylist())]
