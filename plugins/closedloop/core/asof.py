"""The point-in-time join of feature views onto entity rows, without Feast's retrieval:
Feast's rule (the newest row of the key stamped at or before the entity's time, and no
older than the view's TTL) over the rows the entity rows of ``[start, end)`` can match.

:func:`feature_views` reads from Feast's registry what the join needs of each view of
a service (keys, timestamp, TTL, folder; *own* when the view's source is the entity
table itself); :class:`AsOfIndex` holds one view's candidate rows, sorted by key and
time, and answers a chunk of entity rows by binary search (string keys hashed straight
from Arrow buffers by :class:`StringKeys`); :func:`join_features` joins a frame and fills
the declared defaults, as :func:`features_for` does through Feast. Tests:
``tests/unit/test_asof.py`` (the rule's edges against a brute force) and
``tests/integration/test_batch_join.py`` (against Feast). Why not Feast's retrieval:
docs/design.md (``closedloop.core.batch_inference``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from closedloop.core.training_pipeline import EVENT_TIMESTAMP

if TYPE_CHECKING:
    from datetime import datetime, timedelta

    from feast import FeatureStore

    from closedloop.core.settings import Settings


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
        if not _parquet_folder(source) or source.field_mapping or source.created_timestamp_column:
            raise ValueError(
                f"feature view {name!r}: the batch join reads plain Parquet file sources "
                "(no field mapping, no created timestamp)"
            )
        keys = [fv.projection.join_key_map.get(c.name, c.name) for c in fv.entity_columns]
        missing = [k for k in keys if k not in usecase.entity_keys]
        if missing:
            raise ValueError(f"feature view {name!r} joins on {missing}, not entity columns")
        folder = Path(_parquet_folder(source))
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


def _parquet_folder(source: Any) -> str | None:
    """The Parquet folder a view's source reads: a file source's, or a Spark source's of
    Parquet files (``compute: spark`` declares the same folders to Spark)."""
    from feast import FileSource

    if isinstance(source, FileSource):
        return source.path
    if type(source).__name__ == "SparkSource" and source.file_format == "parquet":
        return source.path or None
    return None


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
        self._strings = StringKeys.of(self._dictionary) if is_text else None

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


class StringKeys:
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
    def of(cls, array: pa.Array) -> StringKeys | None:
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
