"""The feature pipeline's engineer step on Spark (``compute: spark``): what
:func:`~closedloop.core.feature_pipeline.engineer` runs instead of holding the interval's
events in the task.

Two Spark jobs over the cleaned batch:

1. **The event table.** Spark cuts the rows into ranges by time and id, in order; a
   Python worker (``mapInArrow``) computes each Arrow batch's derived features with the
   local step's own :func:`~closedloop.core.derive.event_table` (a derived feature is
   row-wise) and writes the batch as a part named by its range and place.
2. **The aggregates, on a sharded state.** The aggregation state of each entity is split
   into ``spark.aggregation_shards`` shards by the hash of the entity's key; a shard
   holds whole entities. Spark groups the events by shard, beside one row per shard (a
   shard without events still advances: its windows move on), and a Python worker
   (``applyInArrow``) advances the shard's state with the local
   :class:`~closedloop.core.aggregates.AggregationEngine`, saves it and writes the
   shard's emitted rows as a part.

The task then merges each table's parts, in the order of their names, into the staged
file, one part at a time: rows go from worker to file without passing through Spark's
driver (a day's rows collected through it were lost at 500k: ``TaskResultLost``).

The engine sums an entity's values in the order of its events whatever other entities
there are, so a shard's rows are the whole engine's rows bit for bit
(``tests/unit/test_sharded_aggregates.py``); the staged tables hold the local step's
rows, the aggregate tables in shard order (each shard's rows by key). A Python worker
holds one shard's events of the interval and its state, or one range's batch.

The shards' snapshots and the parts live in the use case's folders, which the executors
read and write: on a cluster, paths every executor mounts (docs/scaling.md). A snapshot
of another layout (the local compute's, another shard count) is rebuilt by replaying the
event table's earlier partitions through the same job: a job advances each shard through
as many intervals as fit ``REPLAY_ROWS`` events a shard, one interval after the other.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from closedloop.core import offline
from closedloop.core.aggregation_state import STATE_FORMAT

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from closedloop.core.settings import Settings
    from closedloop.core.usecase import UseCase

log = logging.getLogger(__name__)

#: the staged aggregation state, beside the staged tables (not a table itself)
STATE = "aggregation_state"
#: the file that marks a folder as a sharded aggregation state, and says how it is cut
SHARDED = "sharded.json"
# Spark columns of the plan (never a use case's)
_SHARD, _ROWS, _STEP = "__cl_shard", "__cl_rows", "__cl_step"
#: what a worker reports of a part it wrote
_WRITTEN_DDL = f"{_ROWS} long"
#: event-table rows per range of a day's rows (a Spark task's)
RANGE_ROWS = 65_536
#: a replay job's events a shard, on average: the intervals it replays at once
REPLAY_ROWS = 262_144


@dataclass(frozen=True)
class ShardJob:
    """What a Python worker needs to advance one entity's shards (pickled to it)."""

    usecase: UseCase
    entity: str
    previous: str | None  # the sharded state as of the first interval's start; None: fresh
    target: str  # where the shards' states after the last interval are saved
    #: the intervals (start, end) advanced, in order; with more than one, the events
    #: carry their interval's place in the column ``_STEP``
    intervals: tuple[tuple[datetime, datetime], ...]
    parts: str | None = None  # where each shard writes the rows it emits (None: nowhere)


def shard_folder(root: Path, entity: str, shard: int) -> Path:
    return root / entity / f"shard-{shard:04d}"


def advance_shard(
    usecase: UseCase,
    entity: str,
    events: pd.DataFrame,
    start: datetime,
    end: datetime,
    previous: Path | None,
    target: Path,
) -> pd.DataFrame:
    """Advance one shard of ``entity``'s aggregation state by the interval's ``events``
    (the event-table rows of the shard's keys, in any order): the state saved in
    ``previous`` (a fresh one if ``None``) is saved, advanced, in ``target``; returns
    the rows the shard emits, stamped ``end``, by key."""
    return _advance_through(usecase, entity, [(events, start, end)], previous, target)


