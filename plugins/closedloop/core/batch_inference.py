"""Batch inference (the paper's C7): score an interval's events with the champion.

:func:`score_interval` scores the events of ``[start, end)`` with the model behind an
alias (``champion`` by default) and the threshold its training run recorded, on the
feature service's features as of each event's time with the declared defaults (the
inputs a training set gets from Feast). It applies Feast's point-in-time rule itself
(:class:`AsOfIndex`; ``tests/integration/test_batch_join.py`` holds it to Feast's
answer), ``chunk_rows`` at a time with reading, scoring and writing overlapped, so
memory stays flat in the rows. It writes ``<home>/predictions/<use case>/<day>.parquet``
and the prediction log's partition of the day, both replaced whole on a rerun; an
interval without events removes what an earlier run wrote. Why the join is not Feast's
and what it costs: docs/design.md and docs/benchmarks.md.
"""

from __future__ import annotations

import functools
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from closedloop.core import failpoints, offline
from closedloop.core import tags as tag
from closedloop.core.errors import BatchNotFoundError, NoChampionError
from closedloop.core.fast_pipeline import FastPipeline
from closedloop.core.files import prefetched
from closedloop.core.prediction_log import CORE_COLUMNS, PredictionLog, prediction_id
from closedloop.core.registry import CHAMPION
from closedloop.core.training_pipeline import EVENT_TIMESTAMP

if TYPE_CHECKING:
    from collections.abc import Iterator

    from feast import FeatureStore

    from closedloop.core.settings import Settings

log = logging.getLogger(__name__)

SOURCE = "batch"


@dataclass(frozen=True)
class LoadedModel:
    """A registered model version, ready to score: the fitted pipeline, the decision
    threshold its training run chose and the input columns it was fitted on."""

    name: str
    version: str
    model: Any
    threshold: float
    feature_names: list[str]
    #: the alias it was loaded through; batch records carry it as their A/B arm
    alias: str = CHAMPION


def predictions_dir(settings: Settings) -> Path:
    """Folder of the predictions table: one Parquet file per scored interval."""
    return settings.home / "predictions" / settings.usecase.name


def load_model(settings: Settings, alias: str = CHAMPION) -> LoadedModel:
    """The version ``alias`` points at in the project's registry, with its threshold.

    Raises :class:`NoChampionError` when the model or the alias does not exist, and
    :class:`~closedloop.core.errors.UntrustedModelError` when the version points at
    anything but a model this project's training logged
    (:func:`~closedloop.core.registry.trusted_model_uri`).
    """
    import mlflow

    from closedloop.core.registry import alias_version, client_for, load_version

    name, uri = settings.model_name, settings.mlflow_tracking_uri
    client = client_for(settings)
    version = alias_version(client, name, alias)
    if version is None:
        raise NoChampionError(
            f"registered model {name!r} has no version under the alias {alias!r} in the "
            f"registry at {uri}: train and promote one first (the training DAG)"
        )
    run_id = client.get_model_version(name, version).run_id
    tags = client.get_run(run_id).data.tags
    if tag.THRESHOLD not in tags:
        raise ValueError(
            f"{name} v{version} (run {run_id}) has no {tag.THRESHOLD!r} tag: it was not "
            "trained by closedloop's training pipeline"
        )
    # only a model this project's training logged (UntrustedModelError otherwise)
    model = load_version(settings, version)
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        info = mlflow.models.get_model_info(f"models:/{name}/{version}")
        names = info.signature.inputs.input_names() if info.signature else None
    if names is None or len(names) == 0:
        raise ValueError(f"{name} v{version} does not say which columns it reads")
    return LoadedModel(name, version, model, float(tags[tag.THRESHOLD]), list(names), alias)


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
    time spent waiting for the background writes; total: the wall time).
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
    if paths:
        store = open_store(settings)
        refs = feature_refs(store, usecase.feature_service)
        pred_schema, log_schema = _schemas(settings, store, refs, loaded, pq.read_schema(paths[0]))
        t0 = time.perf_counter()
        views = feature_views(settings, store, refs)
        own = [f for v in views if v.own for f in v.features]
        indexes = [AsOfIndex(v, start, end) for v in views if not v.own]
        seconds["join"] += time.perf_counter() - t0
        scorer = _ChunkScorer(settings, indexes, loaded, pred_schema, log_schema)
        tables = _entity_tables(paths, settings, start, end, chunk_rows, own, seconds=seconds)
        with (
            offline.PartitionWriter(predictions_dir(settings), key, pred_schema) as pred_out,
            predictions.batch_writer(key, log_schema) as log_out,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-write") as writer,
            # One BLAS/OpenMP thread for the model: the other core decodes and writes.
            # A chunk's matrix-vector product is too small to gain from a second BLAS
            # thread, whose busy wait after every call took 1.7 s of CPU from the
            # writer per 1M rows (wall 3.4-3.9 s -> 2.7-3.0 s, benchmarks/batch_inference.py).
            threadpool_limits(limits=1),
        ):
            # Three stages at once: the next chunk is decoded (a thread), this one is
            # joined and scored (here), the previous one is written (a thread; Arrow's
            # Parquet writer releases the GIL too). One write in flight, in chunk order;
            # an error anywhere leaves the block, which discards both temporary files.
            pending: Future[None] | None = None
            for table in prefetched(tables, name="batch-read"):
                scored, records, stage = scorer(table)
                t0 = time.perf_counter()
                if pending is not None:
                    pending.result()
                pending = writer.submit(_write, pred_out, log_out, scored, records)
                seconds["write"] += time.perf_counter() - t0
                seconds["join"] += stage["join"]
                seconds["predict"] += stage["predict"]
                rows += scored.num_rows
                chunks += 1
                positives += stage["positives"]
                log.debug("chunk %d: %d rows (%d so far)", chunks, scored.num_rows, rows)
            t0 = time.perf_counter()
            if pending is not None:
                pending.result()
            seconds["write"] += time.perf_counter() - t0
            failpoints.hold("batch.outputs_staged")
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
    }


