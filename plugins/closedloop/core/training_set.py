"""A training-set snapshot read for training and the gate, without holding all of it.

With sample caps (``model.training.search_rows`` / ``refit_rows``) the training task
reads the snapshot's known-at and label columns whole, then only the rows the search and
the refit sampled, and the holdout one chunk at a time: its memory follows the caps and
the chunk size, not the snapshot's rows. The rows are the ones
:func:`closedloop.core.modeling.sampled_parts` takes from the whole frame, in the same
order (``tests/unit/test_training_set.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from closedloop.core.modeling import (
    Parts,
    check_classes,
    check_search_sample,
    sample_plan,
    time_bounds,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    import pyarrow as pa

    from closedloop.core.modeling import TrainingConfig

#: rows per chunk read from the snapshot
CHUNK_ROWS = 65_536
TRAIN, VALIDATION, HOLDOUT = 0, 1, 2


def streamed_parts(
    path: str,
    config: TrainingConfig,
    *,
    known_at: str,
    label: str,
    order_by: Sequence[str],
    chunk_rows: int = CHUNK_ROWS,
    samples: bool = True,
) -> Parts:
    """:class:`Parts` of the snapshot at ``path`` (one Parquet file, in ``order_by``
    order, as ``build_training_set`` writes it); ``samples=False`` reads the holdout
    only (the other frames are empty)."""
    import pyarrow.parquet as pq

    head = pq.read_table(path, columns=[known_at, label])
    when = _instants(head.column(known_at))
    labels = head.column(label).to_numpy(zero_copy_only=False)
    if len(when) == 0:
        raise ValueError("no rows to split")
    latest = pd.Timestamp(int(when.max()), unit="ns", tz="UTC")
    if head.schema.field(known_at).type.tz is None:  # as the whole frame's max would be
        latest = latest.tz_localize(None)
    bounds = time_bounds(latest, config.validation_days, config.holdout_days)
    cutoffs = {k: v.isoformat() for k, v in bounds.items()}
    part = np.full(len(when), TRAIN, dtype=np.int8)
    part[when >= bounds["validation_start"].value] = VALIDATION
    part[when >= bounds["holdout_start"].value] = HOLDOUT
    del when, head
    positions = [np.flatnonzero(part == p) for p in (TRAIN, VALIDATION, HOLDOUT)]
    for name, rows in zip(("train", "validation", "holdout"), positions, strict=True):
        check_classes(name, len(np.unique(labels[rows])), len(rows), known_at, cutoffs)
    train_rows, validation_rows, holdout_rows = positions
    refit, search, counts = sample_plan(len(train_rows), len(validation_rows), config)
    both = np.concatenate([train_rows, validation_rows])  # the split's order: train first
    search_train = both[search[search < len(train_rows)]]
    search_validation = both[search[search >= len(train_rows)]]
    if len(search) < len(both):
        for name, rows in (("train", search_train), ("validation", search_validation)):
            check_search_sample(name, len(np.unique(labels[rows])), len(rows), config)
    wanted = {
        "search_train": search_train,
        "search_validation": search_validation,
        "refit": both[refit],
    }
    if not samples:
        wanted = {name: rows[:0] for name, rows in wanted.items()}
    frames = _take(path, wanted, order_by, chunk_rows)

    def holdout() -> Iterator[pd.DataFrame]:
        for batch, offset in _batches(path, chunk_rows):
            rows = _within(holdout_rows, offset, batch.num_rows)
            if len(rows):
                yield batch.take(rows).to_pandas()

    return Parts(
        search_train=frames["search_train"],
        search_validation=frames["search_validation"],
        refit=frames["refit"],
        holdout=holdout,
        holdout_rows=len(holdout_rows),
        cutoffs=cutoffs,
        sampling=counts,
    )


def _instants(column: pa.ChunkedArray) -> np.ndarray:
    """A timestamp column as int64 nanoseconds since the epoch (UTC)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pa.types.is_timestamp(column.type):
        raise TypeError(f"the known-at column is {column.type}, not a timestamp")
    return pc.cast(column, pa.timestamp("ns", tz="UTC")).to_numpy().astype("int64")


def _batches(path: str, chunk_rows: int) -> Iterator[tuple[pa.RecordBatch, int]]:
    import pyarrow.parquet as pq

    offset = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
        yield batch, offset
        offset += batch.num_rows


def _within(rows: np.ndarray, offset: int, length: int) -> np.ndarray:
    """The positions in a batch of the sorted file ``rows`` that fall in it."""
    lo, hi = np.searchsorted(rows, [offset, offset + length])
    return rows[lo:hi] - offset


def _take(
    path: str, wanted: dict[str, np.ndarray], order_by: Sequence[str], chunk_rows: int
) -> dict[str, pd.DataFrame]:
    """Each ``wanted`` set of file rows as a frame, in the set's order, in one pass;
    checks on the way that the file is in ``order_by`` order (the split's)."""
    import pyarrow as pa

    if not any(len(rows) for rows in wanted.values()):
        return {name: pd.DataFrame() for name in wanted}
    orders = {name: np.argsort(rows, kind="stable") for name, rows in wanted.items()}
    ordered = {name: rows[orders[name]] for name, rows in wanted.items()}
    pieces: dict[str, list[pa.RecordBatch]] = {name: [] for name in wanted}
    last: tuple | None = None
    schema = None
    for batch, offset in _batches(path, chunk_rows):
        schema = batch.schema
        last = _check_order(batch, order_by, last, offset)
        for name, rows in ordered.items():
            within = _within(rows, offset, batch.num_rows)
            if len(within):
                pieces[name].append(batch.take(within))
    out = {}
    for name in wanted:
        table = pa.Table.from_batches(pieces[name], schema=schema)
        # back from file order to the set's (train rows first, then validation)
        table = table.take(np.argsort(orders[name], kind="stable"))
        out[name] = table.to_pandas()
    return out


def _check_order(
    batch: pa.RecordBatch, order_by: Sequence[str], last: tuple | None, offset: int
) -> tuple | None:
    """Raise unless the batch continues the file's ``order_by`` order; its last key."""
    columns = [c for c in order_by if c in batch.schema.names]
    if not columns or batch.num_rows == 0:
        return last
    frame = batch.select(columns).to_pandas()
    keys = [
        frame[c].astype("int64").to_numpy()
        if pd.api.types.is_datetime64_any_dtype(frame[c])
        else frame[c].to_numpy()
        for c in columns
    ]
    ahead = np.zeros(batch.num_rows - 1, dtype=bool)  # row i+1 already after row i
    for key in keys:
        earlier, later = key[:-1], key[1:]
        if (~ahead & (later < earlier)).any():
            raise ValueError(f"the training set is not in {list(columns)} order near row {offset}")
        ahead |= later > earlier
    first = tuple(k[0] for k in keys)
    if last is not None and first < last:
        raise ValueError(f"the training set is not in {list(columns)} order at row {offset}")
    return tuple(k[-1] for k in keys)