def _advance_through(
    usecase: UseCase,
    entity: str,
    steps: Iterable[tuple[pd.DataFrame, datetime, datetime]],
    previous: Path | None,
    target: Path,
) -> pd.DataFrame:
    """:func:`advance_shard` through consecutive intervals (each one's events, start
    and end), the state saved once, after the last; the last one's rows."""
    from closedloop.core.aggregates import AggregationEngine
    from closedloop.core.aggregation_state import AggregationState

    state = AggregationState() if previous is None else AggregationState.load(previous)
    engine = AggregationEngine(usecase, entities=[entity])
    order = [usecase.batch.timestamp_column, usecase.batch.id_column]
    rows = None
    for events, start, end in steps:
        events = events.sort_values(order, kind="stable", ignore_index=True)
        rows = engine.advance(state, events, start, end)[entity]
    if rows is None:
        raise ValueError("no interval to advance through")
    state.save(target)
    return rows


def sharded_state(folder: Path, shards: int, entities: list[str]) -> bool:
    """Whether ``folder`` holds a sharded state of ``entities`` cut in ``shards``."""
    marker = folder / SHARDED
    if not marker.exists():
        return False
    meta = json.loads(marker.read_text())
    return (
        meta.get("format") == STATE_FORMAT
        and meta.get("shards") == shards
        and sorted(meta.get("entities", [])) == sorted(entities)
    )


def engineer_on_spark(
    settings: Settings, start: datetime, end: datetime, clean_uri: str, staged: Path
) -> dict[str, str]:
    """The interval's staged tables and sharded state in ``staged`` (see the module):
    the same files :func:`~closedloop.core.feature_pipeline.engineer` stages."""
    from closedloop.core import spark as engine

    usecase = settings.usecase
    session = engine.session(settings)
    uris = {usecase.event_table: str(staged / f"{usecase.event_table}.parquet")}
    events_path = Path(uris[usecase.event_table])
    _stage_events(session, usecase, clean_uri, events_path)
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    previous = previous_state(settings, session, start)
    target = staged / STATE
    shutil.rmtree(target, ignore_errors=True)
    for entity in _entities(usecase):
        table = usecase.aggregate_tables[entity]
        uris[table] = str(staged / f"{table}.parquet")
        parts = _parts(Path(uris[table]))
        events = session.read.parquet(str(events_path))
        job = ShardJob(usecase, entity, previous, str(target), ((start, end),), str(parts))
        _advanced(session, settings, events, job).collect()
        _merge_parts(parts, Path(uris[table]))
    _mark(target, settings, end)
    shutil.rmtree(_replay_folder(settings, start), ignore_errors=True)
    return uris


def _replay_folder(settings: Settings, start: datetime) -> Path:
    return settings.staging_dir / settings.usecase.interval_key(start) / "replay"


def _entities(usecase: UseCase) -> list[str]:
    return [e for e, aggregates in usecase.features.aggregations.items() if aggregates]


def _mark(folder: Path, settings: Settings, end: datetime) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": STATE_FORMAT,
        "shards": settings.spark.aggregation_shards,
        "entities": _entities(settings.usecase),
        "as_of": end.isoformat(),
    }
    (folder / SHARDED).write_text(json.dumps(meta, sort_keys=True))


def previous_state(settings: Settings, session: Any, start: datetime) -> str | None:
    """The sharded state as of ``start``: the snapshot the previous interval saved;
    ``None`` (fresh) when no interval before ``start`` was loaded; else one rebuilt by
    replaying the event table's earlier partitions through the shard job (a snapshot
    of another layout or shard count, or none kept)."""
    usecase = settings.usecase
    shards, entities = settings.spark.aggregation_shards, _entities(usecase)
    snapshot = settings.aggregation_state_dir / usecase.interval_key(start - usecase.interval)
    if sharded_state(snapshot, shards, entities):
        return str(snapshot)
    table_dir = settings.offline_table_dir(usecase.event_table)
    earlier = [k for k in offline.partition_keys(table_dir) if k < usecase.interval_key(start)]
    if not earlier:
        return None
    log.warning(
        "No sharded aggregation state before %s: replaying %d intervals", start, len(earlier)
    )
    replay = _replay_folder(settings, start)
    shutil.rmtree(replay, ignore_errors=True)
    previous = None
    for step, job_intervals in enumerate(_replay_jobs(usecase, table_dir, earlier, start, shards)):
        events = _replayed_events(settings, session, table_dir, job_intervals)
        target = replay / f"{step:06d}"
        spans = tuple((at.astimezone(UTC), end.astimezone(UTC)) for at, end, _ in job_intervals)
        for entity in entities:
            job = ShardJob(usecase, entity, previous, str(target), spans)
            _advanced(session, settings, events, job).collect()  # the states only
        _mark(target, settings, job_intervals[-1][1])
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
        previous = str(target)
    return previous


