"""The aggregation engine's state, and its snapshots on disk.

Per entity: the keys in the order they first appeared (arrays are indexed by that
number), the partial aggregates per time bucket, running sums per window, the distinct
(entity, value) pairs counted per window, and the events whose label is not known yet.
A snapshot is a folder named in ``state.json``: bucket parts never change once their
interval is over, so they live in *segment* files (one per interval, uncompressed Arrow
IPC) that the next snapshot hard-links instead of writing again, and a loaded part is
read (memory-mapped) only when the engine needs it; the rest is written per snapshot.
A snapshot's load and save follow the interval, not the windows (docs/scaling.md).

One module of this size: the state's structures and their files change together
(:data:`STATE_FORMAT`).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

if TYPE_CHECKING:
    from pathlib import Path

KNOWN = "__known"  # when a label became known, nanoseconds since the epoch (UTC)
POSITIVE = "__positive"
#: state snapshots kept per use case (older ones are removed): a rerun of one of the
#: latest intervals needs its predecessor's; an older one rebuilds from the event table
KEEP_SNAPSHOTS = 7
#: the layout of a saved state; a snapshot of another layout is rebuilt, not read
STATE_FORMAT = 2
#: pending-label chunks kept apart before they are merged into one
MAX_CHUNKS = 32
#: segment files a snapshot links before its parts are rewritten into one
MAX_SEGMENTS = 64
#: bits of a distinct pair id that hold the value's number (the entity's is above them)
VALUE_BITS = 32
_PER_UNIT = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}

Stats = dict[str, np.ndarray]


class StateFormatError(ValueError):
    """A saved state of another layout than :data:`STATE_FORMAT`."""


# -- the state -----------------------------------------------------------------------------


class Part:
    """One bucket's partial aggregates: ``codes`` (entity numbers, sorted, unique) and
    each statistic per code (``n``, ``c__col``, ``s__col``, ``mn__col``, ``mx__col``;
    ``ln``, ``lp`` for labels; none for the pair ids of a distinct count).

    ``origin`` is the saved segment the part was read from or written to: a later
    snapshot links that file instead of writing the part again. A loaded part is read
    from its segment when first used: an interval reads only the buckets leaving a
    window. It reads the file mapped when it was loaded (``source``), not ``origin``: a
    save moves ``origin`` to the new snapshot's link of the same file."""

    __slots__ = ("_codes", "_source", "_stats", "origin")

    def __init__(
        self,
        codes: np.ndarray | None,
        stats: Stats | None,
        origin: Path | None = None,
        source: tuple[_Segments, Path, str, int] | None = None,
    ) -> None:
        self._codes, self._stats, self.origin, self._source = codes, stats, origin, source

    @property
    def codes(self) -> np.ndarray:
        if self._codes is None:
            self._read()
        return self._codes  # type: ignore[return-value]

    @property
    def stats(self) -> Stats:
        if self._stats is None:
            self._read()
        return self._stats  # type: ignore[return-value]

    def _read(self) -> None:
        if self._source is None:
            raise RuntimeError("a bucket part without values or a segment to read them from")
        segments, mapped, store, bucket = self._source
        self._codes, self._stats = segments.part(mapped, store, bucket)


class _Segments:
    """The segment files of one loaded snapshot: mapped when the snapshot is loaded (so
    a snapshot removed meanwhile stays readable), each parsed when a part of it is
    first needed."""

    def __init__(self) -> None:
        self.mapped: dict[Path, pa.MemoryMappedFile] = {}
        self.read: dict[Path, dict[tuple[str, int], tuple[np.ndarray, Stats]]] = {}

    def open(self, path: Path) -> None:
        self.mapped[path] = pa.memory_map(str(path))

    def part(self, path: Path, store: str, bucket: int) -> tuple[np.ndarray, Stats]:
        if path not in self.read:
            self.read[path] = _read_segment(self.mapped[path])
        return self.read[path][store, bucket]

    def __deepcopy__(self, memo: dict[int, Any]) -> _Segments:
        # the mapped files are read-only: a copy shares them and what was parsed
        return self


