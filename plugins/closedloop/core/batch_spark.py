"""Batch inference on Spark (``compute: spark``): what
:func:`~closedloop.core.batch_inference.score_interval` runs instead of its own reader,
join and model call; it still writes both outputs, with the same writers.

:func:`scored_chunks` has Spark read the interval's events and the feature views'
Parquet folders and join them point in time by :mod:`closedloop.core.asof`'s rule (a
key's newest row stamped at or before the event and within the view's TTL; of rows
stamped alike, the one read last; then the declared defaults). Spark numbers the events
in the order the local path reads them and cuts them into the same chunks; a Python
worker (``mapInArrow``) scores each chunk whole, so the model sees the very matrices it
sees locally (a row's probability can differ in the last bit with the rows around it:
BLAS), and makes the chunk's two output tables with the local path's code
(:func:`~closedloop.core.batch_inference.output_tables`). The files are the local
path's, byte for byte. Each worker loads the model once (:func:`_predictor`).

The driver holds about one chunk: the scored chunks stay on the executors' disks and
reach the driver one range partition (about one chunk) at a time, in chunk order
(``toLocalIterator``), each written while the next one is fetched.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import socket
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from closedloop.core.batch_inference import ChunkPredictor, output_tables

if TYPE_CHECKING:
    from collections.abc import Iterator
    from datetime import datetime
    from pathlib import Path

    from closedloop.core.asof import FeatureViewPlan
    from closedloop.core.registry import LoadedModel
    from closedloop.core.settings import Settings

# Spark columns of the plan (never a use case's)
_FILE, _ROW, _BLOCK, _OFFSET = "__cl_file", "__cl_row", "__cl_block", "__cl_offset"
_POS, _CHUNK = "__cl_pos", "__cl_chunk"
_T, _SIDE, _VFILE, _VROW, _MATCH, _HIT = (
    "__cl_t", "__cl_side", "__cl_vfile", "__cl_vrow", "__cl_match", "__cl_hit",
)  # fmt: skip
_MATCH_TS = "__cl_ts"

#: what a worker returns per chunk: its outputs as Arrow IPC streams, and who made them
_SCORED = pa.schema(
    [
        ("chunk", pa.int64()),
        ("worker", pa.string()),
        ("loaded", pa.bool_()),
        ("positives", pa.int64()),
        ("predict_seconds", pa.float64()),
        ("predictions", pa.binary()),
        ("records", pa.binary()),
    ]
)
_SCORED_DDL = (
    "chunk long, worker string, loaded boolean, positives long, predict_seconds double, "
    "predictions binary, records binary"
)

#: (tracking URI, model URI) -> the model a Python worker loaded, kept for its life
_PREDICTORS: dict[tuple[str, str], ChunkPredictor] = {}


@dataclass(frozen=True)
class ChunkJob:
    """What a Python worker needs to score chunks: where the model is (not the model),
    its metadata, the chunk's columns and the outputs' schemas."""

    tracking_uri: str
    #: where the model version's files are (the registry's download URI)
    model_uri: str
    #: the model's name, version, threshold, input columns and alias; no fitted model
    model: LoadedModel
    timestamp: str
    id_column: str
    #: the entity rows' columns: keys, timestamp, the own views' features
    entity_columns: list[str]
    #: the other views' features
    joined: list[str]
    pred_schema: pa.Schema
    log_schema: pa.Schema


def scored_chunks(
    settings: Settings,
    start: datetime,
    end: datetime,
    paths: list[Path],
    views: list[FeatureViewPlan],
    loaded: LoadedModel,
    schemas: tuple[pa.Schema, pa.Schema],
    chunk_rows: int,
    *,
    seconds: dict[str, float],
    spread: dict[str, int],
) -> Iterator[tuple[pa.Table, pa.Table, dict[str, float]]]:
    """The (predictions, records, stage) of each chunk of ``chunk_rows`` events of
    ``paths`` stamped in ``[start, end)``, in the local path's order (see the module).

    ``seconds`` gets ``spark`` (the Spark jobs: reading, joining and scoring on the
    executors), ``collect`` (waiting for the chunks); each stage says how long the
    model took in its worker (``predict``). ``spread`` gets the number of ``chunks``,
    of Python ``workers`` that scored them and of ``model_loads``.
    """
    from pyspark import StorageLevel

    from closedloop.core import spark as engine
    from closedloop.core.registry import client_for

    session = engine.session(settings)
    usecase = settings.usecase
    ts = usecase.batch.timestamp_column
    own = [f for v in views if v.own for f in v.features]
    entity_columns = list(dict.fromkeys([*usecase.entity_keys, ts, *own]))
    others = [v for v in views if not v.own]
    joined = list(dict.fromkeys(f for v in others for f in v.features))
    t0 = time.perf_counter()
    events, total = _numbered(session, _events(session, paths, entity_columns, ts, start, end))
    if total == 0:
        seconds["spark"] += time.perf_counter() - t0
        spread |= {"chunks": 0, "workers": 0, "model_loads": 0}
        return
    for view in others:
        events = _join_view(session, events, ts, view, start, end, schemas[1])
    events = _with_defaults(events, usecase.defaults, joined)
    count = math.ceil(total / chunk_rows)
    job = ChunkJob(
        tracking_uri=settings.mlflow_tracking_uri,
        model_uri=client_for(settings).get_model_version_download_uri(loaded.name, loaded.version),
        model=dataclasses.replace(loaded, model=None),
        timestamp=ts,
        id_column=usecase.batch.id_column,
        entity_columns=entity_columns,
        joined=joined,
        pred_schema=schemas[0],
        log_schema=schemas[1],
    )
    chunks = (
        events.withColumn(_CHUNK, _div(_POS, chunk_rows))
        .select(_CHUNK, _POS, *entity_columns, *joined)
        # a range partition holds whole chunks, in order: about one per partition
        .repartitionByRange(count, _CHUNK)
        .sortWithinPartitions(_CHUNK, _POS)
        .mapInArrow(functools.partial(_score_partition, job), _SCORED_DDL)
        .persist(StorageLevel.DISK_ONLY)
    )
    try:
        chunks.count()  # every chunk scored, in parallel, kept on the executors' disks
        seconds["spark"] += time.perf_counter() - t0
        loads: Counter[str] = Counter()
        expected = 0
        t0 = time.perf_counter()
        for row in chunks.toLocalIterator():
            if row.chunk != expected:
                raise RuntimeError(f"Spark returned chunk {row.chunk} where {expected} was due")
            scored, records = _from_ipc(row.predictions), _from_ipc(row.records)
            seconds["collect"] += time.perf_counter() - t0
            loads[row.worker] += row.loaded
            yield scored, records, {"predict": row.predict_seconds, "positives": row.positives}
            expected += 1
            t0 = time.perf_counter()
        if expected != count:
            raise RuntimeError(f"Spark returned {expected} chunks of {count}")
        spread |= {"chunks": count, "workers": len(loads), "model_loads": loads.total()}
    finally:
        chunks.unpersist()


def _events(
    session: Any, paths: list[Path], columns: list[str], ts: str, start: datetime, end: datetime
) -> Any:
    """``columns`` of the rows of ``paths`` stamped in ``[start, end)``, with each
    row's file (its rank in ``paths``) and its index in the file."""
    from pyspark.sql import functions as F

    frames = [
        session.read.parquet(str(path)).select(
            *columns, F.lit(rank).alias(_FILE), F.col("_metadata.row_index").alias(_ROW)
        )
        for rank, path in enumerate(paths)
    ]
    events = functools.reduce(lambda a, b: a.unionByName(b), frames)
    return events.where((F.col(ts) >= F.lit(start)) & (F.col(ts) < F.lit(end)))