def features_for(
    settings: Settings, store: FeatureStore, refs: list[str], entities: pd.DataFrame
) -> pd.DataFrame:
    """The training-set recipe for ``entities`` (keys + ``event_timestamp``): Feast's
    point-in-time features, then the declared defaults. One row per entity row, in order."""
    from closedloop.core.feature_store import historical_features

    frame = historical_features(store, entities, refs)
    defaults = settings.usecase.defaults
    return frame.fillna({k: v for k, v in defaults.items() if k in frame})


@dataclass(frozen=True)
class FeatureViewPlan:
    """What the batch join needs of one feature view of the service."""

    name: str
    features: list[str]
    join_keys: list[str]
    timestamp: str
    #: None: no time limit (Feast's TTL of 0)
    ttl: timedelta | None
    folder: Path
    #: the view's source is the entity table itself, keyed by its id column and stamped
    #: by its timestamp column: each entity row is its own point-in-time match
    own: bool


def feature_views(
    settings: Settings, store: FeatureStore, refs: list[str]
) -> list[FeatureViewPlan]:
    """The views of ``refs`` with their features, keys, timestamp, TTL and folder.

    A view is *own* when its source is the entity table (same folder), its only join key
    is the batch's id column and its timestamp the batch's timestamp column: Feast's
    match for an entity row at time ``t`` is the latest row of that id stamped at or
    before ``t`` (and after ``t - ttl``), and the entity row itself is stamped ``t``, so
    it is the match — unless the table holds another row of the same id stamped at the
    very same instant, where Feast's own choice between the two is arbitrary.
    """
    from feast import FileSource

    usecase = settings.usecase
    entity_dir = settings.offline_table_dir(usecase.event_table).resolve()
    wanted: dict[str, list[str]] = {}
    for ref in refs:
        view, name = ref.split(":", 1)
        wanted.setdefault(view, []).append(name)
    declared = {fv.name: fv for fv in store.list_feature_views()}
    plans = []
    for name, features in wanted.items():
        fv = declared[name]
        source = fv.batch_source
        if (
            not isinstance(source, FileSource)
            or source.field_mapping
            or source.created_timestamp_column
        ):
            raise ValueError(
                f"feature view {name!r}: the batch join reads plain Parquet file sources "
                "(no field mapping, no created timestamp)"
            )
        keys = [fv.projection.join_key_map.get(c.name, c.name) for c in fv.entity_columns]
        missing = [k for k in keys if k not in usecase.entity_keys]
        if missing:
            raise ValueError(f"feature view {name!r} joins on {missing}, not entity columns")
        folder = Path(source.path)
        if not folder.is_absolute():  # Feast resolves a relative path in the repository
            folder = Path(settings.feature_repo) / folder
        plans.append(
            FeatureViewPlan(
                name=name,
                features=features,
                join_keys=keys,
                timestamp=source.timestamp_field,
                ttl=fv.ttl if fv.ttl and fv.ttl.total_seconds() > 0 else None,
                folder=folder,
                own=folder.resolve() == entity_dir
                and keys == [usecase.batch.id_column]
                and source.timestamp_field == usecase.batch.timestamp_column,
            )
        )
    return plans


