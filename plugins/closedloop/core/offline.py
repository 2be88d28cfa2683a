"""The offline store's layout: one Parquet file per table and data interval.

``<offline_dir>/<table>/<YYYY-MM-DD>.parquet`` — Feast's file offline store reads a whole
table folder as one dataset, so a partition is replaced by rewriting its single file.
Writes go to a temporary file in the same folder followed by ``os.replace``: a reader
(or a crash) never sees half a partition, and a rerun of the interval replaces its file
instead of adding rows.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def partition_path(table_dir: Path, key: str) -> Path:
    return table_dir / f"{key}.parquet"


def write_partition(df: pd.DataFrame, table_dir: Path, key: str) -> Path:
    """Atomically write (or replace) the partition ``key`` of a table."""
    table_dir.mkdir(parents=True, exist_ok=True)
    target = partition_path(table_dir, key)
    fd, tmp = tempfile.mkstemp(dir=table_dir, prefix=f".{key}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def partition_keys(table_dir: Path) -> list[str]:
    """Keys of the partitions a table has, oldest first."""
    if not table_dir.exists():
        return []
    return sorted(p.stem for p in table_dir.glob("*.parquet"))


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
