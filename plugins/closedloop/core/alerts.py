"""Alerts: what an operator of the loop must hear about.

An :class:`Alert` names the use case, the event (one of :data:`ALERT_EVENTS`), a one-line
title, the reason and the link to the evidence (built by :mod:`closedloop.core.links`),
and where in Airflow it happened. Its message (:meth:`Alert.message`) is a flat JSON
object whose ``text`` is a sentence a chat tool's incoming webhook shows as it is; the
other fields are for any other receiver (``id`` lets one drop a repeat). The functions
below build the alert of each event from a task's outcome; delivery, retries and the
outbox are :mod:`closedloop.core.alert_delivery`.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from closedloop.core import links
from closedloop.core.settings import ALERT_EVENTS, Settings

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from closedloop.core.ledger import LedgerEntry

log = logging.getLogger(__name__)

__all__ = [
    "ALERT_EVENTS",
    "Alert",
    "approval_waiting",
    "gate_alert",
    "out_of_band",
    "quarantined",
    "task_failed",
    "verdict_alerts",
]

#: how each event reads in a message
EVENT_LABELS: dict[str, str] = {
    "quarantined": "batch quarantined",
    "drift": "data drift",
    "performance": "performance drop",
    "retraining": "retraining triggered",
    "promoted": "model promoted",
    "rejected": "model rejected",
    "approval_waiting": "approval waiting",
    "task_failed": "task failed",
    "out_of_band": "alias moved outside closedloop",
}
assert set(EVENT_LABELS) == set(ALERT_EVENTS)

#: the longest reason a message's ``text`` carries (the field ``reason`` is whole)
TEXT_REASON_CHARS = 1000
#: version of the message's shape
MESSAGE_SCHEMA = 1


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@dataclass(frozen=True)
class Alert:
    """One thing an operator of the loop must hear about."""

    usecase: str
    event: str  # one of ALERT_EVENTS
    title: str  # one line
    reason: str
    link: str | None  # the evidence
    dag_id: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    time: str = field(default_factory=now_iso)
    #: unique per alert: a receiver drops a message whose id it has seen
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        if self.event not in ALERT_EVENTS:
            raise ValueError(f"unknown alert event {self.event!r}; one of {ALERT_EVENTS}")
        object.__setattr__(self, "title", _one_line(self.title))

    @property
    def text(self) -> str:
        """The sentence a chat tool shows: use case, event, title, reason, link."""
        reason = _one_line(self.reason)
        if len(reason) > TEXT_REASON_CHARS:
            reason = reason[: TEXT_REASON_CHARS - 1] + "…"
        sentence = f"[closedloop] {self.usecase}: {EVENT_LABELS[self.event]} — {self.title}."
        if reason:
            sentence += f" Why: {reason}"
        if self.link:
            sentence += f" Evidence: {self.link}"
        return sentence

    def message(self) -> dict[str, Any]:
        """The JSON object POSTed to a webhook."""
        return {
            "text": self.text,
            **asdict(self),
            "source": "closedloop",
            "schema": MESSAGE_SCHEMA,
        }


# -- the alerts of the loop's events (pure: settings and payloads in) ---------------


def quarantined(
    settings: Settings,
    key: str,
    report: Path,
    summary: str,
    *,
    dag_id: str | None = None,
    run_id: str | None = None,
    task_id: str | None = None,
) -> Alert:
    """A batch blocked by the validation gate; links its quarantine report."""
    return Alert(
        usecase=settings.usecase.name,
        event="quarantined",
        title=f"batch {key} failed validation and was quarantined",
        reason=summary,
        link=_file_link(settings, report),
        dag_id=dag_id,
        run_id=run_id,
        task_id=task_id,
    )


def verdict_alerts(
    settings: Settings,
    verdict: Mapping[str, Any],
    *,
    dag_id: str | None = None,
    run_id: str | None = None,
    task_id: str | None = None,
) -> list[Alert]:
    """A monitoring verdict (``Verdict.to_dict()`` with ``trigger_run_id``): none unless
    it says retrain; then its cause (``drift`` or ``performance``, linking the day's
    report) and ``retraining`` (linking the training run it starts)."""
    if not verdict.get("retrain"):
        return []
    usecase = settings.usecase
    cause = verdict.get("cause") if verdict.get("cause") in ("drift", "performance") else "drift"
    reasons = "; ".join(verdict.get("reasons") or [])
    day = verdict.get("day", "?")
    report = verdict.get("report")
    where = {"dag_id": dag_id, "run_id": run_id, "task_id": task_id}
    found = Alert(
        usecase=usecase.name,
        event=cause,
        title=(
            f"the champion's inputs drifted on {day}"
            if cause == "drift"
            else f"the champion's live performance dropped on {day}"
        ),
        reason=reasons,
        link=_file_link(settings, report) if report else links.view(settings, usecase.name),
        **where,
    )
    training = usecase.dag_ids["training"]
    trigger_run_id = verdict.get("trigger_run_id")
    retraining = Alert(
        usecase=usecase.name,
        event="retraining",
        title=f"{training} triggered ({cause}) as run {trigger_run_id}",
        reason=reasons,
        link=(
            links.airflow_dag_run(settings, training, trigger_run_id)
            if trigger_run_id
            else links.view(settings, usecase.name)
        ),
        **where,
    )
    return [found, retraining]


def gate_alert(
    settings: Settings,
    outcome: Mapping[str, Any],
    *,
    dag_id: str | None = None,
    run_id: str | None = None,
    task_id: str | None = None,
) -> Alert | None:
    """The gate's outcome (``GateOutcome.to_dict()``, or an approval's answer): ``promoted``
    or, for a version left as the challenger or rejected by a person, ``rejected``; linking
    the model version. None for another action (``awaiting_approval``: the approval task
    alerts ``approval_waiting``)."""
    actions = {"promoted": "promoted", "challenger": "rejected", "rejected": "rejected"}
    event = actions.get(str(outcome.get("action")))
    if event is None:
        return None
    model, version = settings.model_name, str(outcome.get("version"))
    champion = outcome.get("champion_version")
    if event == "promoted":
        title = f"{model} v{version} is the champion" + (
            f" (replacing v{champion})" if champion and champion != version else ""
        )
    else:
        title = f"{model} v{version} was not promoted" + (
            f": v{champion} stays the champion" if champion else ""
        )
    return Alert(
        usecase=settings.usecase.name,
        event=event,
        title=title,
        reason="; ".join(outcome.get("reasons") or []),
        link=links.mlflow_model_version(settings, model, version),
        dag_id=dag_id,
        run_id=run_id,
        task_id=task_id,
    )


def task_failed(
    settings: Settings, dag_id: str, run_id: str, task_id: str, error: str | None
) -> Alert:
    """A task that failed for good (its retries spent, or a decision); links the task."""
    return Alert(
        usecase=settings.usecase.name,
        event="task_failed",
        title=f"{dag_id}.{task_id} failed in run {run_id}",
        reason=error or "no error was recorded",
        link=links.airflow_task(settings, dag_id, run_id, task_id),
        dag_id=dag_id,
        run_id=run_id,
        task_id=task_id,
    )


def approval_waiting(
    settings: Settings,
    subject: str,
    body: str | None,
    link: str,
    *,
    dag_id: str | None = None,
    run_id: str | None = None,
    task_id: str | None = None,
) -> Alert:
    """A person must approve or reject; links the task's required-actions page."""
    return Alert(
        usecase=settings.usecase.name,
        event="approval_waiting",
        title=f"approval needed: {subject}",
        reason=body or subject,
        link=link,
        dag_id=dag_id,
        run_id=run_id,
        task_id=task_id,
    )


def out_of_band(settings: Settings, entry: LedgerEntry) -> Alert:
    """An alias moved by someone or something other than closedloop (its ledger entry,
    :mod:`closedloop.core.alias_watch`); links the version it points at now."""
    model, alias = entry.model, entry.alias
    was = f"v{entry.from_version}" if entry.from_version else "none"
    now_at = f"v{entry.version}" if entry.version else "none"
    return Alert(
        usecase=settings.usecase.name,
        event="out_of_band",
        title=f"{alias} of {model} moved outside closedloop: {was} -> {now_at}",
        reason=entry.reason,
        link=links.mlflow_model_version(settings, model, entry.version) if entry.version else None,
    )


def _file_link(settings: Settings, path: Path | str) -> str:
    """The served URL of an evidence file; a file the view does not serve (it never
    should) still gets a link, to the closedloop view."""
    try:
        return links.file_url(settings, path)
    except ValueError:
        log.warning("alert evidence %s is not served by the closedloop view", path)
        return links.view(settings, settings.usecase.name)
