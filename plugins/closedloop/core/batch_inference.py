"""Batch inference (the paper's C7): score an interval's bookings with the champion.

The model comes from the project's own MLflow registry (``models:/<name>/<version>``, the
version resolved through an alias, ``champion`` by default) with the threshold its
training run recorded. The rows are the bookings *made* in ``[start, end)``: the offline
entity table's partitions of those days, filtered by the batch timestamp column. Their
features come from Feast as of each booking's time, with the use case's declared
defaults filled in afterwards — exactly how the training set is built
(:func:`closedloop.core.training_pipeline.build_training_set`), so a booking gets the
same inputs in a training set, in batch and online.

Rows are read, joined, scored and written ``chunk_rows`` at a time (the entity rows are
streamed from the Parquet files, the outputs streamed as row groups), so the memory for
rows is one chunk however many rows the interval has. Two outputs, both keyed by the
interval's start date and replaced whole (temporary file + ``os.replace``) on a rerun:

* ``<home>/predictions/<use case>/<YYYY-MM-DD>.parquet`` — entity keys, event time,
  score, decision, model name and version;
* the prediction log's batch partition of that day — the log's core columns, the entity
  keys and the feature values the model saw (see :mod:`closedloop.core.prediction_log`).

An interval without bookings writes no file, and removes the files an earlier run of the
same interval wrote: the outputs always say what the latest run found.

Cost: Feast's file offline store reads every feature view's whole source folder on each
``get_historical_features`` call and keeps it in memory while joining, so a chunk costs
time and memory in proportion to the offline tables, not to the chunk; see
``benchmarks/batch_inference.py`` for the numbers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from closedloop.core import offline
from closedloop.core.errors import BatchNotFoundError, NoChampionError
from closedloop.core.prediction_log import CORE_COLUMNS, PredictionLog, prediction_id
from closedloop.core.registry import CHAMPION
from closedloop.core.training_pipeline import EVENT_TIMESTAMP

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from feast import FeatureStore

    from closedloop.core.settings import Settings

log = logging.getLogger(__name__)

SOURCE = "batch"
THRESHOLD_TAG = "closedloop.threshold"


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

    Raises :class:`NoChampionError` when the model or the alias does not exist.
    """
    import mlflow

    from closedloop.core.registry import alias_version, client_for, use_mlflow

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
    if THRESHOLD_TAG not in tags:
        raise ValueError(
            f"{name} v{version} (run {run_id}) has no {THRESHOLD_TAG!r} tag: it was not "
            "trained by closedloop's training pipeline"
        )
    use_mlflow(settings)
    model = mlflow.sklearn.load_model(f"models:/{name}/{version}")
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        info = mlflow.models.get_model_info(f"models:/{name}/{version}")
        names = info.signature.inputs.input_names() if info.signature else None
    if names is None or len(names) == 0:
        raise ValueError(f"{name} v{version} does not say which columns it reads")
    return LoadedModel(name, version, model, float(tags[THRESHOLD_TAG]), list(names), alias)