_FEATURE_TS = "__closedloop_feature_ts"
_ROW = "__closedloop_row"
_CODE = "__closedloop_key"


class AsOfIndex:
    """One view's rows that entity rows stamped in ``[start, end)`` can match, and
    Feast's point-in-time rule over them for a chunk of entity rows.

    Read once per interval: the rows stamped in ``[start - ttl, end)`` (Parquet row-group
    statistics skip the partitions and row groups outside), sorted by key and time. Per
    chunk, each entity row's match is the latest row of its key stamped at or before the
    entity time and no more than the TTL before it, else nulls; equal timestamps of one
    key resolve to the row read last.

    The lookup is one binary search per chunk (written here because neither Feast's
    retrieval nor ``pandas.merge_asof`` does it without re-sorting the chunk and the
    view's rows on every call, which cost more than scoring): each view row gets the
    composite ``key code * T + time rank`` (``T`` = the number of distinct times), which
    is sorted because the rows are; an entity row at time ``t`` asks for the last
    composite at or below ``code * T + rank(t)`` and checks that it is of its own key.
    """

    def __init__(self, view: FeatureViewPlan, start: datetime, end: datetime) -> None:
        self.view = view
        keys, ts = view.join_keys, view.timestamp
        low = start - view.ttl if view.ttl is not None else None
        tables = []
        folder = view.folder
        files = [folder] if folder.is_file() else sorted(folder.glob("*.parquet"))
        for path in files:
            filters = [(ts, "<", end)] + ([(ts, ">=", low)] if low is not None else [])
            table = pq.read_table(path, columns=[*keys, ts, *view.features], filters=filters)
            if table.num_rows:
                tables.append(
                    table.set_column(
                        table.schema.get_field_index(ts),
                        _FEATURE_TS,
                        pc.cast(table.column(ts), pa.timestamp("ns", "UTC")),
                    )
                )
        if tables:
            table = pa.concat_tables(tables, promote_options="permissive")
        else:
            table = pa.table(
                {k: pa.array([], pa.string()) for k in [*keys, *view.features]}
                | {_FEATURE_TS: pa.array([], pa.timestamp("ns", "UTC"))}
            )
        valid = [pc.is_valid(table.column(c)) for c in [*keys, _FEATURE_TS]]
        table = table.filter(functools.reduce(pc.and_, valid))
        # Arrow's sort is stable (equal times of a key keep the order read) and sorts
        # strings by their bytes, as pandas does by code points
        table = table.sort_by([(c, "ascending") for c in [*keys, _FEATURE_TS]])
        if len(keys) == 1:
            # sorted, so the dictionary's codes are the keys' order of first appearance
            encoded = table.column(keys[0]).combine_chunks().dictionary_encode()
            codes = encoded.indices.to_numpy(zero_copy_only=False)
            self._dictionary: pa.Array | None = encoded.dictionary
            self._uniques: pd.Index | None = None
        else:
            frame = table.select(keys).to_pandas()
            codes = _key_index(frame, keys).factorize()[0]  # sorted: one run of rows per key
            firsts = np.flatnonzero(np.diff(codes, prepend=-1)) if len(codes) else []
            self._dictionary = None
            self._uniques = _key_index(frame.iloc[firsts], keys)
        self.codes = np.asarray(codes, dtype=np.int64)
        stamps = table.column(_FEATURE_TS).to_numpy().view(np.int64)
        self.times = np.unique(stamps)
        self.stamps = stamps
        self.composite = self.codes * (len(self.times) + 1) + np.searchsorted(self.times, stamps)
        self.columns = {name: table.column(name).to_pandas().to_numpy() for name in view.features}
        is_text = self._dictionary is not None and pa.types.is_string(self._dictionary.type)
        self._strings = _StringKeys.of(self._dictionary) if is_text else None

    @property
    def uniques(self) -> pd.Index:
        """The distinct keys, in code order (a MultiIndex for a composite key)."""
        if self._uniques is None:
            assert self._dictionary is not None
            self._uniques = pd.Index(self._dictionary.to_numpy(zero_copy_only=False))
        return self._uniques

    def codes_of(self, keys: pd.DataFrame) -> np.ndarray:
        """Each row's key code in this index (``keys``: the join key columns); -1 for
        a key the view lacks. The index's hash table is built on the first call, kept."""
        return self.uniques.get_indexer(_key_index(keys, self.view.join_keys))

    def codes_of_table(self, table: pa.Table) -> np.ndarray:
        """:meth:`codes_of` for the key columns of an Arrow table. A single key is
        dictionary-encoded by Arrow first, so only its distinct values become Python
        objects to look up (a chunk of 50,000 events may have a handful of distinct keys)."""
        keys = self.view.join_keys
        if len(keys) > 1:
            return self.codes_of(table.select(keys).to_pandas())
        encoded = table.column(keys[0]).combine_chunks()
        if not pa.types.is_dictionary(encoded.type):
            encoded = encoded.dictionary_encode()
        if self._strings is not None and pa.types.is_string(encoded.dictionary.type):
            codes = self._strings.codes(encoded.dictionary)
        else:
            codes = self.codes_of(pd.DataFrame({keys[0]: encoded.dictionary.to_pandas()}))
        codes = np.append(codes, -1)  # the last: a null key
        return codes[pc.fill_null(encoded.indices, -1).to_numpy()]

    def matches(self, codes: np.ndarray, when: np.ndarray) -> np.ndarray:
        """The row each (key code, time in ns since the epoch) matches; -1: none."""
        rank = np.searchsorted(self.times, when, side="right") - 1  # last time <= t
        wanted = codes * (len(self.times) + 1) + rank
        if len(self.composite) > 1 << 16:
            # a large view searched in ascending order: numpy's binary search starts
            # from the previous answer then, and stays in cache (~2x faster at 200,000)
            order = np.argsort(wanted)
            at = np.empty_like(wanted)
            at[order] = np.searchsorted(self.composite, wanted[order], "right") - 1
        else:
            at = np.searchsorted(self.composite, wanted, "right") - 1
        ok = (codes >= 0) & (at >= 0)
        at = np.where(ok, at, 0)
        if len(self.codes):
            ok &= self.codes[at] == codes
        if self.view.ttl is not None and len(self.stamps):
            ok &= self.stamps[at] >= when - pd.Timedelta(self.view.ttl).value
        return np.where(ok, at, -1)

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The view's feature values at ``rows`` (from :meth:`matches`; -1: null)."""
        return {
            name: pd.api.extensions.take(values, rows, allow_fill=True)
            for name, values in self.columns.items()
        }

    def features(self, entities: pd.DataFrame) -> pd.DataFrame:
        """The view's features for each row of ``entities`` (join keys and
        ``event_timestamp``), in their order; nulls where no row matches."""
        rows = self.matches(self.codes_of(entities), _epoch_ns(entities[EVENT_TIMESTAMP]))
        return pd.DataFrame(self.take(rows))


