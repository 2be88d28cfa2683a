"""Batch inference (the paper's C7): score an interval's events with the champion.

:func:`score_interval` scores the events of ``[start, end)`` with the model behind an
alias (``champion`` by default; :func:`closedloop.core.registry.load_model`), on the
feature service's features as of each event's time with the declared defaults (the
inputs a training set gets from Feast), joined by :mod:`closedloop.core.asof`,
``chunk_rows`` at a time with reading, scoring and writing overlapped, so
memory stays flat in the rows. It writes ``<home>/predictions/<use case>/<day>.parquet``
and the prediction log's partition of the day, both replaced whole on a rerun; an
interval without events removes what an earlier run wrote. Why the join is not Feast's
and what it costs: docs/design.md and docs/benchmarks.md. With ``compute: spark`` Spark
reads, joins and scores the chunks (:mod:`closedloop.core.batch_spark`) with this
module's model call (:class:`ChunkPredictor`) and output tables (:func:`output_tables`),
and they are written here: the same files, byte for byte.

One module of this size: the chunk pipeline (read, score, write) and its outputs' schemas.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from closedloop.core import failpoints, offline
from closedloop.core.asof import AsOfIndex, feature_views
from closedloop.core.errors import BatchNotFoundError
from closedloop.core.fast_pipeline import FastPipeline
from closedloop.core.files import prefetched
from closedloop.core.prediction_log import CORE_COLUMNS, PredictionLog, prediction_id
from closedloop.core.registry import LoadedModel, load_model
from closedloop.core.training_pipeline import EVENT_TIMESTAMP

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from feast import FeatureStore

    from closedloop.core.settings import Settings

log = logging.getLogger(__name__)

SOURCE = "batch"


def predictions_dir(settings: Settings) -> Path:
    """Folder of the predictions table: one Parquet file per scored interval."""
    return settings.home / "predictions" / settings.usecase.name


def score_interval(
    settings: Settings,
    start: datetime,
    end: datetime,
    *,
    chunk_rows: int = 50_000,
    model: LoadedModel | None = None,
) -> dict[str, Any]:
    """Score the events of ``[start, end)`` and write both outputs (see the module).

    ``model`` defaults to the champion (:func:`load_model`). Returns ``rows``, ``chunks``,
    ``model_version``, ``predictions_uri`` and ``log_uri`` (``None`` when there were no
    rows), ``positive_rate`` (share decided positive; ``None`` without rows) and
    ``seconds`` spent per stage (read: decoding the entity rows, in a thread of its own;
    join: the other views' features and the model's input frame; predict; write: the
    time spent waiting for the background writes; total: the wall time). With
    ``compute: spark`` the stages are :func:`~closedloop.core.batch_spark.scored_chunks`'s
    and ``spark`` says how the work was spread (its Python workers, the model loads).
    """
    from closedloop.core.feature_store import feature_refs, open_store

    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    start, end = _utc(start), _utc(end)
    if end <= start:
        raise ValueError(f"empty interval [{start}, {end})")
    began = time.perf_counter()
    loaded = model if model is not None else load_model(settings)
    usecase = settings.usecase
    key = usecase.interval_key(start)
    table_dir = settings.offline_table_dir(usecase.event_table)
    last = usecase.interval_key(end - timedelta(microseconds=1))
    paths = [
        offline.partition_path(table_dir, k)
        for k in offline.partition_keys(table_dir)
        if key <= k <= last
    ]
    if key not in offline.partition_keys(table_dir):
        # The features of the interval have not landed yet: a retry may find them.
        raise BatchNotFoundError(
            f"no {usecase.event_table} partition for {key} in {table_dir}: run the "
            "feature pipeline for the interval first"
        )
    predictions = PredictionLog(settings.prediction_log_dir)
    targets = (
        offline.partition_path(predictions_dir(settings), key),
        predictions.batch_partition(key),
    )
    seconds = dict.fromkeys(("read", "join", "predict", "write"), 0.0)
    rows = chunks = positives = 0
    spread: dict[str, int] = {}
    if paths:
        store = open_store(settings)
        refs = feature_refs(store, usecase.feature_service)
        schemas = _schemas(settings, store, refs, loaded, pq.read_schema(paths[0]))
        t0 = time.perf_counter()
        views = feature_views(settings, store, refs)
        if settings.compute == "spark":
            from closedloop.core.batch_spark import scored_chunks

            seconds = dict.fromkeys(("spark", "collect", "predict", "write"), 0.0)
            results = scored_chunks(
                settings, start, end, paths, views, loaded, schemas, chunk_rows,
                seconds=seconds, spread=spread,
            )  # fmt: skip
            rows, chunks, positives = write_outputs(settings, key, schemas, results, seconds)
        else:
            own = [f for v in views if v.own for f in v.features]
            indexes = [AsOfIndex(v, start, end) for v in views if not v.own]
            seconds["join"] += time.perf_counter() - t0
            scorer = _ChunkScorer(settings, indexes, loaded, *schemas)
            tables = _entity_tables(paths, settings, start, end, chunk_rows, own, seconds=seconds)
            # One BLAS/OpenMP thread for the model: the other core decodes and writes.
            # A chunk's matrix-vector product is too small to gain from a second BLAS
            # thread, whose busy wait after every call took 1.7 s of CPU from the
            # writer per 1M rows (wall 3.4-3.9 s -> 2.7-3.0 s, benchmarks/batch_inference.py).
            with threadpool_limits(limits=1):
                results = (scorer(table) for table in prefetched(tables, name="batch-read"))
                rows, chunks, positives = write_outputs(settings, key, schemas, results, seconds)
    if rows == 0:  # nothing to say about the interval: no stale outputs either
        for target in targets:
            target.unlink(missing_ok=True)
    seconds["total"] = time.perf_counter() - began
    return {
        "rows": rows,
        "chunks": chunks,
        "model_version": loaded.version,
        "predictions_uri": str(targets[0]) if rows else None,
        "log_uri": str(targets[1]) if rows else None,
        "positive_rate": positives / rows if rows else None,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    } | ({"spark": spread} if settings.compute == "spark" else {})


def write_outputs(
    settings: Settings,
    key: str,
    schemas: tuple[pa.Schema, pa.Schema],
    results: Iterator[tuple[pa.Table, pa.Table, dict[str, float]]],
    seconds: dict[str, float],
) -> tuple[int, int, int]:
    """Write the (predictions, records, stage) chunks of ``results`` to the partitions
    ``key`` of both outputs, in order; returns (rows, chunks, positives).

    The next chunk is made (``results``) while the previous one is written (a thread;
    Arrow's Parquet writer releases the GIL too). One write in flight, in chunk order;
    an error anywhere leaves the block, which discards both temporary files. Each
    stage's seconds but ``positives`` are added to ``seconds``.
    """
    predictions = PredictionLog(settings.prediction_log_dir)
    rows = chunks = positives = 0
    with (
        offline.PartitionWriter(predictions_dir(settings), key, schemas[0]) as pred_out,
        predictions.batch_writer(key, schemas[1]) as log_out,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-write") as writer,
    ):
        pending: Future[None] | None = None
        for scored, records, stage in results:
            t0 = time.perf_counter()
            if pending is not None:
                pending.result()
            pending = writer.submit(_write, pred_out, log_out, scored, records)
            seconds["write"] += time.perf_counter() - t0
            for name, value in stage.items():
                if name != "positives":
                    seconds[name] += value
            rows += scored.num_rows
            chunks += 1
            positives += int(stage["positives"])
            log.debug("chunk %d: %d rows (%d so far)", chunks, scored.num_rows, rows)
        t0 = time.perf_counter()
        if pending is not None:
            pending.result()
        seconds["write"] += time.perf_counter() - t0
        failpoints.hold("batch.outputs_staged")
    return rows, chunks, positives


class _ChunkScorer:
    """Joins and scores one chunk of entity rows, Arrow in and Arrow out.

    The entity keys, the event time and the own views' features pass from the entity
    table to both outputs as the Arrow columns they were read as (see
    :func:`output_tables`); the other views' features come from their
    :class:`AsOfIndex`, with the declared defaults.
    """

    def __init__(
        self,
        settings: Settings,
        indexes: list[AsOfIndex],
        loaded: LoadedModel,
        pred_schema: pa.Schema,
        log_schema: pa.Schema,
    ) -> None:
        self.ts = settings.usecase.batch.timestamp_column
        self.id_column = settings.usecase.batch.id_column
        self.indexes = indexes
        self.loaded = loaded
        self.pred_schema, self.log_schema = pred_schema, log_schema
        joined = {f for index in indexes for f in index.view.features}
        self.defaults = {k: v for k, v in settings.usecase.defaults.items() if k in joined}
        self.predict = ChunkPredictor(loaded)

    def __call__(self, table: pa.Table) -> tuple[pa.Table, pa.Table, dict[str, float]]:
        t0 = time.perf_counter()
        when = _epoch_ns_arrow(table.column(self.ts))
        joined: dict[str, np.ndarray] = {}
        for index in self.indexes:
            joined |= index.take(index.matches(index.codes_of_table(table), when))
        for name, default in self.defaults.items():
            values = joined[name]
            missing = pd.isna(values)
            if missing.any():
                joined[name] = np.where(missing, default, values)
        inputs = {
            c: joined[c] if c in joined else table.column(c) for c in self.loaded.feature_names
        }
        t1 = time.perf_counter()
        score = self.predict(inputs)
        t2 = time.perf_counter()
        scored, records, positives = output_tables(
            self.loaded, table, joined, score, self.ts, self.id_column,
            self.pred_schema, self.log_schema,
        )  # fmt: skip
        return scored, records, {"join": t1 - t0, "predict": t2 - t1, "positives": positives}


class ChunkPredictor:
    """The model's probability of the positive class for a chunk's input columns (name
    -> Arrow or numpy column), as float64.

    The model reads the columns through :class:`FastPipeline` once its answer on the
    first chunk equals the pipeline's (else a frame, as a user would call it): turning
    a million values into a frame cost more than the model did
    (``benchmarks/batch_inference.py``).
    """

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        try:
            self.fast: FastPipeline | None = FastPipeline(loaded.model)
        except TypeError as exc:
            log.info("%s v%s scores through its pipeline: %s", loaded.name, loaded.version, exc)
            self.fast = None
        self._checked = self.fast is None

    def __call__(self, inputs: dict[str, Any]) -> np.ndarray:
        if not self._checked:
            self._check(inputs)
        if self.fast is not None:
            return self.fast.predict_proba_columns(inputs)[:, 1]
        return self.loaded.model.predict_proba(_frame(inputs))[:, 1].astype(np.float64)

    def _check(self, inputs: dict[str, Any], rows: int = 5000) -> None:
        """Use :class:`FastPipeline` only if it gives the pipeline's own probabilities,
        to the bit, on the first ``rows`` rows of the first chunk."""
        assert self.fast is not None
        head = {c: v[:rows] for c, v in inputs.items()}
        want = self.loaded.model.predict_proba(_frame(head))
        if not np.array_equal(self.fast.predict_proba_columns(head), want):
            log.warning(
                "%s v%s: the fast path differs from the pipeline, using the pipeline",
                self.loaded.name, self.loaded.version,
            )  # fmt: skip
            self.fast = None
        self._checked = True


def output_tables(
    loaded: LoadedModel,
    table: pa.Table,
    joined: dict[str, Any],
    score: np.ndarray,
    ts: str,
    id_column: str,
    pred_schema: pa.Schema,
    log_schema: pa.Schema,
) -> tuple[pa.Table, pa.Table, int]:
    """A scored chunk's predictions and log records, and how many were decided positive.

    ``table``: the entity rows (keys, ``ts``, the own views' features); ``joined``: the
    other views' features (numpy columns, NaN or None where missing, or Arrow columns,
    null where missing); ``score``: the model's probabilities. The prediction ids are
    made by Arrow: turning a million string keys into Python objects and back cost more
    than the model did.
    """
    n = table.num_rows
    decision = (score >= loaded.threshold).astype(np.int64)
    columns: dict[str, Any] = {
        EVENT_TIMESTAMP: table.column(ts),
        "score": score,
        "decision": decision,
        "model_name": _constant(loaded.name, n),
        "model_version": _constant(loaded.version, n),
        "prediction_id": pc.binary_join_element_wise(
            prediction_id(loaded.name, loaded.version, SOURCE, ""),
            pc.cast(table.column(id_column), pa.string()),
            "",
        ),
        "source": _constant(SOURCE, n),
        "predicted_at": table.column(ts),
        "arm": _constant(loaded.alias, n),
    }
    for name in table.column_names:
        columns.setdefault(name, table.column(name))
    for name, values in joined.items():
        arrow = isinstance(values, (pa.Array, pa.ChunkedArray))
        columns[name] = values if arrow else pa.array(values, from_pandas=True)
    return _table(columns, pred_schema), _table(columns, log_schema), int(decision.sum())


def _frame(inputs: dict[str, Any]) -> pd.DataFrame:
    """The model's input frame (what a user would hand ``predict_proba``)."""
    return pd.DataFrame({c: _values(v) for c, v in inputs.items()}, copy=False)


def _values(column: Any) -> Any:
    """A column as pandas gets it from a plain Parquet file (a category column as
    strings, not as a pandas Categorical)."""
    if isinstance(column, np.ndarray):
        return column
    if pa.types.is_dictionary(column.type):
        column = pc.cast(column, column.type.value_type)
    return column.to_pandas()


def _write(
    pred_out: offline.PartitionWriter,
    log_out: offline.PartitionWriter,
    scored: pa.Table,
    records: pa.Table,
) -> None:
    pred_out.write(scored)
    log_out.write(records)


def _constant(value: str, n: int) -> pa.Array:
    """``n`` times ``value``, as a dictionary array of one value: nothing per row to
    build, and Parquet writes its dictionary page and run-length codes without hashing
    a million equal strings (the file still says string, see ``PartitionWriter``)."""
    return pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(n, dtype=np.int32)), pa.array([value], pa.string())
    )