def score_interval(
    settings: Settings,
    start: datetime,
    end: datetime,
    *,
    chunk_rows: int = 50_000,
    model: LoadedModel | None = None,
) -> dict[str, Any]:
    """Score the bookings made in ``[start, end)`` and write both outputs (see the module).

    ``model`` defaults to the champion (:func:`load_model`). Returns ``rows``, ``chunks``,
    ``model_version``, ``predictions_uri`` and ``log_uri`` (``None`` when there were no
    rows), ``positive_rate`` (share decided positive; ``None`` without rows) and
    ``seconds`` spent per stage (read, join, predict, write, total).
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
    key = start.strftime("%Y-%m-%d")
    table_dir = settings.offline_table_dir(usecase.feast.tables[0])
    last_day = (end - timedelta(microseconds=1)).strftime("%Y-%m-%d")
    paths = [
        offline.partition_path(table_dir, k)
        for k in offline.partition_keys(table_dir)
        if key <= k <= last_day
    ]
    if key not in offline.partition_keys(table_dir):
        # The features of the interval have not landed yet: a retry may find them.
        raise BatchNotFoundError(
            f"no {usecase.feast.tables[0]} partition for {key} in {table_dir}: run the "
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
        refs = feature_refs(store, usecase.feast.feature_service)
        pred_schema, log_schema = _schemas(settings, store, refs, loaded, pq.read_schema(paths[0]))
        with (
            offline.PartitionWriter(predictions_dir(settings), key, pred_schema) as pred_out,
            predictions.batch_writer(key, log_schema) as log_out,
        ):
            entity_chunks = _entity_chunks(paths, settings, start, end, chunk_rows, seconds=seconds)
            for entities in entity_chunks:
                scored, records, stage = _score_chunk(settings, store, refs, loaded, entities)
                t0 = time.perf_counter()
                pred_out.write(scored)
                log_out.write(records)
                seconds["write"] += time.perf_counter() - t0
                seconds["join"] += stage["join"]
                seconds["predict"] += stage["predict"]
                rows += len(scored)
                chunks += 1
                positives += int(scored["decision"].sum())
                log.debug("chunk %d: %d rows (%d so far)", chunks, len(scored), rows)
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
    defaults = settings.usecase.feast.defaults
    return frame.fillna({k: v for k, v in defaults.items() if k in frame})


def _score_chunk(
    settings: Settings,
    store: FeatureStore,
    refs: list[str],
    loaded: LoadedModel,
    entities: pd.DataFrame,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    usecase = settings.usecase
    keys = usecase.batch.entities
    t0 = time.perf_counter()
    frame = features_for(settings, store, refs, entities)
    t1 = time.perf_counter()
    score = loaded.model.predict_proba(frame[loaded.feature_names])[:, 1].astype(np.float64)
    t2 = time.perf_counter()
    decision = (score >= loaded.threshold).astype(np.int64)
    scored = frame[[*keys, EVENT_TIMESTAMP]].assign(
        score=score, decision=decision, model_name=loaded.name, model_version=loaded.version
    )
    ids = [
        prediction_id(loaded.name, loaded.version, SOURCE, str(k))
        for k in frame[usecase.batch.id_column]
    ]
    records = pd.DataFrame(
        {
            "prediction_id": ids,
            "source": SOURCE,
            "predicted_at": frame[EVENT_TIMESTAMP],
            "model_name": loaded.name,
            "model_version": loaded.version,
            "arm": loaded.alias,
            "score": score,
            "decision": decision,
        }
    )
    used = [c for c in loaded.feature_names if c not in keys]
    records = pd.concat([records, frame[[*keys, *used]]], axis=1)
    return scored, records, {"join": t1 - t0, "predict": t2 - t1}


def _entity_chunks(
    paths: list[Path],
    settings: Settings,
    start: datetime,
    end: datetime,
    chunk_rows: int,
    *,
    seconds: dict[str, float],
) -> Iterator[pd.DataFrame]:
    """Entity keys and event time of the rows stamped in ``[start, end)``, in file order,
    ``chunk_rows`` at a time (the last chunk may be shorter); never more than about two
    chunks of keys in memory."""
    usecase = settings.usecase
    ts = usecase.batch.timestamp_column
    columns = [*usecase.batch.entities, ts]
    buffered: list[pa.Table] = []
    held = 0
    t0 = time.perf_counter()
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows, columns=columns):
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
                chunk = _frame(whole.slice(0, chunk_rows), ts)
                seconds["read"] += time.perf_counter() - t0
                yield chunk
                t0 = time.perf_counter()
    if held:
        chunk = _frame(pa.concat_tables(buffered), ts)
        seconds["read"] += time.perf_counter() - t0
        yield chunk


def _frame(table: pa.Table, ts: str) -> pd.DataFrame:
    return table.to_pandas().rename(columns={ts: EVENT_TIMESTAMP})


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
    keys = usecase.batch.entities
    types = {k: source.field(k).type for k in keys}
    views = {fv.name: fv for fv in store.list_feature_views()}
    for ref in refs:
        view, name = ref.split(":", 1)
        field = next(f for f in views[view].features if f.name == name)
        kind = feast_value_type_to_pa(field.dtype.to_value_type())
        default = usecase.feast.defaults.get(name)
        if pa.types.is_integer(kind) and isinstance(default, float) and not default.is_integer():
            kind = pa.float64()  # a fractional default widens the column
        types.setdefault(name, kind)
    unknown = [c for c in loaded.feature_names if c not in types]
    if unknown:
        raise ValueError(
            f"{loaded.name} v{loaded.version} reads {unknown}, which neither the entity "
            f"columns nor the feature service {usecase.feast.feature_service!r} provide"
        )
    when = source.field(usecase.batch.timestamp_column).type
    string = pa.string()
    predictions = pa.schema(
        [(k, types[k]) for k in keys]
        + [
            (EVENT_TIMESTAMP, when),
            ("score", pa.float64()),
            ("decision", pa.int64()),
            ("model_name", string),
            ("model_version", string),
        ]
    )
    core = {
        "prediction_id": string,
        "source": string,
        "predicted_at": when,
        "model_name": string,
        "model_version": string,
        "arm": string,
        "score": pa.float64(),
        "decision": pa.int64(),
    }
    assert list(core) == CORE_COLUMNS, "keep in step with prediction_log.CORE_COLUMNS"
    used = [c for c in loaded.feature_names if c not in keys]
    records = pa.schema(list(core.items()) + [(c, types[c]) for c in [*keys, *used]])
    return predictions, records


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"{moment} has no time zone; intervals are in UTC")
    return moment.astimezone(UTC)