@dataclass
class Side:
    """The partial aggregates of one kind of fact of one entity (its events by their
    time, or its labels by when they became known): per bucket (start, in ns) for as
    long as the longest finite window needs them, the additive statistics summed per
    finite window (ns), and every statistic over all time."""

    buckets: dict[int, Part] = field(default_factory=dict)
    windows: dict[int, Stats] = field(default_factory=dict)
    totals: Stats = field(default_factory=dict)


@dataclass
class Distinct:
    """The distinct values of one column per entity. A pair id is the entity's number
    shifted above the value's number; per bucket the sorted ids seen in it, per finite
    window the sorted ids with how many of the window's buckets hold them, and the ids
    seen over all time."""

    values: pd.Index | None = None
    buckets: dict[int, Part] = field(default_factory=dict)
    windows: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    #: distinct values per entity number, per window (None: all time); derived from the
    #: ids when first needed, then kept up to date (not saved)
    sizes: dict[int | None, np.ndarray] = field(default_factory=dict, repr=False)
    total: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))


@dataclass
class EntityState:
    """One entity's partial aggregates; arrays are indexed by the position of the key
    in ``keys`` (keys are added in the order they first appear)."""

    keys: pd.Index | None = None
    events: Side = field(default_factory=Side)
    labels: Side = field(default_factory=Side)
    distinct: dict[str, Distinct] = field(default_factory=dict)

    def encode(self, values: pd.Series) -> np.ndarray:
        """The numbers of ``values`` (no nulls), numbering the new ones."""
        self.keys, codes = numbered(self.keys, values)
        return codes

    def size(self) -> int:
        """Rows of partial aggregates held (bucket parts, window sums, pair ids)."""
        n = len(self.keys) if self.keys is not None else 0
        total = n
        for side in (self.events, self.labels):
            total += sum(len(p.codes) for p in side.buckets.values())
            total += n * len(side.windows)
        for d in self.distinct.values():
            total += sum(len(p.codes) for p in d.buckets.values()) + len(d.total)
            total += sum(len(ids) for ids, _ in d.windows.values())
        return total