def _numbered(session: Any, events: Any) -> tuple[Any, int]:
    """``events`` with their position (0, 1, ...) in the local path's order — by file,
    then by row in the file — and their number.

    The rows are counted per file and block of rows (a small job); a row's position is
    its block's offset plus its rank in the block, so no step sees all rows at once.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    events = events.withColumn(_BLOCK, _div(_ROW, 65_536))
    counts = sorted(tuple(r) for r in events.groupBy(_FILE, _BLOCK).count().collect())
    offsets, total = [], 0
    for file, block, rows in counts:
        offsets.append((file, block, total))
        total += rows
    if total == 0:
        return events, 0
    starts = session.createDataFrame(offsets, f"{_FILE} int, {_BLOCK} long, {_OFFSET} long")
    rank = F.row_number().over(Window.partitionBy(_FILE, _BLOCK).orderBy(_ROW))
    events = events.join(F.broadcast(starts), [_FILE, _BLOCK])
    events = events.withColumn(_POS, F.col(_OFFSET) + rank - 1)
    return events.drop(_FILE, _ROW, _BLOCK, _OFFSET), total


def _join_view(
    session: Any,
    events: Any,
    when: str,
    view: FeatureViewPlan,
    start: datetime,
    end: datetime,
    log_schema: pa.Schema,
) -> Any:
    """``events`` with ``view``'s features as of each event's time ``when`` (nulls where no row
    matches), by :class:`~closedloop.core.asof.AsOfIndex`'s rule.

    The view's candidate rows (stamped in ``[start - ttl, end)``) and the events are
    one sequence per key, ordered by time with a view row before an event of the same
    time, view rows of the same time in the order they are read (file name, row index);
    each event takes the last view row before it, if within the TTL.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys, features, ts = view.join_keys, view.features, view.timestamp
    folder = view.folder
    files = [folder] if folder.is_file() else sorted(folder.glob("*.parquet"))
    kept = [c for c in events.columns if c not in features]
    if not files:
        return events.select(*kept, *[_null(f, log_schema) for f in features])
    rows = session.read.parquet(*map(str, files)).select(
        *keys,
        ts,
        *features,
        F.col("_metadata.file_name").alias(_VFILE),
        F.col("_metadata.row_index").alias(_VROW),
    )
    inside = F.col(ts) < F.lit(end)
    if view.ttl is not None:
        inside &= F.col(ts) >= F.lit(start - view.ttl)
    for key in keys:
        inside &= F.col(key).isNotNull()
    rows = rows.where(inside & F.col(ts).isNotNull()).select(
        *keys,
        F.col(ts).alias(_T),
        F.lit(0).alias(_SIDE),
        _VFILE,
        _VROW,
        F.struct(F.col(ts).alias(_MATCH_TS), *features).alias(_MATCH),
    )
    both = events.withColumn(_T, F.col(when)).withColumn(_SIDE, F.lit(1))
    both = both.unionByName(rows, allowMissingColumns=True)
    before = (
        Window.partitionBy(*keys)
        .orderBy(_T, _SIDE, _VFILE, _VROW)
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    both = both.withColumn(_HIT, F.last(_MATCH, ignorenulls=True).over(before))
    both = both.where(F.col(_SIDE) == 1)
    found = F.col(_HIT).isNotNull()
    if view.ttl is not None:
        ttl = view.ttl // timedelta(microseconds=1)
        found &= F.unix_micros(F.col(_HIT)[_MATCH_TS]) >= F.unix_micros(F.col(_T)) - ttl
    return both.select(*kept, *[F.when(found, F.col(_HIT)[f]).alias(f) for f in features])


def _with_defaults(events: Any, defaults: dict[str, float | int], joined: list[str]) -> Any:
    """The joined features with NaN as missing (as Arrow takes a pandas NaN) and the
    declared defaults in place of the missing values."""
    from pyspark.sql import functions as F

    kinds = dict(events.dtypes)
    for name in joined:
        value = F.col(name)
        if kinds[name] in ("double", "float"):
            value = F.when(~F.isnan(value), value)
        if name in defaults:
            value = F.coalesce(value, F.lit(defaults[name]))
        events = events.withColumn(name, value)
    return events


def _score_partition(job: ChunkJob, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``mapInArrow``'s function: the rows of a partition (sorted by chunk, whole
    chunks) gathered chunk by chunk, each chunk scored whole."""
    held: list[pa.RecordBatch] = []
    current: int | None = None
    for batch in batches:
        if not batch.num_rows:
            continue
        ids = batch.column(_CHUNK).to_numpy()
        cuts = [0, *(np.flatnonzero(np.diff(ids)) + 1).tolist(), batch.num_rows]
        for a, b in itertools.pairwise(cuts):
            if current is not None and ids[a] != current:
                yield _scored_chunk(job, current, held)
                held = []
            current = int(ids[a])
            held.append(batch.slice(a, b - a))
    if held:
        assert current is not None
        yield _scored_chunk(job, current, held)


def _scored_chunk(job: ChunkJob, chunk: int, batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    """One chunk's outputs (see :data:`_SCORED`), as the local path makes them."""
    from threadpoolctl import threadpool_limits

    table = pa.Table.from_batches(batches)
    predictor, loaded = _predictor(job)
    entity = table.select(job.entity_columns)
    joined = {name: table.column(name) for name in job.joined}
    inputs = {c: joined[c] if c in joined else entity.column(c) for c in job.model.feature_names}
    t0 = time.perf_counter()
    with threadpool_limits(limits=1):  # as the local path scores: one BLAS thread
        score = predictor(inputs)
    took = time.perf_counter() - t0
    scored, records, positives = output_tables(
        job.model, entity, joined, score, job.timestamp, job.id_column,
        job.pred_schema, job.log_schema,
    )  # fmt: skip
    worker = f"{socket.gethostname()}:{os.getpid()}"
    values = [chunk, worker, loaded, positives, took, _to_ipc(scored), _to_ipc(records)]
    return pa.RecordBatch.from_arrays(
        [pa.array([v], f.type) for v, f in zip(values, _SCORED, strict=True)], schema=_SCORED
    )


def _predictor(job: ChunkJob) -> tuple[ChunkPredictor, bool]:
    """The worker's model for ``job`` and whether this call loaded it: loaded on the
    worker's first chunk, kept for the worker's life (Spark reuses its Python workers),
    never shipped per batch.

    The driver has loaded the version through :func:`~closedloop.core.registry.load_model`,
    which refuses a model this project's training did not log, and asked the registry
    where the version's files are: the worker reads them from there, without the
    registry's database (the tracking URI serves a server's proxied artifacts).
    """
    key = (job.tracking_uri, job.model_uri)
    if key in _PREDICTORS:
        return _PREDICTORS[key], False
    import mlflow

    # the fluent API's URIs are the worker process's own
    mlflow.set_tracking_uri(job.tracking_uri)
    mlflow.set_registry_uri(job.tracking_uri)
    with warnings.catch_warnings():  # as registry.load_version: skops' lookups warn
        warnings.simplefilter("ignore")
        model = mlflow.sklearn.load_model(job.model_uri)
    predictor = ChunkPredictor(dataclasses.replace(job.model, model=model))
    _PREDICTORS[key] = predictor
    return predictor, True


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression="lz4")
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


def _div(column: str, by: int) -> Any:
    from pyspark.sql import functions as F

    return F.expr(f"`{column}` div {int(by)}")


def _null(name: str, schema: pa.Schema) -> Any:
    """A null column ``name`` of its type in ``schema`` (a string if not there)."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_type

    field = schema.field(name) if name in schema.names else None
    kind = field.type if field is not None else pa.string()
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return F.lit(None).cast(from_arrow_type(kind)).alias(name)
