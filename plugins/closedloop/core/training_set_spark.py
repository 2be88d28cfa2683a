"""The training set on Spark (``compute: spark``): what
:func:`~closedloop.core.training_pipeline.build_training_set` runs instead of reading the
events, joining the features and writing the set in the task's process, which then holds
one batch of rows instead of the whole set.

:func:`write_training_set` makes the local path's frame, row for row and dtype for dtype:

* Spark reads the window's labelled events from the event table's partitions (the
  local path's filter, columns and order: by event time and id, ties in the order the
  partitions are read);
* each feature view is joined as :func:`~closedloop.core.feature_store.historical_features`
  joins it: Feast's Spark offline store answers for the distinct (join keys, timestamp)
  pairs of the events, tagged, kept in Spark as a temporary view, and every event takes
  its pair's features (a pair Feast returned nothing for gets nulls for that view only);
* the declared defaults are filled and Spark writes the ordered rows to a staging
  folder beside the training set.

The task then streams the staging files batch by batch into the one Parquet file the
local path writes, each batch converted to the dtypes the local frame has (which depend
on where the whole table has nulls, see :func:`local_dtypes`) and hashed on the way
(:class:`~closedloop.core.lineage.FrameDigest`), so the digest is the local one.
"""

from __future__ import annotations

import shutil
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from closedloop.core import offline
from closedloop.core.files import replacing
from closedloop.core.lineage import FrameDigest
from closedloop.core.training_pipeline import EVENT_TIMESTAMP

if TYPE_CHECKING:
    from collections.abc import Iterator
    from datetime import datetime
    from pathlib import Path

    import pandas as pd
    from feast import FeatureStore

    from closedloop.core.settings import Settings

#: rows per batch streamed from the staging files into the training set
BATCH_ROWS = 65_536

# Spark columns of the plan (never a use case's)
_FILE, _ROW, _PAIR = "__cl_file", "__cl_row", "__cl_pair"


