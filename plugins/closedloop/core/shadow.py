"""Shadow evaluation: how a candidate version would have answered the traffic a baseline
version (normally the champion) answered, replayed off the request path.

:func:`shadow_report` takes the baseline's records of a window from the prediction log
(the features each was scored on), scores them with the candidate and compares the
decisions (each version by its own threshold), the score distributions (two-sample
Kolmogorov-Smirnov), each declared segment and, where outcomes are known, both versions'
metric with the bootstrap interval of the difference (:func:`closedloop.core.ab.
compare_arms`); it also times the candidate's scoring per row and per batch.
:func:`judge` holds the numbers against :class:`ShadowThresholds`; :func:`record` keeps
the report as an MLflow run of ``closedloop/<use case>/shadow``; :func:`gate_with_shadow`
is what ``model.gate.shadow: required`` adds to the promotion gate.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from closedloop.core import tags as tag
from closedloop.core.registry import CHAMPION, SHADOW, LoadedModel
from closedloop.core.shadow_stats import (
    ShadowThresholds,
    compare_labelled,
    compare_scores,
    decision_agreement,
    judge,
    segment_differences,
)

if TYPE_CHECKING:
    from closedloop.core.gate import GateDecision, GatePolicy
    from closedloop.core.settings import Settings

#: rows per call when the candidate's batch latency is measured (``serve --max-rows``)
BATCH_ROWS = 256
#: single-row calls timed, and batch calls at most
LATENCY_CALLS, BATCH_CALLS = 200, 20
EXPERIMENT_SUFFIX = "/shadow"


@dataclass(frozen=True)
class ShadowReport:
    """A candidate replayed on a baseline's logged traffic; ``passed`` per ``reasons``."""

    model: str
    candidate_version: str
    baseline_version: str
    window_start: str
    window_end: str
    rows: int
    skipped_rows: int  # logged rows lacking a feature the candidate reads
    agreement: float | None
    decisions: dict[str, int]
    scores: dict[str, Any]
    segments: list[dict[str, Any]]
    labelled: dict[str, Any] | None
    latency: dict[str, Any]
    thresholds: dict[str, Any]
    passed: bool
    reasons: list[str]
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verdict = "passed" if self.passed else "failed"
        return f"shadow v{self.candidate_version} vs v{self.baseline_version} {verdict}: " + (
            "; ".join(self.reasons)
        )


def measure_latency(
    model: LoadedModel, frame: pd.DataFrame, categories: dict[str, list[Any]]
) -> dict[str, Any]:
    """The candidate's scoring time on logged rows, measured: one row per call, then
    :data:`BATCH_ROWS` per call, the way serving calls it (the fast path once it has
    given the pipeline's own answer, else the pipeline)."""
    from closedloop.core.fast_pipeline import FastPipeline

    names, n = model.feature_names, len(frame)
    if n == 0:
        return {}
    columns = {c: frame[c].tolist() for c in names}
    fast: FastPipeline | None
    try:
        fast = FastPipeline(model.model)
        fast.remember(categories)
        head = list(range(min(n, BATCH_ROWS)))
        if not np.array_equal(
            fast.predict_proba(columns, head), model.model.predict_proba(frame[names].iloc[head])
        ):
            fast = None
    except TypeError:
        fast = None

    def call(rows: list[int]) -> float:
        t0 = time.perf_counter()
        if fast is not None:
            fast.predict_proba(columns, rows)
        else:
            model.model.predict_proba(frame[names].iloc[rows])
        return time.perf_counter() - t0

    call([0])  # warm
    single = np.array([call([i % n]) for i in range(LATENCY_CALLS)]) * 1000
    starts = range(0, n, BATCH_ROWS)[:BATCH_CALLS]
    batches = [list(range(s, min(n, s + BATCH_ROWS))) for s in starts]
    batch = np.array([call(rows) for rows in batches]) * 1000
    return {
        "path": "fast" if fast is not None else "pipeline",
        "row_calls": len(single),
        "row_p50_ms": float(np.percentile(single, 50)),
        "row_p99_ms": float(np.percentile(single, 99)),
        "batch_rows": BATCH_ROWS,
        "batch_calls": len(batch),
        "batch_p50_ms": float(np.percentile(batch, 50)),
        "batch_p99_ms": float(np.percentile(batch, 99)),
        "rows_per_second": float(sum(map(len, batches)) / (batch.sum() / 1000)),
    }


