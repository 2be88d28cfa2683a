"""Landed batches: where an interval's file is, and reading it into a typed frame.

Reading is deliberately forgiving about *content* (a wrong dtype or an unparseable
timestamp is the validation suite's business, so it can be reported with examples) and
strict about *form*: a file that cannot be parsed at all raises ``BatchUnreadableError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from closedloop.core.errors import BatchNotFoundError, BatchUnreadableError

if TYPE_CHECKING:
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