def write_training_set(
    settings: Settings,
    store: FeatureStore,
    refs: list[str],
    start: datetime,
    end: datetime,
    path: Path,
) -> tuple[str, int, float] | None:
    """Write the training set of ``[start, end)`` with the features ``refs`` to ``path``
    (see the module); returns its digest, rows and positive rate, or None when the
    window has no labelled events. A rerun replaces what an earlier attempt left."""
    from pyspark.sql import functions as F

    from closedloop.core import spark as engine
    from closedloop.core.feature_store import spark_started

    usecase = settings.usecase
    table_dir = settings.offline_table_dir(usecase.event_table)
    paths = [
        offline.partition_path(table_dir, k) for k in offline.keys_around(table_dir, start, end)
    ]
    if not paths:
        return None
    staging = path.parent / ".spark-staging"
    shutil.rmtree(staging, ignore_errors=True)
    spark_started(store)  # Feast's session, from the store's properties
    session = engine.session(settings)
    try:
        labelled = _labelled_entities(session, settings, paths, start, end, staging / "entities")
        if labelled is None:
            return None
        entities, entity_dtypes = labelled
        joined, feature_dtypes = _with_features(session, store, refs, entities, staging)
        dtypes = entity_dtypes | feature_dtypes
        ordered = _with_defaults(joined, usecase.defaults).orderBy(
            F.col(EVENT_TIMESTAMP).asc_nulls_last(),
            F.col(usecase.batch.id_column).asc_nulls_last(),
            _FILE,
            _ROW,
        )
        # range partitions in order, each sorted: the files' names give the rows' order
        ordered.select(*dtypes).write.mode("overwrite").parquet(str(staging / "training_set"))
        return _published(
            staging / "training_set", path, dtypes, list(feature_dtypes), usecase.label.column
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _labelled_entities(
    session: Any,
    settings: Settings,
    paths: list[Path],
    start: datetime,
    end: datetime,
    staging: Path,
) -> tuple[Any, dict[str, Any]] | None:
    """The labelled events of ``paths`` (as
    :func:`~closedloop.core.training_pipeline.labelled_entities` selects them), staged,
    each with its file's rank and its index in the file; and the dtypes pandas gives
    their columns (read from the partitions' schemas), or None when there are none."""
    from pyspark.sql import functions as F

    usecase = settings.usecase
    ts, label, known = usecase.batch.timestamp_column, usecase.label.column, usecase.known_at_column
    columns = [*usecase.entity_keys, ts, label, known]
    frames = [
        session.read.parquet(str(p)).select(
            *columns, F.lit(rank).alias(_FILE), F.col("_metadata.row_index").alias(_ROW)
        )
        for rank, p in enumerate(paths)
    ]
    rows = frames[0]
    for frame in frames[1:]:
        rows = rows.unionByName(frame)
    kept = (F.col(ts) >= F.lit(start)) & (F.col(ts) < F.lit(end)) & (F.col(known) < F.lit(end))
    labelled = rows.where(kept).withColumnRenamed(ts, EVENT_TIMESTAMP)
    labelled.write.mode("overwrite").parquet(str(staging))
    entities = session.read.parquet(str(staging))
    if entities.count() == 0:
        return None
    # pandas reads each partition whole: a column's dtype depends on all their rows
    schema = pa.unify_schemas([pq.read_schema(p) for p in paths])
    base = schema.empty_table().to_pandas().dtypes
    dtypes = local_dtypes(
        {c: base[c] for c in columns}, _with_nulls(rows, [c for c in columns if _nullable(base[c])])
    )
    return entities, {(EVENT_TIMESTAMP if c == ts else c): d for c, d in dtypes.items()}


def _with_features(
    session: Any, store: FeatureStore, refs: list[str], entities: Any, staging: Path
) -> tuple[Any, dict[str, Any]]:
    """``entities`` with each view's features, as ``historical_features`` joins them
    (see the module); and the dtypes the local path's frame gives the features."""
    from pyspark.sql import functions as F

    from closedloop.core.feature_store import join_keys, refs_by_view

    joined = entities
    dtypes: dict[str, Any] = {}
    for rank, (view_name, view_refs) in enumerate(refs_by_view(refs).items()):
        keys = [*join_keys(store.get_feature_view(view_name)), EVENT_TIMESTAMP]
        names = [r.split(":", 1)[1] for r in view_refs]
        found = _found(session, store, view_refs, entities, keys, staging / f"view-{rank}")
        base = pa.schema([found.field(n) for n in names]).empty_table().to_pandas().dtypes
        table = session.read.parquet(str(staging / f"view-{rank}" / "found"))
        nulls = _with_nulls(table, [n for n in names if _nullable(base[n])])
        dtypes |= local_dtypes({n: base[n] for n in names}, nulls)
        # null-safe, as pandas' merge matches missing keys
        on = {c: f"__cl_on{i}" for i, c in enumerate(keys)}
        right = table.select(*[F.col(c).alias(a) for c, a in on.items()], *names)
        match = [joined[c].eqNullSafe(right[a]) for c, a in on.items()]
        joined = joined.join(right, match, "left").drop(*on.values())
    return joined, dtypes


def _found(
    session: Any,
    store: FeatureStore,
    refs: list[str],
    entities: Any,
    keys: list[str],
    staging: Path,
) -> pa.Schema:
    """Stage the distinct ``keys`` of ``entities``, tagged, with the features ``refs``
    of one view Feast's Spark store finds for them (nulls where it finds none); raises
    RuntimeError when Feast returned more than one row for a pair. Returns the staged
    rows' Arrow schema."""
    from pyspark.sql import functions as F

    pairs = entities.select(*keys).distinct().withColumn(_PAIR, F.monotonically_increasing_id())
    pairs.write.mode("overwrite").parquet(str(staging / "pairs"))  # the tags, fixed
    tagged = session.read.parquet(str(staging / "pairs"))
    view = f"closedloop_pairs_{uuid.uuid4().hex}"
    tagged.createOrReplaceTempView(view)
    try:
        got = store.get_historical_features(entity_df=f"SELECT * FROM {view}", features=refs)
        names = [r.split(":", 1)[1] for r in refs]
        found = tagged.join(got.to_spark_df().select(_PAIR, *names), _PAIR, "left")
        found.write.mode("overwrite").parquet(str(staging / "found"))
    finally:
        session.catalog.dropTempView(view)
    if session.read.parquet(str(staging / "found")).count() != tagged.count():
        raise RuntimeError(f"Feast returned more than one row per entity row for {refs}")
    return ds.dataset(staging / "found", format="parquet").schema


def _with_nulls(frame: Any, columns: list[str]) -> set[str]:
    """The ``columns`` of a Spark frame that hold a null."""
    if not columns:
        return set()
    from pyspark.sql import functions as F

    row = frame.agg(*[F.max(F.col(c).isNull()).alias(c) for c in columns]).first()
    return {c for c in columns if row[c]}


def _nullable(dtype: Any) -> bool:
    """Whether pandas gives a column of ``dtype`` another dtype when it has nulls."""
    return isinstance(dtype, np.dtype) and dtype.kind in "iub"


def local_dtypes(base: dict[str, Any], with_nulls: set[str]) -> dict[str, Any]:
    """The dtypes pandas gives columns of dtype ``base`` (read without nulls) when those
    of ``with_nulls`` hold some: float64 for an int, object for a bool."""
    out = {}
    for name, dtype in base.items():
        if name in with_nulls and _nullable(dtype):
            dtype = np.dtype("object" if dtype.kind == "b" else "float64")
        out[name] = dtype
    return out


def _with_defaults(frame: Any, defaults: dict[str, Any]) -> Any:
    """The declared defaults in place of missing values (NaN included, as pandas'
    ``fillna``)."""
    from pyspark.sql import functions as F

    kinds = dict(frame.dtypes)
    for name, value in defaults.items():
        if name not in kinds:
            continue
        column = F.col(name)
        if kinds[name] in ("double", "float"):
            column = F.when(~F.isnan(column), column)
        frame = frame.withColumn(name, F.coalesce(column, F.lit(value)))
    return frame


def local_frame(batch: pa.RecordBatch, dtypes: dict[str, Any], merged: list[str]) -> pd.DataFrame:
    """A batch of rows as the local path's frame has them: its ``dtypes``, and a missing
    value of the ``merged`` columns (the features, added by pandas' merge) NaN, not None."""
    frame = batch.to_pandas()
    for name, dtype in dtypes.items():
        if frame[name].dtype != dtype:
            frame[name] = frame[name].astype(dtype)
    for name in merged:
        if frame[name].dtype == object:
            frame[name] = frame[name].where(frame[name].notna(), np.nan)
    return frame


def _published(
    staged: Path, path: Path, dtypes: dict[str, Any], merged: list[str], label: str
) -> tuple[str, int, float]:
    """Stream the staged rows into one Parquet file at ``path`` (replaced whole, as the
    local path's ``to_parquet``); their digest, number and positive rate."""
    digest = FrameDigest(dtypes)
    rows = labelled = 0
    positives = 0.0
    writer: pq.ParquetWriter | None = None
    schema = None
    with replacing(path) as tmp:
        try:
            for batch in _batches(staged):
                chunk = local_frame(batch, dtypes, merged)
                digest.update(chunk)
                if writer is None:
                    schema = _file_schema(chunk, batch.schema)
                    writer = pq.ParquetWriter(tmp, schema)
                writer.write_table(pa.Table.from_pandas(chunk, schema=schema, preserve_index=False))
                rows += len(chunk)
                positives += float(chunk[label].sum())
                labelled += int(chunk[label].count())
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise RuntimeError(f"Spark staged no rows in {staged}")
    return digest.hexdigest(), rows, positives / labelled if labelled else float("nan")


def _batches(staged: Path) -> Iterator[pa.RecordBatch]:
    """The staged rows in order: Spark's part files by name, each in its order."""
    for part in sorted(staged.glob("part-*.parquet")):
        yield from pq.ParquetFile(part).iter_batches(batch_size=BATCH_ROWS)


def _file_schema(chunk: pd.DataFrame, staged: pa.Schema) -> pa.Schema:
    """The Arrow schema ``to_parquet`` would give the whole frame, from its first
    chunk: an object column takes its staged type (a chunk of nulls only has none)."""
    schema = pa.Schema.from_pandas(chunk, preserve_index=False)
    for i, field in enumerate(schema):
        if chunk[field.name].dtype == object:
            schema = schema.set(i, field.with_type(staged.field(field.name).type))
    return schema
