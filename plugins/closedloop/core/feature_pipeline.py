"""The feature pipeline's steps (the paper's B2: extract, validate, clean, engineer, load,
materialize) as plain functions over one data interval.

Each step reads what the previous one wrote, writes only paths keyed by the interval and
returns a small JSON-able summary, so a retry or a rerun of the same interval leaves
exactly what one clean run leaves.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow.parquet as pq

from closedloop.core import offline
from closedloop.core.batches import CHUNK_ROWS, find_batch, landing_path, read_batch, stage_batch
from closedloop.core.engineer_spark import SHARDED, STATE
from closedloop.core.errors import (
    BatchNotFoundError,
    BatchUnreadableError,
    DataValidationError,
)

if TYPE_CHECKING:
    from datetime import date

    from closedloop.core.aggregation_state import AggregationState
    from closedloop.core.settings import Settings

log = logging.getLogger(__name__)


def _staging(settings: Settings, start: datetime) -> Path:
    path = settings.staging_dir / settings.usecase.interval_key(start)
    path.mkdir(parents=True, exist_ok=True)
    return path


def extract(settings: Settings, start: datetime, end: datetime) -> dict[str, Any]:
    """Find the interval's landed batch and check that it parses.

    A batch that was quarantined earlier fails again with its stored report (a rerun
    must not report "missing" for data that was rejected); an unreadable file is
    quarantined with a report saying why.
    """
    from closedloop.core.quarantine import load_quarantine_report, quarantine_batch
    from closedloop.core.validation_result import unreadable_result

    usecase = settings.usecase
    key = usecase.interval_key(start)
    try:
        path = find_batch(settings.landing_dir, start, usecase)
    except BatchNotFoundError:
        stored = load_quarantine_report(settings.quarantine_dir, key)
        if stored is not None:
            raise DataValidationError(stored, settings.quarantine_dir / key) from None
        raise
    try:
        if settings.compute == "spark":  # staged for Spark, in chunks (stage_batch)
            rows, columns = stage_batch(path, usecase, _read_uri(settings, start))
        else:
            df = read_batch(path, usecase)
            rows, columns = len(df), list(df.columns)
    except BatchUnreadableError as exc:
        result = unreadable_result(path, exc.reason)
        where = quarantine_batch(path, result, settings.quarantine_dir, key)
        raise DataValidationError(result, where) from exc
    return {"key": key, "batch_path": str(path), "rows": rows, "columns": columns}


def _read_uri(settings: Settings, start: datetime) -> Path:
    """Where ``compute: spark`` stages the landed batch as read (Parquet)."""
    return _staging(settings, start) / "read.parquet"


def _staged_batch(settings: Settings, start: datetime) -> Path:
    """The batch as read, staged by ``extract``; staged again if it is gone or a newer
    file has landed since (a task rerun without its ``extract``)."""
    usecase = settings.usecase
    path = _read_uri(settings, start)
    landed = landing_path(settings.landing_dir, start, usecase)
    if not path.exists() or (landed.exists() and landed.stat().st_mtime > path.stat().st_mtime):
        stage_batch(landed, usecase, path)
    return path


def validate(
    settings: Settings, start: datetime, end: datetime, run_name: str, *, docs: bool = True
) -> dict[str, Any]:
    """Run the use case's expectation suite; quarantine the batch if it fails. With
    ``docs`` (the default) the validation is also written to the Data Docs site."""
    from closedloop.core.quarantine import quarantine_batch
    from closedloop.core.validation import validate_batch

    usecase = settings.usecase
    key = usecase.interval_key(start)
    path = landing_path(settings.landing_dir, start, usecase)
    where_to = {
        "interval_start": start,
        "interval_end": end,
        "gx_dir": settings.gx_dir if docs else None,
        "run_name": run_name,
    }
    staged = _staged_batch(settings, start) if settings.compute == "spark" else None
    if staged is not None and pq.ParquetFile(staged).metadata.num_rows:
        from closedloop.core import spark
        from closedloop.core.validation import validate_batch_on_spark

        session = spark.session(settings)
        result = validate_batch_on_spark(session, str(staged), usecase, **where_to)
    else:  # without a row (or a column) the batch is nothing to hold: pandas
        result = validate_batch(read_batch(path, usecase), usecase, **where_to)
    if not result.success:
        where = quarantine_batch(path, result, settings.quarantine_dir, key)
        raise DataValidationError(result, where)
    return result.to_dict()


def clean(settings: Settings, start: datetime) -> str:
    """Write the validated batch, typed and ordered, to the interval's staging folder."""
    from closedloop.core.transform import clean_batch

    usecase = settings.usecase
    target = _staging(settings, start) / "clean.parquet"
    if settings.compute == "spark":  # chunk by chunk; the engineer step on Spark sorts
        staged = pq.ParquetFile(_staged_batch(settings, start))
        if staged.metadata.num_rows:
            chunks = staged.iter_batches(batch_size=CHUNK_ROWS)
            offline.write_chunks((clean_batch(c.to_pandas(), usecase) for c in chunks), target)
            return str(target)
    path = landing_path(settings.landing_dir, start, usecase)
    cleaned = clean_batch(read_batch(path, usecase), usecase)
    cleaned.to_parquet(target, index=False)
    return str(target)