@dataclass
class AggregationState:
    """Everything the next interval needs; ``as_of`` is the end of the last interval."""

    as_of: datetime | None = None
    entities: dict[str, EntityState] = field(default_factory=dict)
    #: events whose label is not known at ``as_of``, in chunks sorted by ``__known``
    chunks: list[pd.DataFrame] = field(default_factory=list)

    @property
    def pending(self) -> pd.DataFrame | None:
        """The events whose label is not known at ``as_of``, by when it will be."""
        if not self.chunks:
            return None
        frame = (
            pd.concat(self.chunks, ignore_index=True) if len(self.chunks) > 1 else self.chunks[0]
        )
        return frame.sort_values(KNOWN, kind="stable", ignore_index=True)

    def size(self) -> int:
        """Rows held: partial aggregates of every entity and the pending labels."""
        return sum(map(len, self.chunks)) + sum(e.size() for e in self.entities.values())

    # -- persistence -----------------------------------------------------------------
    def stores(self) -> dict[str, tuple[dict[str, str], dict[int, Part]]]:
        """Every bucket store of the state: its name, what it is, and its parts."""
        out = {}
        for entity, st in self.entities.items():
            for kind in ("events", "labels"):
                role = {"entity": entity, "kind": kind}
                out[f"{entity}.{kind}"] = (role, getattr(st, kind).buckets)
            for column, d in st.distinct.items():
                role = {"entity": entity, "kind": "distinct", "column": column}
                out[f"{entity}.distinct.{column}"] = (role, d.buckets)
        return out

    def save(self, folder: Path) -> None:
        """Write the state to ``folder`` (replaced whole, through a temporary folder).

        Bucket parts do not change once their interval is over: a snapshot hard-links
        the segment files its parts were read from and writes the interval's new parts
        as one more segment (all of them in one once there are more than
        :data:`MAX_SEGMENTS`), beside the window sums and the pending labels."""
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        files: list[dict[str, Any]] = []

        def put(columns: dict[str, Any], **role: Any) -> None:
            name = f"{len(files):04d}.arrow"
            _write(tmp / name, columns)
            files.append({"file": name, **role})

        stores = self.stores()
        held: dict[Path, dict[str, list[int]]] = {}
        fresh: dict[str, dict[int, Part]] = {}
        for store, (_, parts) in stores.items():
            for bucket, part in parts.items():
                if part.origin is None:
                    fresh.setdefault(store, {})[bucket] = part
                else:
                    held.setdefault(part.origin, {}).setdefault(store, []).append(bucket)
        if len(held) >= MAX_SEGMENTS:  # compacted into one
            for origin in held.values():
                for store, buckets in origin.items():
                    fresh.setdefault(store, {}).update({b: stores[store][1][b] for b in buckets})
            held = {}
        segments, placed = [], []
        for origin, contents in sorted(held.items()):
            try:
                os.link(origin, tmp / origin.name)
            except OSError:  # gone, or on another file system: written again
                for store, buckets in contents.items():
                    fresh.setdefault(store, {}).update({b: stores[store][1][b] for b in buckets})
                continue
            segments.append({"file": origin.name, "held": _sorted(contents)})
            placed += [(origin.name, stores[st][1][b]) for st, bs in contents.items() for b in bs]
        if fresh:
            stamp = to_ns(pd.Timestamp(self.as_of)) if self.as_of else 0
            name = f"segment.{stamp}.arrow"
            while (tmp / name).exists():
                name = f"{name.removesuffix('.arrow')}+.arrow"
            _write_segment(tmp / name, fresh)
            contents = {store: sorted(parts) for store, parts in fresh.items()}
            segments.append({"file": name, "held": _sorted(contents)})
            placed += [(name, part) for parts in fresh.values() for part in parts.values()]

        for chunk in self.chunks:
            put({name: chunk[name].to_numpy() for name in chunk.columns}, part="pending")
        for entity, st in self.entities.items():
            keys = st.keys if st.keys is not None else pd.Index([])
            put({"key": pa.Array.from_pandas(keys)}, entity=entity, part="keys")
            for kind in ("events", "labels"):
                put(_sums_columns(getattr(st, kind)), entity=entity, part=f"{kind}.sums")
            for column, d in st.distinct.items():
                role = {"entity": entity, "column": column}
                values = d.values if d.values is not None else pd.Index([])
                put({"v": pa.Array.from_pandas(values)}, part="distinct.values", **role)
                put(_ids_columns(d.windows, "window"), part="distinct.windows", **role)
                put({"id": d.total}, part="distinct.total", **role)
        meta = {
            "format": STATE_FORMAT,
            "as_of": self.as_of.isoformat() if self.as_of else None,
            "stores": {store: role for store, (role, _) in stores.items()},
            "segments": segments,
            "frames": files,
        }
        (tmp / "state.json").write_text(json.dumps(meta, sort_keys=True))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        for name, part in placed:
            part.origin = folder / name

    @classmethod
    def load(cls, folder: Path) -> AggregationState:
        """The state saved in ``folder``; :class:`StateFormatError` for another layout."""
        meta = json.loads((folder / "state.json").read_text())
        if meta.get("format") != STATE_FORMAT:
            raise StateFormatError(
                f"{folder}: aggregation state of format {meta.get('format', 1)}, "
                f"this closedloop reads format {STATE_FORMAT}"
            )
        state = cls(as_of=datetime.fromisoformat(meta["as_of"]) if meta["as_of"] else None)
        for role in meta["stores"].values():
            st = state.entities.setdefault(role["entity"], EntityState())
            if role["kind"] == "distinct":
                st.distinct.setdefault(role["column"], Distinct())
        stores, segments = state.stores(), _Segments()
        for segment in meta["segments"]:
            path = folder / segment["file"]
            segments.open(path)
            for store, buckets in segment["held"].items():
                held = stores[store][1]
                for bucket in buckets:
                    held[bucket] = Part(None, None, path, (segments, path, store, bucket))
        for entry in meta["frames"]:
            table, _ = _read(folder / entry["file"])
            columns = {name: _numpy(table.column(name)) for name in table.column_names}
            role = entry["part"]
            if role == "pending":
                state.chunks.append(pd.DataFrame(columns, copy=False))
                continue
            st = state.entities.setdefault(entry["entity"], EntityState())
            d = st.distinct.setdefault(entry["column"], Distinct()) if "column" in entry else None
            if role == "keys":
                st.keys = pd.Index(table.column("key").to_pandas()) if table.num_rows else None
            elif role.endswith(".sums"):
                side = getattr(st, role.split(".")[0])
                side.windows, side.totals = _sums_from(columns)
            elif d is not None and role == "distinct.values":
                d.values = pd.Index(table.column("v").to_pandas()) if table.num_rows else None
            elif d is not None and role == "distinct.windows":
                d.windows = _ids_from(columns, "window")
            elif d is not None:
                d.total = columns["id"].astype(np.int64, copy=False)
        return state


