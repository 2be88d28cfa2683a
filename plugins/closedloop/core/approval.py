"""Human approval of a promotion (``model.gate.approval: required``).

A candidate the automatic gate blessed is *held*: it gets no alias, its version is tagged
``closedloop.approval = pending``, and the gate's outcome says ``awaiting_approval``. A
person then answers (in Airflow: :class:`closedloop.operators.approval.PromotionApprovalOperator`):

* approve: the aliases move as the gate decided, the ledger's ``promote`` entry names who;
* reject, or no answer in time: the champion stays; a ``rejected`` ledger entry names who
  and why (``expired`` when nobody answered).

Each DAG run resolves its candidate once: :func:`resolution` finds an earlier answer in
the ledger, so a retry or a rerun neither asks again nor moves an alias twice. A champion
that changed while the candidate waited makes the approval stale: it is recorded as a
rejection, since the gate compared the candidate with another model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from closedloop.core import tags as tag
from closedloop.core.ledger import LedgerEntry, PromotionLedger, now
from closedloop.core.payloads import GateOutcome

if TYPE_CHECKING:
    from closedloop.core.gate import GateDecision
    from closedloop.core.settings import Settings

AWAITING = "awaiting_approval"
REJECTED = "rejected"
PROMOTED = "promoted"


def resolution(settings: Settings, version: str, run_id: str) -> str | None:
    """``promoted`` or ``rejected`` if this DAG run's candidate was answered, else None."""
    ledger = PromotionLedger(settings.closedloop_db)
    try:
        history = ledger.history(settings.model_name)
    finally:
        ledger.dispose()
    for entry in reversed(history):
        if entry.version == version and entry.run_id == run_id:
            if entry.action == "promote":
                return PROMOTED
            if entry.action == REJECTED:
                return REJECTED
    return None


def hold_for_approval(
    settings: Settings, version: str, decision: GateDecision, *, dag_id: str, run_id: str
) -> GateOutcome:
    """What the gate does with a blessed candidate that needs a person's approval."""
    from closedloop.core.registry import client_for

    done = resolution(settings, version, run_id)
    if done is not None:  # a rerun of a run already answered
        return GateOutcome(version, done, decision)
    client = client_for(settings)
    client.set_model_version_tag(settings.model_name, version, tag.GATE, decision.summary()[:4900])
    client.set_model_version_tag(settings.model_name, version, tag.APPROVAL, "pending")
    return GateOutcome(version, AWAITING, decision)


def resolve(
    settings: Settings,
    outcome: GateOutcome,
    *,
    approved: bool,
    by: str | None,
    note: str = "",
    dag_id: str,
    run_id: str,
) -> str:
    """Apply a person's answer to a held candidate (``by`` None: nobody answered in time);
    returns ``promoted`` or ``rejected``. Idempotent per ``run_id``."""
    from closedloop.core.registry import CHAMPION, alias_version, apply_decision, client_for

    done = resolution(settings, outcome.version, run_id)
    if done is not None:
        return done
    model, version = settings.model_name, outcome.version
    client = client_for(settings)
    current = alias_version(client, model, CHAMPION)
    stale = current not in (outcome.decision.champion_version, version)
    ledger = PromotionLedger(settings.closedloop_db)
    try:
        if approved and not stale:
            approval = f"approved by {by}" + (f": {note}" if note else "")
            apply_decision(
                client,
                ledger,
                model,
                version,
                outcome.decision,
                dag_id=dag_id,
                run_id=run_id,
                note=approval,
                actor=f"user:{by}",
            )
            client.set_model_version_tag(model, version, tag.APPROVAL, approval[:4900])
            return PROMOTED
        if stale:
            reason = (
                f"stale: the champion moved to v{current} while v{version} waited "
                f"(the gate compared it with v{outcome.decision.champion_version})"
            )
        elif by is None:
            reason = "expired: nobody answered in time"
        else:
            reason = f"rejected by {by}" + (f": {note}" if note else "")
        client.set_model_version_tag(model, version, tag.BLESSED, "false")
        client.set_model_version_tag(model, version, tag.REJECTION_REASON, reason[:4900])
        client.set_model_version_tag(model, version, tag.APPROVAL, reason[:4900])
        ledger.append(
            LedgerEntry(
                model,
                CHAMPION,
                version,
                current,
                REJECTED,
                reason,
                {"candidate": outcome.decision.candidate, "champion": outcome.decision.champion},
                dag_id,
                run_id,
                now(),
                f"user:{by}" if by else f"dag:{dag_id}",
            )
        )
        return REJECTED
    finally:
        ledger.dispose()


def evidence(settings: Settings, outcome: GateOutcome) -> str:
    """The gate's evidence as Markdown, for the person who decides: metrics side by side,
    the segments, and links to the candidate and the champion."""
    from closedloop.core import links

    decision = outcome.decision
    model = settings.model_name
    champion = decision.champion or {}
    head = [
        f"The automatic gate blessed **{model} v{outcome.version}**:",
        "",
        *(f"- {reason}" for reason in decision.reasons),
        "",
    ]
    rows = ["| metric | candidate | champion |", "| --- | ---: | ---: |"]
    overall = sorted(k for k in decision.candidate if "." not in k)
    segments = sorted(k for k in decision.candidate if "." in k and not k.startswith("rows."))
    for key in overall:
        rows.append(f"| {key} | {_num(decision.candidate.get(key))} | {_num(champion.get(key))} |")
    seg_rows = ["| segment | candidate | champion |", "| --- | ---: | ---: |"]
    for key in segments:
        seg_rows.append(
            f"| {key} | {_num(decision.candidate.get(key))} | {_num(champion.get(key))} |"
        )
    champ = decision.champion_version
    candidate_page = links.mlflow_model_version(settings, model, outcome.version)
    link_lines = [f"- [candidate v{outcome.version} in MLflow]({candidate_page})"]
    if champ:
        champion_page = links.mlflow_model_version(settings, model, champ)
        link_lines.append(f"- [champion v{champ} in MLflow]({champion_page})")
    else:
        link_lines.append("- no champion yet: the first model, judged against the floors")
    link_lines.append(f"- [closedloop view]({links.view(settings, settings.usecase.name)})")
    parts = [*head, *rows]
    if segments:
        parts += ["", "Segments:", "", *seg_rows]
    parts += ["", "**Approve** makes it `champion`; **Reject** leaves the champion as it is.", ""]
    return "\n".join([*parts, *link_lines])


def _num(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 2 and float(value).is_integer() else f"{value:.4f}"