def engineer(
    settings: Settings,
    start: datetime,
    end: datetime,
    clean_uri: str,
    state: AggregationState | None = None,
) -> dict[str, str]:
    """The interval's partition of every offline table: the event table (the cleaned
    batch with its derived features) and each entity's aggregates, staged as Parquet
    with the aggregation state after the interval.

    ``state`` is the state as of ``start``; without it, the snapshot the previous
    interval saved is read (rebuilt from the event table if there is none). A backfill
    passes its state along in memory, advanced in place. With ``compute: spark`` Spark
    does the work on a sharded state (:mod:`closedloop.core.engineer_spark`) and
    ``state`` is not used.
    """
    from closedloop.core.aggregates import AggregationEngine
    from closedloop.core.derive import event_table

    usecase = settings.usecase
    staged = _staging(settings, start) / "features"
    staged.mkdir(exist_ok=True)
    if settings.compute == "spark":
        from closedloop.core.engineer_spark import engineer_on_spark

        return engineer_on_spark(settings, start, end, clean_uri, staged)
    events = event_table(pd.read_parquet(clean_uri), usecase)
    if state is None:
        state = aggregation_state(settings, start)
    # stamped in UTC, as every time in the offline store (Feast localizes its range
    # bounds in the column's zone, where a local hour may not exist)
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    tables = AggregationEngine(usecase).advance(state, events, start, end)
    uris = {usecase.event_table: str(staged / f"{usecase.event_table}.parquet")}
    events.to_parquet(uris[usecase.event_table], index=False)
    for entity, frame in tables.items():
        table = usecase.aggregate_tables[entity]
        uris[table] = str(staged / f"{table}.parquet")
        frame.to_parquet(uris[table], index=False)
    state.save(staged / STATE)
    return uris


def aggregation_state(settings: Settings, start: datetime) -> AggregationState:
    """The aggregation state as of ``start``: the snapshot saved by the interval ending
    there; a fresh state when no interval before ``start`` was loaded; else rebuilt by
    replaying the event table's earlier partitions (a rerun of an old interval, or a
    snapshot in a layout this version does not read)."""
    from closedloop.core.aggregates import AggregationEngine
    from closedloop.core.aggregation_state import AggregationState, StateFormatError

    usecase = settings.usecase
    previous = usecase.interval_key(start - usecase.interval)
    snapshot = settings.aggregation_state_dir / previous
    if (snapshot / "state.json").exists():
        try:
            return AggregationState.load(snapshot)
        except StateFormatError as error:  # saved by another closedloop: rebuilt below
            log.warning("%s", error)
    table_dir = settings.offline_table_dir(usecase.event_table)
    earlier = [k for k in offline.partition_keys(table_dir) if k < usecase.interval_key(start)]
    state = AggregationState()
    if not earlier:
        return state
    engine = AggregationEngine(usecase)
    at = usecase.key_start(earlier[0])
    log.warning("No aggregation state before %s: replaying %d intervals", start, len(earlier))
    while at < start:
        key = usecase.interval_key(at)
        frame = offline.read_partitions(table_dir, keys=[key]) if key in earlier else None
        events = frame if frame is not None else pd.DataFrame(columns=[])
        if events.empty:
            events = _no_events(settings)
        following = usecase.next_start(at)
        engine.advance(state, events, at, following)
        at = following
    return state