def to_ns(value: Any) -> Any:
    """Nanoseconds since the epoch (UTC) of times, or in a duration."""
    if isinstance(value, timedelta):
        return int(pd.Timedelta(value).value)
    if isinstance(value, pd.Timestamp):
        return int(value.as_unit("ns").value)
    times = pd.DatetimeIndex(value)
    ns = times.asi8 * _PER_UNIT[times.unit]
    return np.where(times.isna(), np.iinfo(np.int64).min, ns)  # NaT: below every time


# -- saved frames ------------------------------------------------------------------------


def _write(path: Path, columns: dict[str, Any], meta: Any = None) -> None:
    """Columns as one record batch of an Arrow IPC file (uncompressed: read back
    memory-mapped, without a copy); ``meta`` in the schema's metadata as JSON."""
    arrays = {c: v if isinstance(v, pa.Array) else pa.array(v) for c, v in columns.items()}
    metadata = None if meta is None else {"closedloop": json.dumps(meta)}
    batch = pa.RecordBatch.from_pydict(arrays, metadata=metadata)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)


def _read(source: Path | pa.MemoryMappedFile) -> tuple[pa.Table, Any]:
    """The table of a file written by :func:`_write`, memory-mapped, and its ``meta``."""
    mapped = source if isinstance(source, pa.MemoryMappedFile) else pa.memory_map(str(source))
    table = pa.ipc.open_file(mapped).read_all()
    meta = (table.schema.metadata or {}).get(b"closedloop")
    return table, None if meta is None else json.loads(meta)


def _numpy(column: pa.ChunkedArray) -> np.ndarray:
    """A column's values, without a copy when it is one chunk of fixed-width values."""
    if column.num_chunks == 1:
        return column.chunk(0).to_numpy(zero_copy_only=False)
    return column.to_numpy()


def numbered(index: pd.Index | None, values: pd.Series) -> tuple[pd.Index, np.ndarray]:
    """``index`` with the new ones of ``values`` (no nulls) appended in the order they
    first appear, and the position of every value in it."""
    if index is None or not len(index):
        index = pd.Index(pd.unique(values))
        return index, np.asarray(index.get_indexer(values), dtype=np.int64)
    codes = np.asarray(index.get_indexer(values), dtype=np.int64)
    new = codes < 0
    if new.any():
        index = index.append(pd.Index(pd.unique(values[new])))
        codes[new] = index.get_indexer(values[new])
    return index, codes