def _table(columns: dict[str, Any], schema: pa.Schema) -> pa.Table:
    """The columns of ``schema``, cast to its types (an int feature that needed a null
    in this chunk arrives as float; a missing value left after the defaults stays null),
    a dictionary column in its canonical form (:func:`_first_appearance`)."""
    arrays = []
    for field in schema:
        values = columns[field.name]
        if not isinstance(values, (pa.Array, pa.ChunkedArray)):
            values = pa.array(values)
        values = pc.cast(values, field.type)
        if pa.types.is_dictionary(field.type):
            values = _first_appearance(values)
        arrays.append(values)
    return pa.Table.from_arrays(arrays, schema=schema)


def _first_appearance(values: pa.Array | pa.ChunkedArray) -> pa.DictionaryArray:
    """A dictionary column as one array whose dictionary holds the values used, in the
    order they first appear. Parquet stores a dictionary column's dictionary as it is
    given: read from a file, a chunk's dictionary is the source row group's (values of
    rows outside the interval included), and another reader of the same rows (Spark:
    ``closedloop.core.batch_spark``) would write other bytes."""
    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if len(array.dictionary) == 1 and not array.null_count:
        return array  # a constant (see _constant)
    used = pc.unique(array.indices.drop_null()).to_numpy(zero_copy_only=False)
    if np.array_equal(used, np.arange(len(array.dictionary))):
        return array
    lookup = np.zeros(len(array.dictionary), dtype=np.int32)
    lookup[used] = np.arange(len(used), dtype=np.int32)
    return pa.DictionaryArray.from_arrays(
        pc.take(pa.array(lookup), array.indices), array.dictionary.take(pa.array(used))
    )


