"""The monitoring decision: does what we see in production warrant retraining?

Inputs are the day's drift result (Evidently, see ``closedloop.core.drift``) and, where
ground truth has arrived, the champion's live performance. The decision is a typed
``Verdict`` with its numbers and reasons, recorded whether or not it triggers anything.

Guardrails:
* **cooldown** — no second drift retrain within ``cooldown_days`` of the last one,
  unless performance *collapsed* (a drop of at least ``collapse_drop``);
* **deduplication** — one verdict per model and day; the trigger carries a run id derived
  from that key, so a retried monitoring task can never start a second training run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa

#: when the drift report adds Evidently's own drift metrics (``DriftPolicy.full_report``)
FULL_REPORT = ("on_drift", "always")


@dataclass(frozen=True)
class MonitoringPolicy:
    drift_share_threshold: float = 0.3
    #: a live ROC AUC this far below the champion's holdout AUC is a performance drop
    performance_drop: float = 0.05
    #: ... and this far below is a collapse, which overrides the cooldown
    collapse_drop: float = 0.15
    min_labelled_rows: int = 200
    cooldown_days: int = 7
    #: a drift retrain waits until this many predictions made since the drift began have
    #: their outcome known: a model retrained before any outcome of the new regime is
    #: known learns the old one again (0: retrain on drift at once)
    drift_min_new_labels: int = 0
    #: when the drift report adds Evidently's full DataDriftPreset (every column's
    #: distributions) to the check's own statistics: "on_drift" or "always"
    drift_report: str = "on_drift"

    def __post_init__(self) -> None:
        if self.drift_report not in FULL_REPORT:
            raise ValueError(
                f"drift_report is one of {', '.join(FULL_REPORT)}, got {self.drift_report!r}"
            )


@dataclass(frozen=True)
class Verdict:
    model: str
    day: str  # the monitored day, YYYY-MM-DD
    drift_share: float
    drifted_columns: list[str]
    prediction_drift: bool | None
    live_auc: float | None
    reference_auc: float | None
    labelled_rows: int
    retrain: bool
    reasons: list[str]
    cooldown_until: str | None = None
    report: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: why a retrain is wanted: "drift" (data drift, with or without a performance drop)
    #: or "performance" (a drop without data drift); None when none is
    cause: str | None = None

    @property
    def trigger_run_id(self) -> str:
        """The training run this verdict may start; the same verdict, the same run id."""
        return f"retrain__{self.model}__{self.day}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        return cls(**d)


def decide(
    *,
    model: str,
    day: date,
    drift: dict[str, Any],
    live_auc: float | None,
    labelled_rows: int,
    reference_auc: float | None,
    last_retrain: date | None,
    policy: MonitoringPolicy,
    report: str | None = None,
    drift_since: date | None = None,
    new_labels: int | None = None,
) -> Verdict:
    """Judge one day. ``drift`` is a ``DriftResult.to_dict()``; ``last_retrain`` the day
    of the last retraining this monitoring triggered (for the cooldown); ``drift_since``
    the first day of the drift that is still going on and ``new_labels`` the outcomes
    known so far of predictions made since then (for the deferral)."""
    reasons: list[str] = []
    share = float(drift["drift_share"])
    drifted = share >= policy.drift_share_threshold
    if drifted:
        reasons.append(
            f"data drift: {share:.0%} of columns drifted (threshold "
            f"{policy.drift_share_threshold:.0%}): {', '.join(drift['drifted_columns'])}"
        )
    drop = None
    if live_auc is not None and reference_auc is not None:
        if labelled_rows >= policy.min_labelled_rows:
            drop = reference_auc - live_auc
            if drop >= policy.performance_drop:
                reasons.append(
                    f"performance drop: live ROC AUC {live_auc:.3f} vs {reference_auc:.3f} "
                    f"at training ({drop:+.3f} on {labelled_rows} labelled predictions)"
                )
        else:
            reasons.append(
                f"performance not judged: {labelled_rows} labelled predictions "
                f"(< {policy.min_labelled_rows})"
            )
    degraded = drop is not None and drop >= policy.performance_drop
    collapsed = drop is not None and drop >= policy.collapse_drop
    wants = drifted or degraded
    extra: dict[str, Any] = {}
    if drifted:
        extra = {"drift_since": (drift_since or day).isoformat(), "new_labels": new_labels or 0}
    if drifted and not degraded and (new_labels or 0) < policy.drift_min_new_labels:
        reasons.append(
            f"retrain deferred: {new_labels or 0} outcomes known of predictions made since "
            f"the drift began on {drift_since or day} (< {policy.drift_min_new_labels}); "
            "a model retrained now could not learn the new regime"
        )
        wants = False
    cooldown_until = None
    if wants and last_retrain is not None and not collapsed:
        until = last_retrain + timedelta(days=policy.cooldown_days)
        if day < until:
            cooldown_until = until.isoformat()
            reasons.append(f"cooldown: last retrain on {last_retrain}, none before {until}")
            wants = False
    if collapsed and last_retrain is not None:
        reasons.append("performance collapsed: the cooldown does not apply")
    if not reasons:
        reasons.append(f"no drift ({share:.0%} of columns) and no performance drop")
    return Verdict(
        model=model,
        day=day.isoformat(),
        drift_share=share,
        drifted_columns=list(drift["drifted_columns"]),
        prediction_drift=drift.get("prediction_drift"),
        live_auc=live_auc,
        reference_auc=reference_auc,
        labelled_rows=labelled_rows,
        retrain=wants,
        reasons=reasons,
        cooldown_until=cooldown_until,
        report=report,
        extra=extra,
        cause=("drift" if drifted else "performance") if wants else None,
    )


_METADATA = sa.MetaData()
DECISIONS = sa.Table(
    "closedloop_monitoring_decisions",
    _METADATA,
    sa.Column("model", sa.String(256), primary_key=True),
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("retrain", sa.Boolean, nullable=False),
    sa.Column("verdict", sa.Text, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)


class DecisionLog:
    """Every verdict, one per model and day (a rerun of the day replaces it)."""

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            from pathlib import Path

            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self._engine = sa.create_engine(url, future=True)
        _METADATA.create_all(self._engine, checkfirst=True)

    def record(self, verdict: Verdict) -> None:
        row = {
            "model": verdict.model,
            "day": verdict.day,
            "retrain": verdict.retrain,
            "verdict": json.dumps(verdict.to_dict(), sort_keys=True, default=str),
            "recorded_at": datetime.now(UTC),
        }
        key = (DECISIONS.c.model == verdict.model) & (DECISIONS.c.day == verdict.day)
        with self._engine.begin() as conn:
            conn.execute(DECISIONS.delete().where(key))
            conn.execute(DECISIONS.insert().values(**row))

    def verdicts(self, model: str) -> list[Verdict]:
        query = sa.select(DECISIONS.c.verdict).where(DECISIONS.c.model == model)
        with self._engine.connect() as conn:
            rows = conn.execute(query.order_by(DECISIONS.c.day)).scalars().all()
        return [Verdict.from_dict(json.loads(r)) for r in rows]

    def last_retrain(self, model: str, before: date) -> date | None:
        """The latest day before ``before`` whose verdict triggered a retrain."""
        query = (
            sa.select(sa.func.max(DECISIONS.c.day))
            .where(DECISIONS.c.model == model, DECISIONS.c.retrain.is_(True))
            .where(DECISIONS.c.day < before.isoformat())
        )
        with self._engine.connect() as conn:
            found = conn.scalar(query)
        return date.fromisoformat(found) if found else None

    def drift_since(self, model: str, day: date, threshold: float) -> date:
        """The first day of the unbroken run of drifted days (share >= ``threshold``)
        that ends the day before ``day``, or ``day`` itself if the day before was not
        drifted."""
        recorded = {v.day: v.drift_share for v in self.verdicts(model)}
        first = day
        while recorded.get((first - timedelta(days=1)).isoformat(), -1.0) >= threshold:
            first -= timedelta(days=1)
        return first

    def dispose(self) -> None:
        self._engine.dispose()