def runs(by: np.ndarray) -> list[tuple[int, int]]:
    """The runs of equal values of a sorted ``by``, as (first, past-the-end) pairs."""
    if not len(by):
        return []
    return list(itertools.pairwise([*np.flatnonzero(np.r_[True, by[1:] != by[:-1]]), len(by)]))


def _sorted(contents: dict[str, list[int]]) -> dict[str, list[int]]:
    return {store: sorted(buckets) for store, buckets in sorted(contents.items())}


def _write_segment(path: Path, stores: dict[str, dict[int, Part]]) -> None:
    """Parts of several stores in one file: a row per (store, bucket, code), a column
    per statistic of any of them (NaN where a store has no such statistic); the store
    names and the statistics of each are in the schema's metadata."""
    names = sorted(stores)
    rows = [(i, b, stores[name][b]) for i, name in enumerate(names) for b in sorted(stores[name])]
    sizes = [len(part.codes) for _, _, part in rows]
    stats = {name: sorted(next(iter(stores[name].values())).stats) for name in names}
    columns: dict[str, np.ndarray] = {
        "store": np.repeat(np.array([i for i, _, _ in rows], np.int64), sizes),
        "bucket": np.repeat(np.array([b for _, b, _ in rows], np.int64), sizes),
        "code": np.concatenate([part.codes for _, _, part in rows]),
    }
    for stat in sorted({stat for listed in stats.values() for stat in listed}):
        columns[stat] = np.concatenate(
            [part.stats.get(stat, np.full(len(part.codes), np.nan)) for _, _, part in rows]
        )
    _write(path, columns, {"stores": names, "stats": stats})


def _read_segment(mapped: pa.MemoryMappedFile) -> dict[tuple[str, int], tuple[np.ndarray, Stats]]:
    table, meta = _read(mapped)
    columns = {name: _numpy(table.column(name)) for name in table.column_names}
    store, bucket, codes = columns["store"], columns["bucket"], columns["code"]
    if not len(store):
        return {}
    edges = np.r_[True, (store[1:] != store[:-1]) | (bucket[1:] != bucket[:-1])]
    out = {}
    for lo, hi in itertools.pairwise([*np.flatnonzero(edges), len(store)]):
        name = meta["stores"][int(store[lo])]
        stats = {s: columns[s][lo:hi] for s in meta["stats"][name]}
        out[name, int(bucket[lo])] = (codes[lo:hi], stats)
    return out


def _sums_columns(side: Side) -> dict[str, np.ndarray]:
    columns = {f"all|{s}": v for s, v in side.totals.items()}
    for window, sums in side.windows.items():
        columns.update({f"{window}|{s}": v for s, v in sums.items()})
    return columns


def _sums_from(columns: dict[str, np.ndarray]) -> tuple[dict[int, Stats], Stats]:
    windows: dict[int, Stats] = {}
    totals: Stats = {}
    for name, values in columns.items():
        window, stat = name.split("|", 1)
        values = values.astype(np.float64)  # a copy: the sums are updated in place
        if window == "all":
            totals[stat] = values
        else:
            windows.setdefault(int(window), {})[stat] = values
    return windows, totals


def _ids_columns(
    groups: dict[int, tuple[np.ndarray, np.ndarray | None]], by: str
) -> dict[str, np.ndarray]:
    order = sorted(groups)
    ids = [groups[g][0] for g in order]
    columns = {
        by: np.repeat(np.array(order, np.int64), [len(i) for i in ids]),
        "id": np.concatenate(ids) if ids else np.empty(0, np.int64),
    }
    if by == "window":
        counts = [groups[g][1] for g in order]
        columns["count"] = np.concatenate(counts) if counts else np.empty(0, np.int64)
    return columns


def _ids_from(columns: dict[str, np.ndarray], by: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    group, ids = columns[by], columns["id"]
    counts = columns.get("count", np.zeros(len(ids), np.int64))
    return {int(group[lo]): (ids[lo:hi], counts[lo:hi]) for lo, hi in runs(group)}