def _epoch_ns_arrow(moments: pa.ChunkedArray) -> np.ndarray:
    """Nanoseconds since the epoch of an Arrow timestamp column (UTC when zoned)."""
    return pc.cast(moments, pa.timestamp("ns", moments.type.tz)).to_numpy().view(np.int64)


def _entity_tables(
    paths: list[Path],
    settings: Settings,
    start: datetime,
    end: datetime,
    chunk_rows: int,
    features: list[str],
    *,
    seconds: dict[str, float],
) -> Iterator[pa.Table]:
    """Entity keys, event time and ``features`` (those of the views whose rows are the
    entity rows, see :class:`FeatureViewPlan`) of the rows stamped in ``[start, end)``,
    in file order, ``chunk_rows`` at a time (the last chunk may be shorter); never more
    than about two chunks of rows in memory. The use case's category columns come as
    dictionary arrays, as Parquet stores them: the model's encoder and both outputs
    work on their few distinct values instead of every row's string."""
    usecase = settings.usecase
    ts = usecase.batch.timestamp_column
    columns = [*usecase.entity_keys, ts, *features]
    buffered: list[pa.Table] = []
    held = 0
    t0 = time.perf_counter()
    categories = [c for c in columns if c in _category_columns(settings)]
    for path in paths:
        source = pq.ParquetFile(path, read_dictionary=categories)
        for batch in source.iter_batches(batch_size=chunk_rows, columns=columns):
            table = pa.Table.from_batches([batch])
            when = table.column(ts)
            inside = pc.and_(
                pc.greater_equal(when, pa.scalar(start, when.type)),
                pc.less(when, pa.scalar(end, when.type)),
            )
            table = table.filter(inside)
            if table.num_rows:
                buffered.append(table)
                held += table.num_rows
            while held >= chunk_rows:
                whole = pa.concat_tables(buffered)
                rest = whole.slice(chunk_rows)
                buffered, held = ([rest] if rest.num_rows else []), rest.num_rows
                seconds["read"] += time.perf_counter() - t0
                yield whole.slice(0, chunk_rows)
                t0 = time.perf_counter()
    if held:
        seconds["read"] += time.perf_counter() - t0
        yield pa.concat_tables(buffered)


