"""The monitoring pipeline's steps (the paper's C9 and the feedback loop, P8/P9).

Reference = the champion's training set (its recorded snapshot); current = the recent
window of the prediction log. Drift (Evidently) on the model's features and its score;
live performance where ground truth has arrived; a verdict with its numbers; reports as
HTML and JSON partitioned by day, in an MLflow monitoring run linked to the champion
version, and in an Evidently workspace for ``evidently ui``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd

from closedloop.core import offline
from closedloop.core import tags as tag
from closedloop.core.files import replacing

if TYPE_CHECKING:
    from pathlib import Path

    from closedloop.core.monitoring import Verdict
    from closedloop.core.settings import Settings


def reports_dir(settings: Settings, start: datetime) -> Path:
    path = settings.reports_dir / settings.usecase.interval_key(start)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _champion(settings: Settings) -> tuple[str, dict[str, str], dict[str, float]]:
    from closedloop.core.errors import NoChampionError
    from closedloop.core.registry import CHAMPION, alias_version, client_for

    client = client_for(settings)
    version = alias_version(client, settings.model_name, CHAMPION)
    if version is None:
        raise NoChampionError(f"model {settings.model_name!r} has no champion to monitor")
    run = client.get_run(client.get_model_version(settings.model_name, version).run_id)
    return version, dict(run.data.tags), dict(run.data.metrics)


def reference_path(settings: Settings, version: str, rows: int, seed: int) -> Path:
    """Where the reference of a model version is kept, per sample size and seed."""
    return (
        settings.home
        / "monitoring"
        / "reference"
        / settings.model_name
        / f"v{version}-rows{rows}-seed{seed}.parquet"
    )


def reference_frame(
    settings: Settings, tags: dict[str, str], loaded: Any, *, rows: int, seed: int
) -> pd.DataFrame:
    """What the champion was trained on, as production sees it: every event in its
    recorded training window (not only the labelled ones, which over-represent short
    lead times), sampled with a recorded seed, with its features and the champion's score.

    The reference of a version never changes (its window and the model are fixed), and
    building it is a point-in-time join over the whole window — most of a monitoring
    run's cost — so it is built on the first run that needs it and kept as a Parquet
    file next to the reports (:func:`reference_path`), written atomically. A correction
    re-delivered later for a day inside the window is not reflected; delete the file to
    rebuild it.
    """
    path = reference_path(settings, loaded.version, rows, seed)
    if path.exists():
        return pd.read_parquet(path)
    frame = _build_reference(settings, tags, loaded, rows=rows, seed=seed)
    with replacing(path) as partial:
        frame.to_parquet(partial, index=False)
    return frame


def _build_reference(
    settings: Settings, tags: dict[str, str], loaded: Any, *, rows: int, seed: int
) -> pd.DataFrame:
    from closedloop.core.asof import features_for
    from closedloop.core.feature_store import feature_refs, open_store
    from closedloop.core.training_pipeline import EVENT_TIMESTAMP

    usecase = settings.usecase
    start = datetime.fromisoformat(tags[tag.WINDOW_START])
    end = datetime.fromisoformat(tags[tag.WINDOW_END])
    ts = usecase.batch.timestamp_column
    table_dir = settings.offline_table_dir(usecase.event_table)
    keys = offline.keys_around(table_dir, start, end)
    table = offline.read_partitions(table_dir, keys=keys)
    if table is None:
        raise ValueError(f"no events left in the champion's training window [{start}, {end})")
    table = table[(table[ts] >= start) & (table[ts] < end)]
    if len(table) > rows:
        table = table.sample(n=rows, random_state=seed).sort_index()
    entities = table[[*usecase.entity_keys, ts]].rename(columns={ts: EVENT_TIMESTAMP})
    store = open_store(settings)
    frame = features_for(
        settings,
        store,
        feature_refs(store, usecase.feature_service),
        entities.reset_index(drop=True),
    )
    return frame.assign(score=loaded.model.predict_proba(frame)[:, 1])


def check_drift(
    settings: Settings, start: datetime, end: datetime, *, window_days: int
) -> dict[str, Any]:
    """Evidently drift of the recent predictions against the champion's training window,
    on the model's passed-through columns and on its score."""
    from closedloop.core.drift import DriftPolicy, add_to_workspace, run_drift
    from closedloop.core.monitoring import MonitoringPolicy
    from closedloop.core.prediction_log import PredictionLog
    from closedloop.core.registry import load_model

    version, tags, _ = _champion(settings)
    current = PredictionLog(settings.prediction_log_dir).read(
        end - timedelta(days=window_days), end
    )
    if not current.empty:  # what was answered: shadow records were scored beside it
        from closedloop.core.registry import SHADOW

        current = current[current["arm"] != SHADOW]
    if current.empty:
        return {"skipped": "no predictions in the window", "champion_version": version}
    monitoring = MonitoringPolicy(**settings.usecase.model.monitoring)
    policy = DriftPolicy.for_usecase(
        settings.usecase,
        prediction_column="score",
        drift_share_threshold=monitoring.drift_share_threshold,
        full_report=monitoring.drift_report,
    )
    loaded = load_model(settings)
    if loaded.version != version:  # promoted in between: the task's retry sees one version
        raise RuntimeError(f"the champion moved from v{version} to v{loaded.version}; retry")
    reference = reference_frame(settings, tags, loaded, rows=policy.max_rows, seed=policy.seed)
    columns = [*policy.columns, "score"]
    out = reports_dir(settings, start)
    result, snapshot = run_drift(
        reference[columns],
        current[columns],
        policy,
        html_path=out / "drift.html",
        json_path=out / "drift.json",
    )
    where = add_to_workspace(
        settings.evidently_workspace,
        f"closedloop {settings.usecase.name}",
        snapshot,
        timestamp=end,
    )
    return {
        **result.to_dict(),
        "champion_version": version,
        "report": str(out / "drift.html"),
        "evidently_project": where.project_id,
        "evidently_run": where.run_id,
        "window_start": (end - timedelta(days=window_days)).isoformat(),
        "window_end": end.isoformat(),
    }