def _no_events(settings: Settings) -> pd.DataFrame:
    """An empty event table with the declared columns (an interval without events)."""
    from closedloop.core.derive import event_table
    from closedloop.core.transform import clean_batch

    usecase = settings.usecase
    return event_table(clean_batch(pd.DataFrame(columns=list(usecase.columns)), usecase), usecase)


def load_offline(settings: Settings, start: datetime, staged: dict[str, str]) -> dict[str, int]:
    """Replace the interval's partition of each offline table with the staged one, then
    keep the interval's aggregation state (the latest few are kept)."""
    import shutil

    key = settings.usecase.interval_key(start)
    rows = {}
    for name, uri in sorted(staged.items()):
        if settings.compute == "spark":  # the staged file is the partition: copied
            offline.copy_partition(Path(uri), settings.offline_table_dir(name), key)
            rows[name] = pq.ParquetFile(uri).metadata.num_rows
            continue
        frame = pd.read_parquet(uri)
        offline.write_partition(frame, settings.offline_table_dir(name), key)
        rows[name] = len(frame)
    staged_state = Path(next(iter(staged.values()))).parent / STATE
    if staged_state.exists():
        from closedloop.core.aggregation_state import KEEP_SNAPSHOTS, AggregationState

        snapshots = settings.aggregation_state_dir
        snapshots.mkdir(parents=True, exist_ok=True)
        if (staged_state / SHARDED).exists():  # Spark's shards: linked, file by file
            _link_snapshot(staged_state, snapshots / key)
        else:
            AggregationState.load(staged_state).save(snapshots / key)
        for old in sorted(p for p in snapshots.iterdir() if p.is_dir())[:-KEEP_SNAPSHOTS]:
            shutil.rmtree(old, ignore_errors=True)
    return rows


def _link_snapshot(staged: Path, target: Path) -> None:
    """Keep a staged sharded state as the snapshot ``target`` (replaced whole): its
    files never change once written, so they are hard-linked, not copied."""
    import os
    import shutil

    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(staged, tmp, copy_function=os.link)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def backfill(
    settings: Settings, first_day: date, days: int, *, docs: bool = False
) -> dict[str, Any]:
    """Run the pipeline's steps for ``days`` consecutive intervals in this process, then
    apply the Feast definitions and materialize the whole range once.

    For loading history fast (tests, the demo's warm-up): the same functions the DAG's
    tasks call, without a DAG run per interval, the aggregation state kept in memory. A
    bad batch stops the backfill with its ``DataValidationError``, having quarantined it
    like the DAG does.
    """
    from closedloop.core.feature_store import apply_definitions, materialize_interval, open_store

    usecase = settings.usecase
    intervals = usecase.intervals(first_day, first_day + timedelta(days=days - 1))
    # Spark's shards keep their states in the snapshots (engineer_spark)
    state = None if settings.compute == "spark" else aggregation_state(settings, intervals[0][0])
    rows = 0
    for start, end in intervals:
        key = usecase.interval_key(start)
        extract(settings, start, end)
        validate(settings, start, end, run_name=f"backfill-{key}", docs=docs)
        staged = engineer(settings, start, end, clean(settings, start), state=state)
        rows += load_offline(settings, start, staged)[usecase.event_table]
    store = open_store(settings)
    apply_definitions(store, settings)
    materialize_interval(store, intervals[0][0], intervals[-1][1])
    return {"days": days, "rows": rows}