def _schemas(
    settings: Settings,
    store: FeatureStore,
    refs: list[str],
    loaded: LoadedModel,
    source: pa.Schema,
) -> tuple[pa.Schema, pa.Schema]:
    """The outputs' Arrow schemas, from declarations only (the entity table's columns and
    Feast's feature types), so every chunk — whatever nulls it had — writes the same."""
    from feast.type_map import feast_value_type_to_pa

    usecase = settings.usecase
    keys = usecase.entity_keys
    types = {k: source.field(k).type for k in keys}
    views = {fv.name: fv for fv in store.list_feature_views()}
    for ref in refs:
        view, name = ref.split(":", 1)
        field = next(f for f in views[view].features if f.name == name)
        kind = feast_value_type_to_pa(field.dtype.to_value_type())
        default = usecase.defaults.get(name)
        if pa.types.is_integer(kind) and isinstance(default, float) and not default.is_integer():
            kind = pa.float64()  # a fractional default widens the column
        types.setdefault(name, kind)
    unknown = [c for c in loaded.feature_names if c not in types]
    if unknown:
        raise ValueError(
            f"{loaded.name} v{loaded.version} reads {unknown}, which neither the entity "
            f"columns nor the feature service {usecase.feature_service!r} provide"
        )
    when = source.field(usecase.batch.timestamp_column).type
    string = pa.string()
    coded = pa.dictionary(pa.int32(), string)  # written as strings (see _constant)
    for name in _category_columns(settings):
        if name in types and pa.types.is_string(types[name]):
            types[name] = coded
    predictions = pa.schema(
        [(k, types[k]) for k in keys]
        + [
            (EVENT_TIMESTAMP, when),
            ("score", pa.float64()),
            ("decision", pa.int64()),
            ("model_name", coded),
            ("model_version", coded),
        ]
    )
    core = {
        "prediction_id": string,
        "source": coded,
        "predicted_at": when,
        "model_name": coded,
        "model_version": coded,
        "arm": coded,
        "score": pa.float64(),
        "decision": pa.int64(),
    }
    assert list(core) == CORE_COLUMNS, "keep in step with prediction_log.CORE_COLUMNS"
    used = [c for c in loaded.feature_names if c not in keys]
    records = pa.schema(list(core.items()) + [(c, types[c]) for c in [*keys, *used]])
    return predictions, records


def _category_columns(settings: Settings) -> set[str]:
    """The use case's columns declared ``category``: few distinct strings each."""
    return {name for name, spec in settings.usecase.columns.items() if spec.type == "category"}


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"{moment} has no time zone; intervals are in UTC")
    return moment.astimezone(UTC)