def _replay_jobs(
    usecase: UseCase, table_dir: Path, keys: list[str], start: datetime, shards: int
) -> list[list[tuple[datetime, datetime, str | None]]]:
    """The intervals from the first of ``keys`` to ``start`` (start, end, its partition's
    key or ``None`` where none was loaded), cut into consecutive runs of at most
    ``REPLAY_ROWS`` events a shard (an interval alone may hold more)."""
    loaded, budget = set(keys), REPLAY_ROWS * shards
    jobs: list[list[tuple[datetime, datetime, str | None]]] = [[]]
    rows, at = 0, usecase.key_start(keys[0])
    while at < start:
        key, following = usecase.interval_key(at), usecase.next_start(at)
        size = 0
        if key in loaded:
            size = pq.ParquetFile(offline.partition_path(table_dir, key)).metadata.num_rows
        if jobs[-1] and rows + size > budget:
            jobs.append([])
            rows = 0
        jobs[-1].append((at, following, key if key in loaded else None))
        rows, at = rows + size, following
    return jobs


def _replayed_events(
    settings: Settings,
    session: Any,
    table_dir: Path,
    intervals: list[tuple[datetime, datetime, str | None]],
) -> Any:
    """The event-table rows of a replay job's ``intervals``, each with its place among
    them in the column ``_STEP``."""
    from pyspark.sql import functions as F

    frames = [
        session.read.parquet(str(offline.partition_path(table_dir, key))).withColumn(
            _STEP, F.lit(step)
        )
        for step, (_, _, key) in enumerate(intervals)
        if key is not None
    ]
    if not frames:
        return _empty_events(settings, session).withColumn(_STEP, F.lit(0))
    return functools.reduce(lambda a, b: a.unionByName(b), frames)


def _empty_events(settings: Settings, session: Any) -> Any:
    """An empty event table with the declared columns, as Spark reads the files."""
    from closedloop.core.feature_pipeline import _no_events

    table = pa.Table.from_pandas(_no_events(settings), preserve_index=False)
    return session.createDataFrame([], schema=_spark_schema(table.schema))


def _spark_schema(schema: pa.Schema) -> Any:
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(offline.writable_schema(schema))


# -- the event table -----------------------------------------------------------------------


def _stage_events(session: Any, usecase: UseCase, clean_uri: str, target: Path) -> None:
    """The event table of the cleaned batch at ``clean_uri``, written to ``target``."""
    from pyspark.sql import functions as F

    rows = pq.ParquetFile(clean_uri).metadata.num_rows
    if rows == 0:  # nothing for Spark to read
        from closedloop.core.derive import event_table

        event_table(pd.read_parquet(clean_uri), usecase).to_parquet(target, index=False)
        return
    order = [F.col(c).asc_nulls_last() for c in (usecase.batch.timestamp_column,
                                                  usecase.batch.id_column)]  # fmt: skip
    # ranges of RANGE_ROWS in order, each Arrow batch of a range written as a part
    ranges = max(1, math.ceil(rows / RANGE_ROWS))
    parts = _parts(target)
    (
        session.read.parquet(clean_uri)
        .repartitionByRange(ranges, *order)
        .sortWithinPartitions(*order)
        .mapInArrow(functools.partial(_derive_partition, usecase, str(parts)), _WRITTEN_DDL)
        .collect()
    )
    _merge_parts(parts, target)


