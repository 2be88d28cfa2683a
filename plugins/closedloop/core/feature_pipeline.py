"""The feature pipeline's steps (the paper's B2: extract, validate, clean, engineer, load,
materialize) as plain functions over one data interval.

Each step reads what the previous one wrote, writes only paths keyed by the interval and
returns a small JSON-able summary, so a retry or a rerun of the same interval leaves
exactly what one clean run leaves.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd

from closedloop.core import offline
from closedloop.core.batches import find_batch, interval_key, landing_path, read_batch
from closedloop.core.errors import (
    BatchNotFoundError,
    BatchUnreadableError,
    DataValidationError,
)

if TYPE_CHECKING:
    from datetime import date
    from pathlib import Path

    from closedloop.core.settings import Settings


def _staging(settings: Settings, start: datetime) -> Path:
    path = settings.staging_dir / interval_key(start)
    path.mkdir(parents=True, exist_ok=True)
    return path


def extract(settings: Settings, start: datetime, end: datetime) -> dict[str, Any]:
    """Find the interval's landed batch and check that it parses.

    A batch that was quarantined earlier fails again with its stored report (a rerun
    must not report "missing" for data that was rejected); an unreadable file is
    quarantined with a report saying why.
    """
    from closedloop.core.quarantine import load_quarantine_report, quarantine_batch
    from closedloop.core.validation import unreadable_result

    usecase = settings.usecase
    key = interval_key(start)
    try:
        path = find_batch(settings.landing_dir, start, usecase.batch.format)
    except BatchNotFoundError:
        stored = load_quarantine_report(settings.quarantine_dir, key)
        if stored is not None:
            raise DataValidationError(stored, settings.quarantine_dir / key) from None
        raise
    try:
        df = read_batch(path, usecase)
    except BatchUnreadableError as exc:
        result = unreadable_result(path, exc.reason)
        where = quarantine_batch(path, result, settings.quarantine_dir, key)
        raise DataValidationError(result, where) from exc
    return {"key": key, "batch_path": str(path), "rows": len(df), "columns": list(df.columns)}


def validate(
    settings: Settings, start: datetime, end: datetime, run_name: str, *, docs: bool = True
) -> dict[str, Any]:
    """Run the use case's expectation suite; quarantine the batch if it fails. With
    ``docs`` (the default) the validation is also written to the Data Docs site."""
    from closedloop.core.quarantine import quarantine_batch
    from closedloop.core.validation import validate_batch

    usecase = settings.usecase
    key = interval_key(start)
    path = landing_path(settings.landing_dir, start, usecase.batch.format)
    df = read_batch(path, usecase)
    result = validate_batch(
        df,
        usecase,
        interval_start=start,
        interval_end=end,
        gx_dir=settings.gx_dir if docs else None,
        run_name=run_name,
    )
    if not result.success:
        where = quarantine_batch(path, result, settings.quarantine_dir, key)
        raise DataValidationError(result, where)
    return result.to_dict()


def clean(settings: Settings, start: datetime) -> str:
    """Write the validated batch, typed and ordered, to the interval's staging folder."""
    from closedloop.core.transform import clean_batch

    usecase = settings.usecase
    path = landing_path(settings.landing_dir, start, usecase.batch.format)
    cleaned = clean_batch(read_batch(path, usecase), usecase)
    target = _staging(settings, start) / "clean.parquet"
    cleaned.to_parquet(target, index=False)
    return str(target)


def engineer(
    settings: Settings,
    start: datetime,
    end: datetime,
    clean_uri: str,
    history: pd.DataFrame | None = None,
) -> dict[str, str]:
    """Compute the interval's partition of every offline table from the cleaned batch
    and the history of earlier intervals; stage them as Parquet files.

    ``history`` (the entity table of all earlier intervals) is read from the offline
    store unless given — a backfill keeps it in memory instead of rereading every day.
    """
    usecase = settings.usecase
    if history is None:
        history = offline.read_partitions(
            settings.offline_table_dir(usecase.feast.tables[0]), before=interval_key(start)
        )
    tables = usecase.hook("engineer")(
        pd.read_parquet(clean_uri), history, interval_start=start, interval_end=end
    )
    unknown = set(tables) - set(usecase.feast.tables)
    if unknown:
        raise ValueError(f"engineer returned tables the use case does not declare: {unknown}")
    staged = _staging(settings, start) / "features"
    staged.mkdir(exist_ok=True)
    uris = {}
    for name, frame in tables.items():
        uris[name] = str(staged / f"{name}.parquet")
        frame.to_parquet(uris[name], index=False)
    return uris


def load_offline(settings: Settings, start: datetime, staged: dict[str, str]) -> dict[str, int]:
    """Replace the interval's partition of each offline table with the staged one."""
    key = interval_key(start)
    rows = {}
    for name, uri in sorted(staged.items()):
        frame = pd.read_parquet(uri)
        offline.write_partition(frame, settings.offline_table_dir(name), key)
        rows[name] = len(frame)
    return rows


def backfill(
    settings: Settings, first_day: date, days: int, *, docs: bool = False
) -> dict[str, Any]:
    """Run the pipeline's steps for ``days`` consecutive days in this process, then apply
    the Feast definitions and materialize the whole range once.

    For loading history fast (tests, the demo's warm-up): the same functions the DAG's
    tasks call, without a DAG run per day. A bad batch stops the backfill with its
    ``DataValidationError``, having quarantined it like the DAG does.
    """
    from closedloop.core.feature_store import apply_definitions, materialize_interval, open_store

    entity_table = settings.usecase.feast.tables[0]
    first = datetime.combine(first_day, time.min, UTC)
    history = offline.read_partitions(
        settings.offline_table_dir(entity_table), before=interval_key(first)
    )
    rows = 0
    for i in range(days):
        start = first + timedelta(days=i)
        end = start + timedelta(days=1)
        extract(settings, start, end)
        validate(settings, start, end, run_name=f"backfill-{interval_key(start)}", docs=docs)
        staged = engineer(settings, start, end, clean(settings, start), history=history)
        rows += load_offline(settings, start, staged)[entity_table]
        # The same frames a reader of the offline store would get, without rereading it.
        written = pd.read_parquet(staged[entity_table])
        history = written if history is None else pd.concat([history, written], ignore_index=True)
    store = open_store(settings)
    apply_definitions(store, settings.feature_repo)
    materialize_interval(store, first, first + timedelta(days=days))
    return {"days": days, "rows": rows}
