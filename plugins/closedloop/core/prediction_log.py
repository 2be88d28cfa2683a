"""The prediction log: one durable record per prediction, batch and online alike.

Embedded profile: Parquet under ``<home>/prediction_log/<use case>/source=<src>/<day>/``.
A batch run owns its day's partition file (``batch.parquet``) and replaces it on a rerun
(whole, with :meth:`PredictionLog.write_batch`, or streamed chunk by chunk with
:meth:`PredictionLog.batch_writer`);
online predictions arrive in many small flushes, each its own file named by its first
prediction id, so a flush that is retried rewrites the same file instead of adding one.

Record: prediction id, entity keys, the feature values used, model name and version, the
A/B arm, score and decision, the time and the source.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from closedloop.core.offline import PartitionWriter, partition_path, write_partition

if TYPE_CHECKING:
    from datetime import datetime
    from pathlib import Path

    import pyarrow as pa

#: Columns every record has, besides the entity keys and the feature values.
CORE_COLUMNS = [
    "prediction_id", "source", "predicted_at", "model_name", "model_version", "arm",
    "score", "decision",
]  # fmt: skip


def prediction_id(model: str, version: str, source: str, key: str) -> str:
    """Deterministic id of a batch prediction: a rerun gives every row the same id, and
    the id says what it is (model, version, source and the entity's id). Not a digest:
    hashing a million ids took longer than scoring them (``benchmarks/batch_inference``).
    """
    return f"{model}|{version}|{source}|{key}"


class PredictionLog:
    """Read and write the log under ``root`` (Parquet, partitioned by source and day)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, source: str, day: str) -> Path:
        return self.root / f"source={source}" / day

    def write_batch(self, records: pd.DataFrame, day: str) -> Path:
        """Replace the batch partition of ``day`` (idempotent for a rerun of the day)."""
        _check(records)
        return write_partition(records, self._dir("batch", day), "batch")

    def batch_partition(self, day: str) -> Path:
        """The file holding the batch records of ``day``."""
        return partition_path(self._dir("batch", day), "batch")

    def batch_writer(self, day: str, schema: pa.Schema | None = None) -> PartitionWriter:
        """Stream the batch partition of ``day`` chunk by chunk (a context manager; see
        :class:`~closedloop.core.offline.PartitionWriter`): the partition is replaced when
        the block ends normally, untouched if it fails. Each chunk is checked as
        :meth:`write_batch` checks its frame; ids are unique within a chunk, across
        chunks that follows from the unique keys they are derived from."""
        return _CheckedWriter(self._dir("batch", day), "batch", schema)

    def append_online(self, records: pd.DataFrame | pa.Table, day: str) -> Path:
        """Add a flush of online predictions (a frame or an Arrow table); the same flush
        twice is one file."""
        _check(records)
        if isinstance(records, pd.DataFrame):
            first = str(records["prediction_id"].iloc[0])
        else:
            first = str(records.column("prediction_id")[0].as_py())
        # No search for a killed writer's temporary files of this key: a flush's key is
        # its first prediction id, which no other process ever writes, and a failed
        # write removes its own. The search lists the day's folder, which gains a file
        # per flush (86,400 a day at one a second): each flush would cost more than the
        # one before.
        return write_partition(
            records, self._dir("online", day), f"online-{first}", clean_stale=False
        )

    def read(
        self, start: datetime, end: datetime, sources: tuple[str, ...] = ("batch", "online")
    ) -> pd.DataFrame:
        """Records with ``predicted_at`` in ``[start, end)``."""
        frames = []
        for source in sources:
            base = self.root / f"source={source}"
            if not base.exists():
                continue
            for day_dir in sorted(base.iterdir()):
                # a folder per day, or per interval (``YYYY-MM-DDTHH``): its day decides
                day = day_dir.name[:10]
                if not (start.strftime("%Y-%m-%d") <= day <= end.strftime("%Y-%m-%d")):
                    continue
                frames += [pd.read_parquet(p) for p in sorted(day_dir.glob("*.parquet"))]
        if not frames:
            return pd.DataFrame(columns=CORE_COLUMNS)
        log = pd.concat(frames, ignore_index=True)
        log = log[(log["predicted_at"] >= start) & (log["predicted_at"] < end)]
        return log.sort_values(["predicted_at", "prediction_id"]).reset_index(drop=True)


class _CheckedWriter(PartitionWriter):
    def write(self, chunk: pd.DataFrame | pa.Table) -> None:
        _check(chunk)
        super().write(chunk)


def _check(records: pd.DataFrame | pa.Table) -> None:
    """The core columns are there, there are records, and their ids are unique."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = records.column_names if isinstance(records, pa.Table) else list(records.columns)
    missing = [c for c in CORE_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"prediction records lack columns {missing}")
    if len(records) == 0:
        raise ValueError("no prediction records to write")
    ids = records["prediction_id"]
    if isinstance(records, pa.Table):
        duplicated = pc.count_distinct(ids, mode="all").as_py() != len(ids)
    else:
        duplicated = ids.duplicated().any()
    if duplicated:
        raise ValueError("prediction ids must be unique within a write")


def join_ground_truth(
    predictions: pd.DataFrame,
    outcomes: pd.DataFrame,
    *,
    key: str,
    label: str,
    known_at: str | None,
    as_of: datetime,
) -> pd.DataFrame:
    """Attach each prediction's true outcome where it was known by ``as_of``.

    ``outcomes`` has one row per entity (``key``) with its ``label`` and, if the use case
    has one, the time it became known. Predictions whose outcome is not known yet keep a
    null label and ``label_known = False``; nothing is dropped, nothing duplicated.
    """
    if outcomes[key].duplicated().any():
        raise ValueError(f"outcomes must have one row per {key}")
    columns = [key, label] + ([known_at] if known_at else [])
    truth = outcomes[columns].rename(
        columns={label: "label", **({known_at: "label_known_at"} if known_at else {})}
    )
    joined = predictions.merge(truth, on=key, how="left", validate="many_to_one")
    known = joined["label"].notna()
    if known_at:
        known &= joined["label_known_at"] < as_of
    joined["label_known"] = known
    joined.loc[~known, "label"] = pd.NA
    return joined
