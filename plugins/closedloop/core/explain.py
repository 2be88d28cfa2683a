"""Explain one prediction: walk it back to its origins (issue 17), reading only what the
stores hold — the prediction log, the offline store, MLflow and the promotion ledger.

:func:`explain` gives an :class:`Explanation`: the logged features (which were the
declared defaults: :mod:`closedloop.core.explain_sources`), the model version and the
alias it served under, its training run (data digest, window, GX verdict, feature
service, commit, parameters), the DAG runs that trained and promoted it, the feature
pipeline's runs that wrote the entity's features, each feature's contribution
(:mod:`closedloop.core.contributions`) and the ground truth once known.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pandas as pd

from closedloop.core import links
from closedloop.core import tags as tag
from closedloop.core.contributions import Contributions, contributions
from closedloop.core.explain_sources import (
    FeatureWrite,
    RunFinder,
    aggregate_writes,
    event_write,
    find_prediction,
    ground_truth,
    utc,
)

if TYPE_CHECKING:
    from closedloop.core.ledger import LedgerEntry
    from closedloop.core.settings import Settings

__all__ = ["Explanation", "FeatureValue", "RunRef", "UnknownPredictionError", "explain"]


class UnknownPredictionError(LookupError):
    """No record of the prediction id in the prediction log."""

    def __init__(self, prediction_id: str, where: str) -> None:
        super().__init__(f"no prediction {prediction_id!r} in the prediction log at {where}")
        self.prediction_id = prediction_id


@dataclass(frozen=True)
class FeatureValue:
    """One model input as logged, where it came from, and its share of the score."""

    name: str
    value: Any
    origin: str  # "event" (the event's own columns) or the aggregate view
    default: float | int | None  # the declared default, if any
    defaulted: bool | None  # None: the stores cannot tell
    contribution: float | None = None


@dataclass(frozen=True)
class RunRef:
    """An Airflow DAG run in the prediction's past."""

    role: str  # "training" | "promotion"
    dag_id: str | None
    run_id: str | None
    url: str | None
    detail: str = ""
    tasks: dict[str, str] = field(default_factory=dict)  # task id -> its page