# -- the replay ------------------------------------------------------------------------
def load_version_model(settings: Settings, version: str) -> LoadedModel:
    """A registered version ready to score, with its own threshold tag (any alias)."""
    from closedloop.core.registry import client_for, load_version

    client = client_for(settings)
    run = client.get_run(client.get_model_version(settings.model_name, str(version)).run_id)
    if tag.THRESHOLD not in run.data.tags:
        raise ValueError(f"{settings.model_name} v{version} has no {tag.THRESHOLD!r} tag")
    model = load_version(settings, str(version))
    names = list(getattr(model, "feature_names_in_", []))
    if not names:  # as load_model: the logged signature says which columns it reads
        import mlflow

        info = mlflow.models.get_model_info(f"models:/{settings.model_name}/{version}")
        names = info.signature.inputs.input_names() if info.signature else []
    threshold = float(run.data.tags[tag.THRESHOLD])
    return LoadedModel(settings.model_name, str(version), model, threshold, names, SHADOW)


def logged_traffic(
    settings: Settings, version: str, start: datetime, end: datetime
) -> pd.DataFrame:
    """The records ``version`` answered in ``[start, end)``, batch and online (shadow
    records left out), each with its outcome where it was known by ``end``."""
    from closedloop.core import offline
    from closedloop.core.prediction_log import PredictionLog, join_ground_truth

    usecase = settings.usecase
    log = PredictionLog(settings.prediction_log_dir).read(start, end)
    if log.empty:
        return log.assign(label=pd.NA, label_known=False)
    served = log[(log["arm"] != SHADOW) & (log["model_version"].astype(str) == str(version))]
    served = served.drop_duplicates("prediction_id").reset_index(drop=True)
    table = offline.read_partitions(settings.offline_table_dir(usecase.event_table))
    key, label = usecase.batch.id_column, usecase.label.column
    if served.empty or table is None or key not in served:
        return served.assign(label=pd.NA, label_known=False)
    truth = table[[key, label, usecase.known_at_column]].drop_duplicates(key, keep="last")
    return join_ground_truth(
        served, truth, key=key, label=label, known_at=usecase.known_at_column, as_of=end
    )


def shadow_report(
    settings: Settings,
    candidate: str,
    *,
    end: datetime,
    days: int,
    thresholds: ShadowThresholds,
    baseline: str | None = None,
) -> ShadowReport:
    """Replay the logged traffic of ``baseline`` (the champion when None) of the ``days``
    before ``end`` through version ``candidate``, compare and judge (see the module)."""
    from closedloop.core.errors import NoChampionError
    from closedloop.core.registry import alias_version, client_for

    usecase = settings.usecase
    if baseline is None:
        baseline = alias_version(client_for(settings), settings.model_name, CHAMPION)
        if baseline is None:
            raise NoChampionError(f"{settings.model_name} has no champion to compare with")
    start = end - timedelta(days=days)
    model = load_version_model(settings, candidate)
    traffic = logged_traffic(settings, baseline, start, end)
    missing = [c for c in model.feature_names if c not in traffic]
    if missing and not traffic.empty:
        raise ValueError(
            f"the log of v{baseline} lacks features v{candidate} reads: {missing}; it cannot "
            "be replayed"
        )
    usable = traffic.dropna(subset=model.feature_names) if not traffic.empty else traffic
    scores = (
        model.model.predict_proba(usable[model.feature_names])[:, 1]
        if len(usable)
        else np.array([])
    )
    frame = usable.assign(
        baseline_score=usable["score"].astype(float) if len(usable) else [],
        baseline_decision=usable["decision"].astype(int) if len(usable) else [],
        candidate_score=scores,
        candidate_decision=(scores >= model.threshold).astype(np.int64),
    )
    agreement, cells = decision_agreement(frame["baseline_decision"], frame["candidate_decision"])
    compared = compare_scores(frame["baseline_score"], frame["candidate_score"])
    segments = segment_differences(frame, usecase.segments.columns) if len(frame) else []
    labelled = None
    known = frame[frame["label_known"].astype(bool)] if len(frame) else frame
    if usecase.batch.id_column in known:  # an event answered twice counts once
        known = known.drop_duplicates(usecase.batch.id_column, keep="last")
    metric = usecase.model.gate.get("primary_metric", "roc_auc")
    if len(known) and metric in ("roc_auc", "pr_auc"):
        labelled = compare_labelled(
            known["label"],
            known["baseline_score"],
            known["candidate_score"],
            metric=metric,
            min_labelled=thresholds.min_rows,
        )
    passed, reasons = judge(len(frame), agreement, compared, segments, labelled, thresholds)
    categories = {
        n: list(spec.categories or ()) for n, spec in usecase.columns.items() if spec.categories
    }
    return ShadowReport(
        model=settings.model_name,
        candidate_version=str(candidate),
        baseline_version=str(baseline),
        window_start=start.isoformat(),
        window_end=end.isoformat(),
        rows=len(frame),
        skipped_rows=len(traffic) - len(usable),
        agreement=agreement,
        decisions=cells,
        scores=compared,
        segments=segments,
        labelled=labelled,
        latency=measure_latency(model, usable.reset_index(drop=True), categories),
        thresholds=asdict(thresholds),
        passed=passed,
        reasons=reasons,
    )


