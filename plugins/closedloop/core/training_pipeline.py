"""The training pipeline's steps (the paper's steps 18-22): versioned features from Feast,
a validated training set, a tuned model tracked in MLflow with its lineage, a registered
version and the promotion gate.

Each step is keyed by the DAG run (``run_key``): a retried step finds what its earlier
attempt finished (the MLflow run, the model version) instead of doing it twice.

One module of this size: the training DAG's steps, one function per operator.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd

from closedloop.core import failpoints, offline
from closedloop.core import tags as tag
from closedloop.core.lineage import RunLineage, frame_digest, git_commit
from closedloop.core.payloads import GateOutcome, TrainedModel, TrainingSetRef

if TYPE_CHECKING:
    from closedloop.core.modeling import Parts, TrainingConfig
    from closedloop.core.settings import Settings

#: Columns of a training set that are not model inputs.
EVENT_TIMESTAMP = "event_timestamp"
PIP_REQUIREMENTS = ["scikit-learn==1.9.1", "pandas==2.3.3", "numpy>=2,<3", "skops==0.16.0"]


def training_config(settings: Settings, **overrides: Any) -> TrainingConfig:
    from closedloop.core.modeling import TrainingConfig

    usecase = settings.usecase
    segments = {
        "segments": usecase.segments.columns,
        "min_segment_rows": usecase.segments.min_rows,
    }
    fields = {**segments, **usecase.model.training, **overrides}
    if "drop_features" in fields:
        fields["drop_features"] = tuple(fields["drop_features"])
    return TrainingConfig(**fields)


def training_window(
    settings: Settings, end: datetime, days: int | None = None
) -> tuple[datetime, datetime]:
    """``[end - days, end)``: the events a model trained at ``end`` may learn from."""
    days = days or settings.usecase.model.training_window_days
    end = end.astimezone(UTC)
    return end - timedelta(days=days), end


def labelled_entities(settings: Settings, start: datetime, end: datetime) -> pd.DataFrame:
    """The window's events whose label was known by ``end``: entity keys, the event
    timestamp, the label and the time it became known, in a deterministic order."""
    usecase = settings.usecase
    ts, label, known = usecase.batch.timestamp_column, usecase.label.column, usecase.known_at_column
    table_dir = settings.offline_table_dir(usecase.event_table)
    keys = offline.keys_around(table_dir, start, end)
    table = offline.read_partitions(table_dir, keys=keys)
    if table is None:
        return pd.DataFrame(columns=[*usecase.entity_keys, EVENT_TIMESTAMP, label])
    rows = table[(table[ts] >= start) & (table[ts] < end)]
    rows = rows[rows[known] < end]
    columns = [*usecase.entity_keys, ts, label, known]
    frame = rows[columns].rename(columns={ts: EVENT_TIMESTAMP})
    return frame.sort_values([EVENT_TIMESTAMP, usecase.batch.id_column]).reset_index(drop=True)


def build_training_set(
    settings: Settings, start: datetime, end: datetime, run_key: str
) -> TrainingSetRef:
    """Join the window's labelled events with the model's features, point in time
    correct (Feast), apply the declared defaults and snapshot the result.

    With ``compute: spark``, Spark builds the set and the task streams it into the
    snapshot (:mod:`closedloop.core.training_set_spark`): the same file and digest."""
    from closedloop.core.feature_store import feature_refs, historical_features, open_store

    usecase = settings.usecase
    path = settings.training_dir / _safe(run_key) / "training_set.parquet"
    if settings.compute == "spark":
        from closedloop.core.training_set_spark import write_training_set

        store = open_store(settings)
        refs = feature_refs(store, usecase.feature_service)
        written = write_training_set(settings, store, refs, start, end, path)
        if written is None:
            raise _no_labelled_events(settings, start, end)
        digest, rows, positive_rate = written
    else:
        entities = labelled_entities(settings, start, end)
        if entities.empty:
            raise _no_labelled_events(settings, start, end)
        store = open_store(settings)
        refs = feature_refs(store, usecase.feature_service)
        frame = historical_features(store, entities, refs)
        frame = frame.fillna({k: v for k, v in usecase.defaults.items() if k in frame})
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
        digest, rows = frame_digest(frame), len(frame)
        positive_rate = float(frame[usecase.label.column].mean())
    return TrainingSetRef(
        uri=str(path),
        digest=digest,
        rows=rows,
        positive_rate=positive_rate,
        window_start=start.isoformat(),
        window_end=end.isoformat(),
        feature_service=usecase.feature_service,
        feature_views=sorted({r.split(":")[0] for r in refs}),
        features=[r.split(":")[1] for r in refs],
    )


def _no_labelled_events(settings: Settings, start: datetime, end: datetime) -> ValueError:
    usecase = settings.usecase
    return ValueError(
        f"no events of {usecase.event_table!r} with a known {usecase.label.column!r} in "
        f"the window [{start}, {end})"
    )


def validate_training(settings: Settings, built: TrainingSetRef, run_name: str) -> dict[str, Any]:
    """The GX gate of the training set; raises ``DataValidationError`` when it fails.

    With ``compute: spark``, GX's Spark engine runs the suite on the snapshot in the
    process's Spark session: the task holds none of its rows."""
    from closedloop.core.errors import DataValidationError
    from closedloop.core.validation import (
        TrainingSetPolicy,
        validate_training_set,
        validate_training_set_on_spark,
    )

    usecase = settings.usecase
    options: dict[str, Any] = {
        "features": built.features,
        "policy": TrainingSetPolicy(**usecase.model.training_set),
        "gx_dir": settings.gx_dir,
        "run_name": run_name,
    }
    if settings.compute == "spark":
        from closedloop.core.spark import session

        result = validate_training_set_on_spark(session(settings), built.uri, usecase, **options)
    else:
        result = validate_training_set(pd.read_parquet(built.uri), usecase, **options)
    if not result.success:
        raise DataValidationError(result)
    return result.to_dict()


