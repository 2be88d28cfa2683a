"""The offline store's layout: one Parquet file per table and data interval.

``<offline_dir>/<table>/<YYYY-MM-DD>.parquet`` — Feast's file offline store reads a whole
table folder as one dataset, so a partition is replaced by rewriting its single file.
Writes go to a temporary file in the same folder followed by ``os.replace``: a reader
(or a crash) never sees half a partition, and a rerun of the interval replaces its file
instead of adding rows. A writer killed before it could replace or delete its temporary
file leaves it behind (hidden: readers skip dot-files); the next write of the same
partition deletes it (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from closedloop.core.files import replacing

if TYPE_CHECKING:
    from collections.abc import Iterable
    from contextlib import AbstractContextManager
    from datetime import datetime
    from pathlib import Path
    from types import TracebackType


def partition_path(table_dir: Path, key: str) -> Path:
    return table_dir / f"{key}.parquet"


def remove_stale_temporaries(table_dir: Path, key: str) -> list[Path]:
    """Delete the temporary files of partition ``key`` that earlier writers left behind
    (killed between creating one and replacing the partition with it); returns them.

    A partition has one writer at a time — the task of its interval — so such a file is
    abandoned. Were its writer still running (a task process that outlived its worker),
    its ``os.replace`` now fails, and nothing half-written is ever published.
    """
    pattern = re.compile(rf"\.{re.escape(key)}\.[A-Za-z0-9_]+\.tmp")
    if not table_dir.is_dir():
        return []
    stale = [p for p in table_dir.iterdir() if pattern.fullmatch(p.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def write_partition(
    df: pd.DataFrame | pa.Table, table_dir: Path, key: str, *, clean_stale: bool = True
) -> Path:
    """Atomically write (or replace) the partition ``key`` of a table (a frame or an
    Arrow table). ``clean_stale=False`` skips :func:`remove_stale_temporaries`, which
    lists the whole folder: for a caller whose keys are never written twice by a killed
    writer's successor (see :meth:`PredictionLog.append_online`)."""
    table_dir.mkdir(parents=True, exist_ok=True)
    if clean_stale:
        remove_stale_temporaries(table_dir, key)
    target = partition_path(table_dir, key)
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    with replacing(target, prefix=f".{key}.") as tmp:
        pq.write_table(table, tmp)
    return target