def _derive_partition(
    usecase: UseCase, parts: str, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """``mapInArrow``'s function: each batch's event-table rows written to ``parts`` as
    ``<range>-<batch>.parquet`` (their order), reporting how many."""
    from pyspark import TaskContext

    from closedloop.core.derive import event_table

    at = TaskContext.get().partitionId()
    for seq, batch in enumerate(batches):
        frame = _utc(pa.Table.from_batches([batch]).to_pandas())
        table = pa.Table.from_pandas(event_table(frame, usecase), preserve_index=False)
        yield _written(Path(parts) / f"{at:06d}-{seq:06d}.parquet", table)


# -- the aggregates ------------------------------------------------------------------------


def _advanced(session: Any, settings: Settings, events: Any, job: ShardJob) -> Any:
    """Spark's plan of one entity's shards advanced by ``events``: one row per shard
    with its emitted rows (IPC), ordered by shard."""
    from pyspark.sql import functions as F

    key = job.usecase.entities[job.entity].join_key
    ts = job.usecase.batch.timestamp_column
    shards = settings.spark.aggregation_shards
    mine = events.where(F.col(key).isNotNull() & F.col(ts).isNotNull()).withColumn(
        _SHARD, F.pmod(F.hash(F.col(key)), F.lit(shards)).cast("int")
    )
    every = session.range(shards).select(F.col("id").cast("int").alias(_SHARD))
    return (
        mine.groupBy(_SHARD)
        .cogroup(every.groupBy(_SHARD))
        .applyInArrow(functools.partial(_advance_group, job), _WRITTEN_DDL)
    )


def _advance_group(job: ShardJob, key: tuple[Any, ...], events: pa.Table, _: pa.Table) -> pa.Table:
    """``applyInArrow``'s function: advance the shard ``key`` (see :func:`advance_shard`)."""
    shard = key[0].as_py()
    previous = None if job.previous is None else shard_folder(Path(job.previous), job.entity, shard)
    rows = _advance_through(
        job.usecase, job.entity, _steps(job, events.drop_columns([_SHARD])), previous,
        shard_folder(Path(job.target), job.entity, shard),
    )  # fmt: skip
    table = pa.Table.from_pandas(rows, preserve_index=False)
    if job.parts is None:
        return pa.Table.from_batches([_written(None, table)])
    return pa.Table.from_batches([_written(Path(job.parts) / f"{shard:06d}.parquet", table)])


def _steps(job: ShardJob, events: pa.Table) -> Iterator[tuple[pd.DataFrame, datetime, datetime]]:
    """Each of the job's intervals with its events, as pandas: one interval's rows
    converted alone, as the single interval's are."""
    if _STEP not in events.column_names:
        ((start, end),) = job.intervals
        yield _utc(events.to_pandas()), start, end
        return
    step = events.column(_STEP).to_numpy()
    events = events.drop_columns([_STEP])
    for at, (start, end) in enumerate(job.intervals):
        yield _utc(events.filter(pa.array(step == at)).to_pandas()), start, end


# -- moving Arrow tables through Spark -----------------------------------------------------


def _utc(frame: pd.DataFrame) -> pd.DataFrame:
    """Spark hands timestamps in the session's zone (UTC): stated as UTC, as the local
    step reads them from Parquet."""
    for name, dtype in frame.dtypes.items():
        if isinstance(dtype, pd.DatetimeTZDtype) and str(dtype.tz) != "UTC":
            frame[name] = frame[name].dt.tz_convert("UTC")
    return frame


def _written(path: Path | None, table: pa.Table) -> pa.RecordBatch:
    """Write ``table`` to ``path`` (atomically: a retried Spark task writes it again);
    the row a worker reports for it."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    return pa.RecordBatch.from_pydict(
        {_ROWS: [table.num_rows]}, schema=pa.schema([(_ROWS, pa.int64())])
    )


def _parts(target: Path) -> Path:
    """The folder the workers write ``target``'s parts to (emptied first)."""
    parts = target.with_name(f"{target.stem}.parts")
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True)
    return parts


def _merge_parts(parts: Path, target: Path) -> None:
    """The parts in ``parts``, in the order of their names, as the Parquet file
    ``target`` (replaced), one part at a time; then the parts are removed. The first
    part with rows fixes the schema (with its pandas metadata: the local step's file
    reads back alike); without any row, the first part is the file."""
    paths = sorted(parts.glob("*.parquet"))
    if not paths:
        raise RuntimeError(f"Spark's workers wrote no part of {target.name}")
    if offline.write_chunks((pq.read_table(p) for p in paths), target) == 0:
        shutil.copyfile(paths[0], target)
    shutil.rmtree(parts, ignore_errors=True)