class _StringKeys:
    """The position of string keys among ``uniques``, without a Python object per key.

    Why by hand: a pandas ``Index.get_indexer`` needs Python strings, and making them
    from Arrow plus hashing them cost ~40 ms per chunk of 50,000 events against 200,000
    entities — more than the model's share of the chunk with :class:`FastPipeline`.
    Arrow's ``index_in`` rebuilds its hash table of the 200,000 on every call. Here each
    key's UTF-8 bytes, zero-padded to ``width``, are 64-bit words taken straight from the
    Arrow buffers; a 64-bit hash of the words and the length is looked up in a pandas
    ``UInt64`` index built once (C hashing of integers, ~2 ms per chunk), and every hit
    is confirmed by comparing the words and the length: a hash collision can make a key
    look unknown only if two of the ``uniques`` collide, which :meth:`of` refuses.
    """

    _MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
    _MAX_WIDTH = 256

    def __init__(self, words: np.ndarray, lengths: np.ndarray, index: pd.Index) -> None:
        self.words, self.lengths, self.index = words, lengths, index
        self.width = words.shape[1] * 8

    @classmethod
    def of(cls, array: pa.Array) -> _StringKeys | None:
        """The lookup over the distinct strings ``array``, or None when it does not apply
        (no keys, keys longer than 256 bytes, or two keys whose hashes collide)."""
        if len(array) == 0 or array.null_count:
            return None
        longest = int(pc.max(pc.binary_length(array)).as_py())
        if longest > cls._MAX_WIDTH:
            return None
        words, lengths = _padded_words(array, max(8, -(-longest // 8) * 8))
        hashes = cls._hash(words, lengths)
        index = pd.Index(hashes)
        if not index.is_unique:
            return None
        return cls(words, lengths, index)

    @classmethod
    def _hash(cls, words: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        h = lengths.astype(np.uint64) * cls._MULTIPLIER
        with np.errstate(over="ignore"):
            for j in range(words.shape[1]):
                h ^= words[:, j]
                h *= cls._MULTIPLIER
                h ^= h >> np.uint64(29)
        return h

    def codes(self, column: pa.ChunkedArray | pa.Array) -> np.ndarray:
        """Each value's position in ``uniques``; -1 for an unknown or null key."""
        array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        words, lengths = _padded_words(array, self.width)
        at = self.index.get_indexer(self._hash(words, lengths))
        found = np.where(at >= 0, at, 0)
        ok = (at >= 0) & (self.lengths[found] == lengths)  # a cut key is longer than any
        ok &= (self.words[found] == words).all(axis=1)
        if array.null_count:
            ok &= array.is_valid().to_numpy(zero_copy_only=False)
        return np.where(ok, at, -1)


def _padded_words(array: pa.Array, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows x width/8 uint64: each value's UTF-8 bytes zero-padded to ``width`` bytes,
    longer values cut; each value's length in bytes) of a string array."""
    n = len(array)
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, np.int32, n + 1, array.offset * 4).astype(np.int64)
    data = (
        np.frombuffer(data_buffer, np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    )
    lengths = np.diff(offsets)
    kept = np.minimum(lengths, width)
    out = np.zeros((n, width), np.uint8)
    if n and (kept == kept[0]).all() and (lengths == kept).all():  # all of one length
        out[:, : kept[0]] = data[offsets[0] : offsets[-1]].reshape(n, kept[0])
    elif n:
        rows = np.repeat(np.arange(n), kept)
        starts = np.cumsum(kept) - kept
        cols = np.arange(len(rows)) - np.repeat(starts, kept)
        out[rows, cols] = data[np.repeat(offsets[:-1], kept) + cols]
    return out.view(np.uint64), lengths


def join_features(
    settings: Settings, indexes: list[AsOfIndex], entities: pd.DataFrame
) -> pd.DataFrame:
    """``entities`` (keys, ``event_timestamp`` and the own views' features) with every
    other view's point-in-time features and the declared defaults: the training-set
    recipe (:func:`features_for`) without Feast's retrieval (see the module)."""
    frame = entities.reset_index(drop=True)
    joined = [index.features(frame) for index in indexes]
    frame = pd.concat([frame, *joined], axis=1)
    defaults = settings.usecase.defaults
    return frame.fillna({k: v for k, v in defaults.items() if k in frame})


def _epoch_ns(moments: pd.Series) -> np.ndarray:
    """Nanoseconds since the epoch of tz-aware UTC (or naive UTC) timestamps."""
    if isinstance(moments.dtype, pd.DatetimeTZDtype):
        moments = moments.dt.tz_convert("UTC").dt.tz_localize(None)
    return moments.to_numpy(dtype="datetime64[ns]").view(np.int64)


def _key_index(frame: pd.DataFrame, keys: list[str]) -> pd.Index:
    if len(keys) == 1:
        return pd.Index(frame[keys[0]].to_numpy())
    return pd.MultiIndex.from_frame(frame[keys])


def _prediction_ids(loaded: LoadedModel, keys: pd.Series) -> pd.Series:
    """``prediction_log.prediction_id`` of every key, vectorised."""
    return prediction_id(loaded.name, loaded.version, SOURCE, "") + keys.astype(str)


class _ChunkScorer:
    """Scores one chunk of entity rows, Arrow in and Arrow out.

    The model reads the chunk's Arrow columns through :class:`FastPipeline` once its
    answer on the first chunk equals the pipeline's (else a frame, as a user would call
    it); the entity keys, the event time and the own views' features pass from the
    entity table to both outputs as the Arrow columns they were read as, and the
    prediction ids are made by Arrow: turning a million string keys into Python objects
    and back cost more than the model did (``benchmarks/batch_inference.py``).
    """

    def __init__(
        self,
        settings: Settings,
        indexes: list[AsOfIndex],
        loaded: LoadedModel,
        pred_schema: pa.Schema,
        log_schema: pa.Schema,
    ) -> None:
        batch = settings.usecase.batch
        self.ts = batch.timestamp_column
        self.keys = settings.usecase.entity_keys
        self.id_column = batch.id_column
        self.indexes = indexes
        self.loaded = loaded
        self.pred_schema, self.log_schema = pred_schema, log_schema
        joined = {f for index in indexes for f in index.view.features}
        self.defaults = {k: v for k, v in settings.usecase.defaults.items() if k in joined}
        self.id_prefix = prediction_id(loaded.name, loaded.version, SOURCE, "")
        try:
            self.fast: FastPipeline | None = FastPipeline(loaded.model)
        except TypeError as exc:
            log.info("%s v%s scores through its pipeline: %s", loaded.name, loaded.version, exc)
            self.fast = None
        self._checked = self.fast is None

    def __call__(self, table: pa.Table) -> tuple[pa.Table, pa.Table, dict[str, float]]:
        t0 = time.perf_counter()
        n = table.num_rows
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
        if not self._checked:
            self._check(inputs)
        if self.fast is not None:
            score = self.fast.predict_proba_columns(inputs)[:, 1]
        else:
            score = self.loaded.model.predict_proba(_frame(inputs))[:, 1].astype(np.float64)
        t2 = time.perf_counter()
        decision = (score >= self.loaded.threshold).astype(np.int64)
        columns: dict[str, Any] = {
            EVENT_TIMESTAMP: table.column(self.ts),
            "score": score,
            "decision": decision,
            "model_name": _constant(self.loaded.name, n),
            "model_version": _constant(self.loaded.version, n),
            "prediction_id": pc.binary_join_element_wise(
                self.id_prefix, pc.cast(table.column(self.id_column), pa.string()), ""
            ),
            "source": _constant(SOURCE, n),
            "predicted_at": table.column(self.ts),
            "arm": _constant(self.loaded.alias, n),
        }
        for name in table.column_names:
            columns.setdefault(name, table.column(name))
        for name, values in joined.items():
            columns[name] = pa.array(values, from_pandas=True)
        scored = _table(columns, self.pred_schema)
        records = _table(columns, self.log_schema)
        stage = {"join": t1 - t0, "predict": t2 - t1, "positives": int(decision.sum())}
        return scored, records, stage

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
    in this chunk arrives as float; a missing value left after the defaults stays null)."""
    arrays = []
    for field in schema:
        values = columns[field.name]
        if not isinstance(values, (pa.Array, pa.ChunkedArray)):
            values = pa.array(values)
        arrays.append(pc.cast(values, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


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