def split_training_set(settings: Settings, frame: pd.DataFrame, config: TrainingConfig) -> Any:
    """Train / validation / holdout by the time each outcome became known."""
    from closedloop.core.modeling import split_by_time

    usecase = settings.usecase
    return split_by_time(
        frame,
        known_at=usecase.known_at_column,
        validation_days=config.validation_days,
        holdout_days=config.holdout_days,
        label=usecase.label.column,
        order_by=(EVENT_TIMESTAMP, usecase.batch.id_column),
    )


def training_parts(
    settings: Settings, uri: str, config: TrainingConfig, *, samples: bool = True
) -> Parts:
    """What training and the gate use of the snapshot at ``uri``: read whole, or, with
    sample caps, only the sampled rows and the holdout in chunks (memory flat in the
    snapshot's rows; the same rows either way). ``samples=False``: the holdout is all
    the caller needs (the search's and refit's frames may then be empty)."""
    from closedloop.core.modeling import sampled_parts
    from closedloop.core.training_set import streamed_parts

    usecase = settings.usecase
    label = usecase.label.column
    if config.search_rows is None and config.refit_rows is None:
        split = split_training_set(settings, pd.read_parquet(uri), config)
        return sampled_parts(split, config, label)
    return streamed_parts(
        uri,
        config,
        known_at=usecase.known_at_column,
        label=label,
        order_by=(EVENT_TIMESTAMP, usecase.batch.id_column),
        samples=samples,
    )


def excluded_columns(settings: Settings) -> list[str]:
    """Columns of a training set that are not model inputs: the id and entity keys
    (unless declared as features), the event time, the label and its known-at time."""
    usecase = settings.usecase
    features = set(usecase.model_features)
    keys = [k for k in usecase.entity_keys if k not in features]
    return [*keys, EVENT_TIMESTAMP, usecase.label.column, usecase.known_at_column]


def cache_key(built: TrainingSetRef, config: TrainingConfig, code: str) -> dict[str, str]:
    return {"data_digest": built.digest, "config_digest": config.digest(), "git_commit": code}


def unchanged_since_champion(settings: Settings, key: dict[str, str]) -> str | None:
    """Why training can be skipped (the champion was trained on exactly this), or None."""
    from closedloop.core.registry import CHAMPION, alias_version, client_for, version_run_tags

    client = client_for(settings)
    version = alias_version(client, settings.model_name, CHAMPION)
    if version is None or key["git_commit"] == "unknown":
        return None
    tags = version_run_tags(client, settings.model_name, version)
    if all(tags.get(f"{tag.PREFIX}{k}") == v for k, v in key.items()):
        return (
            f"champion v{version} was trained on the same data ({key['data_digest'][:12]}), "
            f"code ({key['git_commit'][:12]}) and parameters"
        )
    return None


def _safe(run_key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in run_key)