def writable_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with a column of nulls only (a chunk's text column without a value)
    typed as text, so that later chunks with values can be written beside it."""
    fields = [f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in schema]
    return pa.schema(fields, metadata=schema.metadata)


def release_arrow_memory() -> None:
    """Hand Arrow's freed memory back after a chunk: its default allocator (mimalloc)
    otherwise keeps what a chunk freed, and a loop over chunks grows with the rows
    (docs/scaling.md)."""
    pa.default_memory_pool().release_unused()


def write_chunks(chunks: Iterable[pd.DataFrame | pa.Table], target: Path) -> int:
    """Write ``chunks`` to the Parquet file ``target`` (replaced atomically), a row
    group each, handing Arrow's memory back after each: the first chunk with rows fixes
    the schema (its pandas metadata kept; a column of nulls only typed as text), chunks
    without rows are skipped. Returns the rows written; with none, ``target`` is left as
    it was."""
    tables = (t for t in map(_arrow, chunks) if t.num_rows)
    table = next(tables, None)
    if table is None:
        return 0
    rows = 0
    with replacing(target) as tmp, pq.ParquetWriter(tmp, writable_schema(table.schema)) as writer:
        while table is not None:
            writer.write_table(table.cast(writer.schema))
            rows += table.num_rows
            table = None
            release_arrow_memory()
            table = next(tables, None)
    return rows


def _arrow(chunk: pd.DataFrame | pa.Table) -> pa.Table:
    if isinstance(chunk, pa.Table):
        return chunk
    return pa.Table.from_pandas(chunk, preserve_index=False)


def copy_partition(source: Path, table_dir: Path, key: str) -> Path:
    """Atomically replace the partition ``key`` of a table with a copy of the Parquet
    file ``source`` (staged whole: its rows are not read)."""
    import shutil

    table_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(table_dir, key)
    target = partition_path(table_dir, key)
    with replacing(target, prefix=f".{key}.") as tmp:
        shutil.copyfile(source, tmp)
    return target


def dictionary_columns(table: pa.Table, min_rows: int = 1000) -> list[str] | bool:
    """The columns worth Parquet's dictionary encoding, judged on ``table`` (a file's
    first chunk): all but those whose values are mostly distinct (ids, timestamps,
    scores). Parquet would try a dictionary for each and give up on those only after
    hashing every value: at 1M prediction-log rows that was a third of the write."""
    if table.num_rows < min_rows:
        return True
    return [
        name
        for name, column in zip(table.column_names, table.columns, strict=True)
        if not _countable(column.type) or pc.count_distinct(column).as_py() <= table.num_rows // 2
    ]


def _countable(kind: pa.DataType) -> bool:
    return pa.types.is_primitive(kind) or pa.types.is_string(kind) or pa.types.is_binary(kind)


class PartitionWriter:
    """Stream row groups into the partition ``key`` of a table, atomically.

    ``with PartitionWriter(dir, key, schema) as w: w.write(chunk)`` writes each chunk as
    a row group of a temporary file in the table's folder; leaving the block normally
    replaces the partition with it (``os.replace``), leaving it by an exception deletes
    the temporary file and keeps the old partition. Memory holds one chunk at a time.

    ``schema`` (recommended) fixes the file's columns and types, so chunks whose pandas
    dtypes differ (an int column that needed a float default in one chunk only) still
    write one consistent file; without it the first chunk's schema is used. No pandas
    metadata is stored: a reader gets the same frame however the rows were chunked.
    When nothing was written, no file is created and an existing partition is left as
    it is (``path`` stays ``None``). Entering the block deletes the temporary files an
    earlier, killed writer of the partition left (:func:`remove_stale_temporaries`).
    """

    def __init__(self, table_dir: Path, key: str, schema: pa.Schema | None = None) -> None:
        self.table_dir = table_dir
        self.key = key
        self.schema = schema.remove_metadata() if schema is not None else None
        self.rows = 0
        self.path: Path | None = None
        self._replacing: AbstractContextManager[Path] | None = None
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> PartitionWriter:
        self.table_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.table_dir, self.key)
        return self

    def write(self, chunk: pd.DataFrame | pa.Table) -> None:
        """Append ``chunk`` (a frame, or an Arrow table) as one row group."""
        if isinstance(chunk, pd.DataFrame):
            table = pa.Table.from_pandas(chunk, schema=self.schema, preserve_index=False)
        else:
            table = chunk.select(self.schema.names).cast(self.schema) if self.schema else chunk
        table = table.replace_schema_metadata(None)
        if self._writer is None:
            target = partition_path(self.table_dir, self.key)
            self._replacing = replacing(target, prefix=f".{self.key}.")
            tmp = self._replacing.__enter__()
            self.schema = table.schema
            # A dictionary column is stored as its values' type, so a reader gets
            # strings, not categoricals: the Arrow schema, which would say otherwise
            # and which only such a column needs, is then not stored.
            coded = any(pa.types.is_dictionary(f.type) for f in self.schema)
            self._writer = pq.ParquetWriter(
                tmp,
                self.schema,
                use_dictionary=dictionary_columns(table),
                store_schema=not coded,
            )
        self._writer.write_table(table)
        self.rows += table.num_rows

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._replacing is None:
            return
        try:
            if self._writer is not None:
                self._writer.close()
        except BaseException as error:
            self._replacing.__exit__(type(error), error, error.__traceback__)
            raise
        self._replacing.__exit__(exc_type, exc, tb)  # replaces the partition, or removes
        if exc_type is None:
            self.path = partition_path(self.table_dir, self.key)


def partition_keys(table_dir: Path) -> list[str]:
    """Keys of the partitions a table has, oldest first."""
    if not table_dir.exists():
        return []
    return sorted(p.stem for p in table_dir.glob("*.parquet"))


def keys_around(table_dir: Path, start: datetime, end: datetime) -> list[str]:
    """The keys of the partitions that may hold rows stamped in ``[start, end)``: those
    of the days from the day before ``start`` to the day after ``end`` (a key is a date,
    or an hour, in the use case's timezone or UTC; callers filter the rows by time)."""
    low = (start - timedelta(days=1)).strftime("%Y-%m-%d")
    high = (end + timedelta(days=1)).strftime("%Y-%m-%d")
    return [k for k in partition_keys(table_dir) if low <= k[:10] <= high]


def read_partitions(
    table_dir: Path, *, before: str | None = None, keys: list[str] | None = None
) -> pd.DataFrame | None:
    """Concatenate a table's partitions (optionally only those with key < ``before``).

    Returns ``None`` when no partition matches, so callers cannot mistake "no history"
    for an empty frame with a different schema.
    """
    chosen = keys if keys is not None else partition_keys(table_dir)
    if before is not None:
        chosen = [k for k in chosen if k < before]
    if not chosen:
        return None
    frames = [pd.read_parquet(partition_path(table_dir, k)) for k in chosen]
    return pd.concat(frames, ignore_index=True)


def row_counts(table_dir: Path) -> dict[str, int]:
    """Rows per partition, read from Parquet footers (no data is loaded)."""
    return {
        k: pq.ParquetFile(partition_path(table_dir, k)).metadata.num_rows
        for k in partition_keys(table_dir)
    }