def _labelled(
    settings: Settings, version: str, start: datetime, end: datetime, as_of: datetime
) -> pd.DataFrame:
    """The champion's predictions made in ``[start, end)`` whose outcome was known by
    ``as_of``, with the outcome."""
    from closedloop.core.prediction_log import PredictionLog, join_ground_truth

    usecase = settings.usecase
    predictions = PredictionLog(settings.prediction_log_dir).read(start, end)
    predictions = predictions[predictions["model_version"] == version]
    table = offline.read_partitions(settings.offline_table_dir(usecase.event_table))
    if predictions.empty or table is None:
        return pd.DataFrame(columns=["label", "score"])
    known_at = usecase.known_at_column
    columns = [usecase.batch.id_column, usecase.label.column, known_at]
    joined = join_ground_truth(
        predictions,
        table[columns].drop_duplicates(usecase.batch.id_column),
        key=usecase.batch.id_column,
        label=usecase.label.column,
        known_at=known_at,
        as_of=as_of,
    )
    return joined[joined["label_known"]]


def _midnight(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), UTC)


def _auc(labelled: pd.DataFrame) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(labelled) == 0 or labelled["label"].nunique() < 2:
        return None
    return float(roc_auc_score(labelled["label"].astype(int), labelled["score"]))


def check_performance(settings: Settings, end: datetime, *, window_days: int) -> dict[str, Any]:
    """Live ROC AUC of the champion over the last ``window_days``, against its own live
    AUC over the window before, each on the outcomes known by the end of its window.

    Both windows are censored alike — only outcomes that settle within a window count,
    and those are the quick ones (short lead times), on which any model separates less
    well than on a full holdout. Comparing like with like is what makes a drop a drop.
    """
    version, _, metrics = _champion(settings)
    width = timedelta(days=window_days)
    live = _labelled(settings, version, end - width, end, end)
    baseline = _labelled(settings, version, end - 2 * width, end - width, end - width)
    return {
        "champion_version": version,
        "labelled_rows": min(len(live), len(baseline)),
        "live_auc": _auc(live),
        "reference_auc": _auc(baseline),
        "live_rows": len(live),
        "baseline_rows": len(baseline),
        "holdout_auc": metrics.get("roc_auc"),
    }


def decide_and_record(
    settings: Settings,
    start: datetime,
    drift: dict[str, Any],
    performance: dict[str, Any],
    *,
    run_id: str,
) -> Verdict:
    """The day's verdict, recorded in the decision log and in an MLflow monitoring run."""
    import mlflow

    from closedloop.core.monitoring import DecisionLog, MonitoringPolicy, decide

    model = settings.model_name
    log = DecisionLog(settings.closedloop_db)
    try:
        day = start.date()
        drift_numbers = (
            drift
            if "drift_share" in drift
            else {"drift_share": 0.0, "drifted_columns": [], "prediction_drift": None}
        )
        policy = MonitoringPolicy(**settings.usecase.model.monitoring)
        since = log.drift_since(model, day, policy.drift_share_threshold)
        version = str(performance["champion_version"])
        end = start + timedelta(days=1)
        new_labels = len(_labelled(settings, version, _midnight(since), end, end))
        verdict = decide(
            model=model,
            day=day,
            drift=drift_numbers,
            live_auc=performance["live_auc"],
            labelled_rows=performance["labelled_rows"],
            reference_auc=performance["reference_auc"],
            last_retrain=log.last_retrain(model, before=day),
            policy=policy,
            report=drift.get("report"),
            drift_since=since,
            new_labels=new_labels,
        )
        log.record(verdict)
    finally:
        log.dispose()
    from closedloop.core.registry import use_mlflow

    use_mlflow(settings)
    from closedloop.core.registry import experiment_id

    experiment = experiment_id(settings, "/monitoring")
    existing = mlflow.search_runs(
        [experiment],
        filter_string=(tag.equals(tag.MONITORING_DAY, verdict.day)),
        output_format="list",
    )
    for old in existing:  # a rerun of the day replaces its monitoring run
        mlflow.delete_run(old.info.run_id)
    with mlflow.start_run(
        experiment_id=experiment,
        run_name=f"monitoring {verdict.day}",
        tags={
            tag.MONITORING_DAY: verdict.day,
            tag.DAG_RUN_ID: run_id,
            tag.CHAMPION_VERSION: str(performance["champion_version"]),
            tag.RETRAIN: str(verdict.retrain).lower(),
            tag.REASONS: "; ".join(verdict.reasons)[:4900],
        },
    ):
        metrics = {
            "drift_share": verdict.drift_share,
            "labelled_rows": float(verdict.labelled_rows),
        }
        if verdict.live_auc is not None:
            metrics["live_roc_auc"] = verdict.live_auc
        mlflow.log_metrics(metrics)
        mlflow.log_dict(verdict.to_dict(), "verdict.json")
        for name in ("drift.html", "drift.json"):
            path = reports_dir(settings, start) / name
            if path.exists():
                mlflow.log_artifact(str(path))
    return verdict