def _finished_run(experiment_id: str, run_key: str) -> Any:
    import mlflow

    runs = mlflow.search_runs(
        [experiment_id],
        filter_string=f"{tag.equals(tag.DAG_RUN_ID, run_key)} and attributes.status = 'FINISHED'",
        output_format="list",
    )
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parents[0] if parents else None


def _end_abandoned_runs(settings: Settings, experiment_id: str, run_key: str) -> list[str]:
    """Mark as KILLED the runs an earlier attempt of this DAG run left RUNNING (its parent
    run and its trials): that attempt was killed, and its run will never end by itself.
    Returns their ids."""
    import mlflow

    from closedloop.core.registry import client_for

    def running(where: str) -> list[Any]:
        return mlflow.search_runs(
            [experiment_id],
            filter_string=f"{where} and attributes.status = 'RUNNING'",
            output_format="list",
        )

    client = client_for(settings)
    ended = []
    for parent in running(tag.equals(tag.DAG_RUN_ID, run_key)):
        trials = running(f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        for run in [*trials, parent]:
            client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    return ended


def train(
    settings: Settings,
    built: TrainingSetRef,
    lineage: RunLineage,
    config: TrainingConfig,
) -> TrainedModel:
    """Tune, train and evaluate; log one parent MLflow run (trials nested) with the model,
    its signature, the training dataset and the lineage tags. Idempotent per DAG run: a
    retry returns the run an earlier attempt finished, or ends the one it left running
    (killed mid-run) as KILLED and trains anew."""
    import mlflow

    from closedloop.core.modeling import train_on_parts
    from closedloop.core.registry import use_mlflow

    use_mlflow(settings)
    from closedloop.core.registry import experiment_id as experiment_for

    experiment_id = experiment_for(settings)
    done = _finished_run(experiment_id, lineage.dag_run_id)
    if done is not None:
        return _summary(done.info.run_id, json.loads(done.data.tags[tag.SUMMARY]))
    _end_abandoned_runs(settings, experiment_id, lineage.dag_run_id)

    usecase = settings.usecase
    parts = training_parts(settings, built.uri, config)
    exclude = excluded_columns(settings)
    tags = {
        **lineage.tags(),
        tag.CONFIG_DIGEST: config.digest(),
        tag.CONFIG: json.dumps(config.to_params(), sort_keys=True),
    }
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=lineage.dag_run_id, tags=tags
    ) as run:
        mlflow.log_params(
            {
                **config.to_params(),
                "window_start": built.window_start,
                "window_end": built.window_end,
                **parts.cutoffs,
            }
        )
        mlflow.log_input(_dataset(built, parts, usecase.label.column), context="training")

        def log_trial(trial: Any) -> None:
            # in the parent's experiment: without it MLflow puts a nested run in the
            # active one (Default), where no search of this DAG run's runs finds it
            with mlflow.start_run(
                run_name=f"trial-{trial.number}-{trial.family}",
                experiment_id=experiment_id,
                nested=True,
            ):
                mlflow.log_params({"family": trial.family, **trial.params})
                mlflow.log_metrics(
                    {f"validation.{k}": v for k, v in trial.validation_metrics.items()}
                )

        outcome = train_on_parts(
            parts, config, label=usecase.label.column, exclude=exclude, on_trial=log_trial
        )
        mlflow.log_metrics(outcome.holdout_metrics)
        mlflow.log_metrics({f"validation.{k}": v for k, v in outcome.validation_metrics.items()})
        mlflow.log_params(
            {
                "family": outcome.family,
                "threshold": outcome.threshold,
                **{f"model.{k}": v for k, v in outcome.params.items()},
                # how much of train + validation the search and the refit saw
                **{f"sample.{k}": v for k, v in outcome.sampling.items()},
            }
        )
        model_uri = _log_model(outcome, next(iter(parts.holdout())), exclude)
        failpoints.hold("train.model_logged")
        summary = {
            "model_uri": model_uri,
            "threshold": outcome.threshold,
            "family": outcome.family,
            "metrics": outcome.holdout_metrics,
            "holdout_rows": parts.holdout_rows,
        }
        mlflow.set_tags(
            {
                tag.THRESHOLD: str(outcome.threshold),
                tag.MODEL_URI: model_uri,
                tag.SUMMARY: json.dumps(summary, sort_keys=True),
            }
        )
    return _summary(run.info.run_id, summary)


