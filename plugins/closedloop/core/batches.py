"""Landed batches: where an interval's file is, and reading it into a typed frame.

Reading is deliberately forgiving about *content* (a wrong dtype or an unparseable
timestamp is the validation suite's business, so it can be reported with examples) and
strict about *form*: a file that cannot be parsed at all raises ``BatchUnreadableError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from closedloop.core.errors import BatchNotFoundError, BatchUnreadableError
from closedloop.core.offline import write_chunks

if TYPE_CHECKING:
    from collections.abc import Iterator
    from datetime import datetime
    from pathlib import Path

    from closedloop.core.usecase import UseCase


def landing_path(landing_dir: Path, start: datetime, usecase: UseCase) -> Path:
    """Where the batch of the interval starting at ``start`` lands:
    ``<key>.<format>`` (:meth:`~closedloop.core.usecase.UseCase.interval_key`)."""
    return landing_dir / f"{usecase.interval_key(start)}.{usecase.batch.format}"


def find_batch(landing_dir: Path, start: datetime, usecase: UseCase) -> Path:
    path = landing_path(landing_dir, start, usecase)
    if not path.exists():
        raise BatchNotFoundError(f"no batch has landed for {usecase.interval_key(start)}: {path}")
    return path


def read_batch(path: Path, usecase: UseCase) -> pd.DataFrame:
    """Read a landed file; timestamp/date columns become tz-aware UTC.

    A zero-byte file reads as an empty frame without columns (the suite then reports it
    as empty). Values that are not timestamps become ``NaT`` and fail the not-null check.
    """
    if path.stat().st_size == 0:
        return pd.DataFrame()
    try:
        if usecase.batch.format == "csv":
            df = pd.read_csv(path, low_memory=False)
        else:
            df = pd.read_parquet(path)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise BatchUnreadableError(path, f"{type(exc).__name__}: {exc}") from exc
    for name, spec in usecase.columns.items():
        if spec.type in ("timestamp", "date") and name in df.columns:
            df[name] = pd.to_datetime(df[name], utc=True, errors="coerce", format="ISO8601")
    return df


#: rows per chunk of a landed file read in chunks (:func:`stage_batch`)
CHUNK_ROWS = 16_384


def stage_batch(path: Path, usecase: UseCase, target: Path) -> tuple[int, list[str]]:
    """Write the frame :func:`read_batch` would return for ``path`` to the Parquet file
    ``target`` without holding it: its rows and columns (``compute: spark``).

    Read in chunks, twice. The first pass finds each column's dtype as a whole read
    infers it (integers; floats if any chunk has a float or a missing value; text if any
    chunk has text); the second reads every chunk with those dtypes, so each value is
    parsed as the whole read parses it, and converts the timestamps alike.
    """
    if path.stat().st_size == 0:
        table = pa.table({})
        pq.write_table(table, target)
        return 0, []
    try:
        dtypes: dict[str, set[str]] = {}
        for chunk in _chunks(path, usecase, None):
            for name, dtype in chunk.dtypes.items():
                dtypes.setdefault(str(name), set()).add(str(dtype))
        settled = {name: _settled(found) for name, found in dtypes.items()}
        rows = write_chunks(_timed(_chunks(path, usecase, settled), usecase), target)
        if rows == 0:  # a header and no row: read whole, it is nothing
            pq.write_table(pa.Table.from_pandas(read_batch(path, usecase)), target)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise BatchUnreadableError(path, f"{type(exc).__name__}: {exc}") from exc
    return rows, list(dtypes)


def _timed(chunks: Iterator[pd.DataFrame], usecase: UseCase) -> Iterator[pd.DataFrame]:
    """The chunks with their timestamp and date columns converted as :func:`read_batch`
    converts them."""
    for chunk in chunks:
        for name, spec in usecase.columns.items():
            if spec.type in ("timestamp", "date") and name in chunk.columns:
                chunk[name] = pd.to_datetime(
                    chunk[name], utc=True, errors="coerce", format="ISO8601"
                )
        yield chunk


def _chunks(path: Path, usecase: UseCase, dtypes: dict[str, str] | None) -> Iterator[pd.DataFrame]:
    if usecase.batch.format == "csv":
        with pd.read_csv(path, chunksize=CHUNK_ROWS, dtype=_csv_dtypes(dtypes)) as reader:
            yield from reader
        return
    for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS):
        chunk = batch.to_pandas()
        yield chunk if dtypes is None else chunk.astype(dtypes)


def _csv_dtypes(dtypes: dict[str, str] | None) -> dict[str, Any] | None:
    if dtypes is None:
        return None
    return {name: str if dtype == "object" else dtype for name, dtype in dtypes.items()}


def _settled(found: set[str]) -> str:
    """The dtype a whole read gives a column whose chunks read as ``found``."""
    if len(found) == 1:
        return next(iter(found))
    if found <= {"int64", "float64"}:
        return "float64"
    return "object"