# -- the record and the gate -----------------------------------------------------------
def metrics_of(report: ShadowReport) -> dict[str, float]:
    """The report's numbers as MLflow metrics."""
    from closedloop.core.modeling import segment_key

    out: dict[str, float] = {"rows": float(report.rows), "passed": float(report.passed)}
    if report.agreement is not None:
        out["agreement"] = report.agreement
    for key in ("ks_statistic", "ks_pvalue", "mean_abs_difference", "max_abs_difference"):
        if key in report.scores:
            out[key] = report.scores[key]
    for key, value in report.latency.items():
        if key != "path":
            out[f"latency.{key}"] = float(value)
    for s in report.segments:
        if s.get("agreement") is not None:
            out[segment_key("agreement", s["segment"], s["value"])] = s["agreement"]
    for key in ("labelled", "baseline", "candidate", "difference", "ci_low", "ci_high"):
        value = (report.labelled or {}).get(key)
        if value is not None:
            out[f"labelled.{key}"] = float(value)
    return out


def record(
    settings: Settings, report: ShadowReport, *, dag_run_id: str | None = None
) -> ShadowReport:
    """Keep ``report`` as an MLflow run of ``closedloop/<use case>/shadow`` (tags: both
    versions, the verdict; metrics; ``shadow_report.json``); a rerun of the same DAG run
    for the same candidate replaces its run. Returns the report with its run id."""
    import mlflow

    from closedloop.core.registry import experiment_id, use_mlflow

    use_mlflow(settings)
    experiment = experiment_id(settings, EXPERIMENT_SUFFIX)
    tags = {
        tag.CANDIDATE_VERSION: report.candidate_version,
        tag.BASELINE_VERSION: report.baseline_version,
        tag.SHADOW_PASSED: str(report.passed).lower(),
        tag.REASONS: "; ".join(report.reasons)[:4900],
    }
    if dag_run_id is not None:
        tags[tag.DAG_RUN_ID] = dag_run_id
        where = " and ".join(
            tag.equals(k, tags[k]) for k in (tag.DAG_RUN_ID, tag.CANDIDATE_VERSION)
        )
        for old in mlflow.search_runs([experiment], filter_string=where, output_format="list"):
            mlflow.delete_run(old.info.run_id)
    name = f"shadow v{report.candidate_version} vs v{report.baseline_version}"
    with mlflow.start_run(experiment_id=experiment, run_name=name, tags=tags) as run:
        mlflow.log_metrics(metrics_of(report))
        mlflow.log_dict(report.to_dict(), "shadow_report.json")
    return replace(report, run_id=run.info.run_id)


def gate_with_shadow(
    settings: Settings,
    decision: GateDecision,
    version: str,
    policy: GatePolicy,
    *,
    end: datetime,
    dag_run_id: str,
) -> GateDecision:
    """The gate's decision once ``model.gate.shadow: required`` is applied: the candidate
    replayed on the champion's logged traffic of the ``shadow_days`` before ``end``; a
    failing report, or none (nothing logged, an error), makes it not blessed, named in
    the reasons. The first model has no champion whose traffic could be replayed."""
    from closedloop.core.registry import client_for

    champion = decision.champion_version
    if champion is None:
        note = "shadow: first model, no champion traffic to replay"
        return (
            replace(decision, reasons=[*decision.reasons, note]) if decision.blessed else decision
        )
    client = client_for(settings)
    try:
        report = shadow_report(
            settings,
            version,
            end=end,
            days=policy.shadow_days,
            thresholds=ShadowThresholds.of(policy),
            baseline=champion,
        )
        report = record(settings, report, dag_run_id=dag_run_id)
    except Exception as exc:  # no report is a failed report: never promoted on it
        reason = (
            f"shadow: no report of v{version} against v{champion} ({type(exc).__name__}: {exc})"
        )
        client.set_model_version_tag(settings.model_name, version, tag.SHADOW, reason[:4900])
        return _refused(decision, [reason])
    verdict = f"{'passed' if report.passed else 'failed'} (MLflow run {report.run_id})"
    client.set_model_version_tag(settings.model_name, version, tag.SHADOW, verdict)
    if report.passed:
        if not decision.blessed:
            return decision
        return replace(decision, reasons=[*decision.reasons, report.summary()])
    return _refused(decision, [f"shadow v{version} vs v{champion}: {r}" for r in report.reasons])


def _refused(decision: GateDecision, failures: list[str]) -> GateDecision:
    before = [] if decision.blessed else decision.reasons
    return replace(decision, blessed=False, reasons=[*failures, *before])