def _dataset(built: TrainingSetRef, parts: Parts, label: str) -> Any:
    """The MLflow dataset of the training set: from the frame when it was read whole;
    else its source, digest and schema only (MLflow profiles a frame it is given, and
    the sampled rows are not the training set)."""
    import mlflow

    if parts.sampling["refit_rows"] == parts.sampling["rows_available"] and (
        parts.sampling["search_rows"] == parts.sampling["rows_available"]
    ):
        frame = pd.concat([parts.refit, *parts.holdout()], ignore_index=True)
        return mlflow.data.from_pandas(
            frame, source=built.uri, name="training_set", targets=label, digest=built.digest[:36]
        )
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.models import infer_signature

    return MetaDataset(
        resolve_dataset_source(built.uri),
        name="training_set",
        digest=built.digest[:36],
        schema=infer_signature(parts.refit.head(100)).inputs,
    )


def _summary(run_id: str, summary: dict[str, Any]) -> TrainedModel:
    return TrainedModel.from_dict({"run_id": run_id, **summary})


def _log_model(outcome: Any, holdout: pd.DataFrame, exclude: list[str]) -> str:
    import mlflow
    import skops.io
    from mlflow.models import infer_signature

    example = holdout.drop(columns=[c for c in exclude if c in holdout]).head(5)
    example = example[outcome.feature_names]
    signature = infer_signature(example, outcome.model.predict_proba(example)[:, 1])
    # skops refuses to load types it was not told to trust; we trust what we just trained.
    trusted = skops.io.get_untrusted_types(data=skops.io.dumps(outcome.model))
    info = mlflow.sklearn.log_model(
        outcome.model,
        name="model",
        signature=signature,
        input_example=example,
        pip_requirements=PIP_REQUIREMENTS,
        serialization_format="skops",
        skops_trusted_types=trusted,
        pyfunc_predict_fn="predict_proba",
    )
    return info.model_uri


def register(settings: Settings, trained: TrainedModel, run_key: str) -> str:
    from closedloop.core.registry import client_for, register_version

    return register_version(
        client_for(settings),
        settings.model_name,
        trained.model_uri,
        trained.run_id,
        run_key,
        tags={tag.FAMILY: trained.family},
    )


def gate(
    settings: Settings,
    built: TrainingSetRef,
    trained: TrainedModel,
    version: str,
    *,
    dag_id: str,
    run_id: str,
    config: TrainingConfig | None = None,
) -> GateOutcome:
    """Score the champion on the candidate's holdout, decide, move aliases, record it.

    ``config`` must be the one the candidate was trained with (its holdout is the one
    the champion is scored on); the use case's when not given.
    """
    from closedloop.core.alias_watch import check_aliases
    from closedloop.core.gate import GatePolicy, decide
    from closedloop.core.ledger import PromotionLedger
    from closedloop.core.modeling import evaluate_chunks
    from closedloop.core.registry import (
        CHAMPION,
        PREVIOUS,
        alias_version,
        apply_decision,
        client_for,
    )

    usecase = settings.usecase
    client = client_for(settings)
    check_aliases(settings, client=client)  # a move made by hand since the last run, first
    config = config or training_config(settings)
    champion_version = alias_version(client, settings.model_name, CHAMPION)
    if champion_version == version:
        # A retry of a gate that had promoted this version before it was killed: judge it
        # against the champion it replaced, as the first attempt did, so the decision and
        # the ledger entry are the first attempt's.
        champion_version = alias_version(client, settings.model_name, PREVIOUS)
    champion_metrics = None
    if champion_version is not None and champion_version != version:
        mv = client.get_model_version(settings.model_name, champion_version)
        threshold = float(client.get_run(mv.run_id).data.tags[tag.THRESHOLD])
        from closedloop.core.registry import load_version

        champion = load_version(settings, champion_version)
        holdout = training_parts(settings, built.uri, config, samples=False).holdout
        champion_metrics = evaluate_chunks(
            champion,
            holdout(),
            label=usecase.label.column,
            threshold=threshold,
            segments=config.segments,
            min_segment_rows=config.min_segment_rows,
            exclude=excluded_columns(settings),
        )
    policy = GatePolicy(**usecase.model.gate)
    decision = decide(trained.metrics, champion_metrics, policy, champion_version=champion_version)
    if policy.needs_shadow:  # replay the champion's logged traffic (closedloop.core.shadow)
        from closedloop.core.shadow import gate_with_shadow

        end = datetime.fromisoformat(built.window_end)
        decision = gate_with_shadow(settings, decision, version, policy, end=end, dag_run_id=run_id)
    if decision.blessed and policy.needs_approval:
        from closedloop.core.approval import hold_for_approval

        return hold_for_approval(settings, version, decision, dag_id=dag_id, run_id=run_id)
    ledger = PromotionLedger(settings.closedloop_db)
    try:
        action = apply_decision(
            client, ledger, settings.model_name, version, decision, dag_id=dag_id, run_id=run_id
        )
    finally:
        ledger.dispose()
    return GateOutcome(version, action, decision)