@dataclass(frozen=True)
class Explanation:
    prediction_id: str
    usecase: str
    source: str
    predicted_at: str
    score: float
    decision: int
    entity: dict[str, Any]
    model: dict[str, Any]
    features: list[FeatureValue]
    contributions: Contributions
    training: dict[str, Any]
    dag_runs: list[RunRef]
    feature_writes: list[FeatureWrite]
    ground_truth: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["contributions"] = self.contributions.to_dict()
        return json.loads(json.dumps(out, default=str))

    def text(self) -> str:
        """The explanation for a person: one section per origin."""
        m, t, c = self.model, self.training, self.contributions
        lines = [
            f"prediction {self.prediction_id} ({self.usecase}, {self.source}, {self.predicted_at})",
            f"  score {self.score:.6f}  decision {self.decision}  threshold {m['threshold']}",
            f"  entity {', '.join(f'{k}={v}' for k, v in self.entity.items())}",
            f"model {m['name']} v{m['version']} as {m['arm']!r} (champion then, by the "
            f"ledger: {_v(m['champion_at_prediction'])})  {m['url']}",
            f"training run {t['run_id']} ({t['family']})  {t['url']}",
            f"  data digest {t['data_digest']}  window {t['window_start']} .. {t['window_end']}",
            f"  GX {t['gx_verdict']}  feature service {t['feature_service']} "
            f"(views {', '.join(t['feature_views'])})  commit {t['git_commit']}",
            "  params " + ", ".join(f"{k}={v}" for k, v in t["params"].items()),
            "DAG runs",
            *(f"  {r.role:<10} {r.dag_id} {r.run_id}  {r.detail}  {r.url}" for r in self.dag_runs),
            "feature writes",
            *(f"  {w.table} {w.key}={w.value}: {_write(w)}" for w in self.feature_writes),
        ]
        if c.method == "linear":
            lines.append(f"features (contributions to the log-odds {c.log_odds:.6f}, "
                         f"intercept {c.intercept:.6f})")  # fmt: skip
        elif c.method:
            base = f"from the training set's mean {c.intercept:.6f}"
            lines.append(f"features (contributions to the log-odds {c.log_odds:.6f} by "
                         f"{c.method}, {base})")  # fmt: skip
        else:
            lines.append(f"features (no contributions: {c.message})")
        for f in sorted(self.features, key=lambda f: -abs(f.contribution or 0.0)):
            share = f"{f.contribution:+.6f}" if f.contribution is not None else ""
            flag = {True: "default", False: "", None: "default?"}[f.defaulted]
            lines.append(f"  {f.name:<28} {_short(f.value):<20} {share:>11}  {flag}")
        g = self.ground_truth
        truth = f"label {g['label']} (known at {g['known_at']})" if g["known"] else g["note"]
        lines.append(f"ground truth: {truth}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# the fitted models, by registry and version (a version never changes once registered),
# and the background rows of their training sets
_MODELS: dict[tuple[str, ...], Any] = {}
_LOCK = threading.Lock()


def _fitted(settings: Settings, version: str) -> Any:
    from closedloop.core.registry import load_version

    key = (settings.mlflow_tracking_uri, settings.model_name, version)
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = load_version(settings, version)
            while len(_MODELS) > 8:
                del _MODELS[next(iter(_MODELS))]
        return _MODELS[key]


def _background(uri: str | None, inputs: list[str]) -> pd.DataFrame | None:
    """Rows of the training set snapshot the version was trained on (read once), or None
    when the run names none or it is gone."""
    from pathlib import Path

    from closedloop.core.contributions import BACKGROUND_ROWS

    if not uri or not inputs or not Path(uri).exists():
        return None
    key = ("background", uri, tuple(inputs))
    with _LOCK:
        if key not in _MODELS:
            frame = pd.read_parquet(uri, columns=inputs)
            if len(frame) > BACKGROUND_ROWS:
                frame = frame.sample(BACKGROUND_ROWS, random_state=0)
            _MODELS[key] = frame.reset_index(drop=True)
        return _MODELS[key]


def explain(
    settings: Settings,
    prediction_id: str,
    *,
    find_run: RunFinder | None = None,
    as_of: datetime | None = None,
) -> Explanation:
    """Walk ``prediction_id`` back to its origins (see the module).

    ``find_run(dag_id, interval_start)`` names the DAG run of a data interval where an
    adapter can ask Airflow; without it, the run id the schedule gives the interval.
    ``as_of`` (now by default) decides whether the outcome is known yet. Raises
    :class:`UnknownPredictionError` for an id the log does not hold.
    """
    from closedloop.core.registry import client_for

    usecase = settings.usecase
    record = find_prediction(settings.prediction_log_dir, prediction_id)
    if record is None:
        raise UnknownPredictionError(prediction_id, str(settings.prediction_log_dir))
    notes: list[str] = []
    at = utc(record["predicted_at"])
    name, version, arm = record["model_name"], str(record["model_version"]), record["arm"]
    client = client_for(settings)
    mv = client.get_model_version(name, version)
    run = client.get_run(mv.run_id)
    run_tags = run.data.tags

    model = _fitted(settings, version)
    inputs = [str(c) for c in getattr(model, "feature_names_in_", [])]
    background = _background(run_tags.get(f"{tag.PREFIX}training_set_uri"), inputs)
    row = pd.DataFrame([{c: record.get(c) for c in inputs}])
    explained = contributions(model, row, background)
    rescored = float(model.predict_proba(row)[0, 1])
    if abs(rescored - float(record["score"])) > 1e-9:
        logged = float(record["score"])
        notes.append(f"the model scores the logged features {rescored:.6f}, the log {logged:.6f}")

    writes = aggregate_writes(settings, record, at, find_run)
    if record["source"] == "batch":
        writes.insert(0, event_write(settings, record, at, find_run))
    defaulted = {f: w.defaulted.get(f) for w in writes for f in w.defaulted}
    owner = {f: n for n, aggs in usecase.features.aggregations.items() for f in aggs}
    features = [
        FeatureValue(
            name=c,
            value=record.get(c),
            origin=usecase.aggregate_tables[owner[c]] if c in owner else "event",
            default=usecase.defaults.get(c),
            defaulted=defaulted.get(c) if c in owner else False,
            contribution=explained.by_feature.get(c),
        )
        for c in inputs
    ]
    history = _ledger(settings)
    promotion = _promotion(history, version, arm, at)
    champion_then = _champion_at(history, at)
    if champion_then is None:
        notes.append(
            f"the ledger has no champion move before {at.isoformat()} (a batch record's time "
            "is its event's time; replayed events can predate the ledger)"
        )
    summary = json.loads(run_tags.get(tag.SUMMARY, "{}"))
    views = run_tags.get(f"{tag.PREFIX}feature_views", "")
    training = {
        "run_id": mv.run_id,
        "url": links.mlflow_run(settings, run.info.experiment_id, mv.run_id),
        "family": summary.get("family") or mv.tags.get(tag.FAMILY),
        "data_digest": run_tags.get(tag.DATA_DIGEST),
        "window_start": run_tags.get(tag.WINDOW_START),
        "window_end": run_tags.get(tag.WINDOW_END),
        "gx_verdict": run_tags.get(f"{tag.PREFIX}gx_verdict"),
        "feature_service": run_tags.get(f"{tag.PREFIX}feature_service"),
        "feature_views": [v for v in views.split(",") if v],
        "git_commit": run_tags.get(tag.GIT_COMMIT),
        "training_set_uri": run_tags.get(f"{tag.PREFIX}training_set_uri"),
        "trigger_reason": run_tags.get(f"{tag.PREFIX}trigger_reason"),
        "params": dict(sorted(run.data.params.items())),
        "holdout_metrics": summary.get("metrics", {}),
    }
    trained_by = (run_tags.get(f"{tag.PREFIX}dag_id"), run_tags.get(tag.DAG_RUN_ID))
    built = ("build_training_set", "validate_training_set", "train", "register")
    dag_runs = [_run_ref(settings, "training", *trained_by, training["trigger_reason"], built)]
    if promotion is not None:
        why = f"{promotion.action} to {promotion.alias}: {promotion.reason}"
        ref = _run_ref(settings, "promotion", promotion.dag_id, promotion.run_id, why, ("gate",))
        dag_runs.append(ref)
    else:
        notes.append(f"the ledger records no move of v{version} to {arm!r}")
    keys = usecase.entity_keys
    return Explanation(
        prediction_id=prediction_id,
        usecase=usecase.name,
        source=str(record["source"]),
        predicted_at=at.isoformat(),
        score=float(record["score"]),
        decision=int(record["decision"]),
        entity={k: record.get(k) for k in keys},
        model={
            "name": name,
            "version": version,
            "arm": arm,
            "threshold": _float(run_tags.get(tag.THRESHOLD)),
            "url": links.mlflow_model_version(settings, name, version),
            "champion_at_prediction": champion_then,
            "promoted_at": promotion.at.isoformat() if promotion else None,
            "rescored": rescored,
        },
        features=features,
        contributions=explained,
        training=training,
        dag_runs=dag_runs,
        feature_writes=writes,
        ground_truth=ground_truth(settings, record, as_of or datetime.now(UTC)),
        notes=notes,
    )


def _float(value: str | None) -> float | None:
    return float(value) if value is not None else None


def _ledger(settings: Settings) -> list[LedgerEntry]:
    from closedloop.core.ledger import read_history

    return read_history(settings.closedloop_db, settings.model_name)


def _promotion(history: list[LedgerEntry], version: str, arm: str, at: datetime) -> Any:
    """The move that gave ``version`` the alias ``arm``: the latest one by the
    prediction's time, else (a replayed event older than the ledger) the first one."""
    actions = ("promote", "rollback", "challenger")
    arm = "challenger" if arm == "shadow" else arm  # `serve --shadow` scores the challenger
    moves = [e for e in history if (e.version, e.alias) == (version, arm) and e.action in actions]
    before = [e for e in moves if e.at <= at]
    return before[-1] if before else (moves[0] if moves else None)


def _champion_at(history: list[LedgerEntry], at: datetime) -> str | None:
    """The version ``champion`` pointed at, at ``at``, by the ledger's moves (a move made
    outside closedloop included, as the ledger recorded it)."""
    from closedloop.core.alias_watch import expected_aliases
    from closedloop.core.registry import CHAMPION

    return expected_aliases([entry for entry in history if entry.at <= at])[CHAMPION]


def _run_ref(
    settings: Settings,
    role: str,
    dag_id: str | None,
    run_id: str | None,
    detail: str | None,
    tasks: tuple[str, ...] = (),
) -> RunRef:
    if not (dag_id and run_id):
        return RunRef(role, dag_id, run_id, None, detail or "")
    pages = {t: links.airflow_task(settings, dag_id, run_id, t) for t in tasks}
    return RunRef(role, dag_id, run_id, links.airflow_dag_run(settings, dag_id, run_id),
                  detail or "", pages)  # fmt: skip


def _v(version: str | None) -> str:
    return f"v{version}" if version else "none recorded"


def _short(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _write(w: FeatureWrite) -> str:
    if w.stamped_at is None:
        return w.note
    how = "" if w.resolved else " (the id the schedule gives the interval)"
    return f"row stamped {w.stamped_at}, partition {w.interval}, by {w.dag_id} {w.run_id}{how}"