def run_in_process(
    settings: Settings,
    start: datetime,
    end: datetime,
    run_key: str,
    *,
    reason: str,
    dag_id: str = "in-process",
    skip_unchanged: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """The training DAG's steps in order, in this process, for the window
    ``[start, end)`` — for tests, benchmarks and the plain side of the loop benchmark.

    ``overrides`` change the use case's training config (e.g. ``trials=2``). Returns the
    gate's outcome as a dict with ``built`` (:class:`TrainingSetRef`) and ``trained``
    (:class:`TrainedModel`); the action is ``"skipped"`` when ``skip_unchanged`` and
    nothing changed since the champion.
    """
    from closedloop.core.lineage import git_commit

    built = build_training_set(settings, start, end, run_key)
    gx = validate_training(settings, built, run_name=_safe(run_key))
    config = training_config(settings, **overrides)
    if skip_unchanged and unchanged_since_champion(
        settings, cache_key(built, config, git_commit())
    ):
        return {"action": "skipped", "built": built}
    lineage = lineage_for(settings, built, gx, dag_id=dag_id, dag_run_id=run_key, reason=reason)
    trained = train(settings, built, lineage, config)
    version = register(settings, trained, run_key)
    outcome = gate(settings, built, trained, version, dag_id=dag_id, run_id=run_key, config=config)
    return {**outcome.to_dict(), "built": built, "trained": trained}


def lineage_for(
    settings: Settings,
    built: TrainingSetRef,
    gx: dict[str, Any],
    *,
    dag_id: str,
    dag_run_id: str,
    reason: str,
) -> RunLineage:
    return RunLineage(
        dag_id=dag_id,
        dag_run_id=dag_run_id,
        trigger_reason=reason,
        git_commit=git_commit(),
        feast_project=settings.usecase.name,
        feature_service=built.feature_service,
        feature_views=",".join(built.feature_views),
        window_start=built.window_start,
        window_end=built.window_end,
        data_digest=built.digest,
        training_set_uri=built.uri,
        gx_verdict="passed" if gx.get("success") else "failed",
    )


def reproduce(settings: Settings, mlflow_run_id: str) -> dict[str, Any]:
    """Rebuild a run's training set from its recorded window and feature service, check
    the data digest, retrain with its recorded parameters and compare holdout metrics."""
    from closedloop.core.modeling import train_on_parts
    from closedloop.core.registry import client_for

    run = client_for(settings).get_run(mlflow_run_id)
    tags = run.data.tags
    start = datetime.fromisoformat(tags[tag.WINDOW_START])
    end = datetime.fromisoformat(tags[tag.WINDOW_END])
    built = build_training_set(settings, start, end, f"reproduce-{mlflow_run_id}")
    if built.digest != tags[tag.DATA_DIGEST]:
        raise ValueError(
            f"the rebuilt training set differs from the recorded one (digest "
            f"{built.digest[:12]} != {tags[tag.DATA_DIGEST][:12]}): the offline "
            "store changed for the window"
        )
    from closedloop.core.training_config import MODELING_VERSION

    recorded_config = json.loads(tags[tag.CONFIG])
    if recorded_config.pop("modeling_version", None) != MODELING_VERSION:
        raise ValueError(
            "the run was trained by another version of closedloop.core.modeling; check out "
            f"the commit it records ({tags.get(tag.GIT_COMMIT)}) to reproduce it"
        )
    config = training_config(settings, **recorded_config)
    outcome = train_on_parts(
        training_parts(settings, built.uri, config),
        config,
        label=settings.usecase.label.column,
        exclude=excluded_columns(settings),
    )
    recorded = json.loads(tags[tag.SUMMARY])["metrics"]
    return {
        "run_id": mlflow_run_id,
        "data_digest": built.digest,
        "recorded": recorded,
        "reproduced": outcome.holdout_metrics,
        "identical": recorded == outcome.holdout_metrics,
        "training_set_uri": built.uri,
    }
