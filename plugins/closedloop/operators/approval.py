"""Human approval before promotion: Airflow's ``ApprovalOperator`` on the gate's outcome.

The task waits in Airflow's ``awaiting_input`` state with the gate's evidence as its body
(Browse → Required Actions, or ``PATCH .../hitlDetails`` over REST); the answer goes to
:func:`closedloop.core.approval.resolve`, which moves the aliases or records the
rejection. The default answer is Reject, taken when ``response_timeout`` passes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param

from closedloop.core.payloads import GateOutcome
from closedloop.operators.base import ClosedLoopOperator
from closedloop.operators.links import ModelVersionLink

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

    from closedloop.core.settings import Settings


#: the answer's one field: why (optional)
REASON = "reason"


class PromotionApprovalOperator(ClosedLoopOperator, ApprovalOperator):
    """Ask a person to approve the candidate the gate held, then act on the answer.

    :param outcome: the gate task's XCom (templated): a ``GateOutcome`` whose action is
        ``awaiting_approval``.
    Other arguments are ``ApprovalOperator``'s (``response_timeout``, ``assigned_users``,
    ``notifiers``); ``subject`` and ``body`` are written from the outcome.
    """

    template_fields: Sequence[str] = (
        *ClosedLoopOperator.template_fields,
        "outcome",
        "subject",
        "body",
    )
    operator_extra_links = (*ClosedLoopOperator.operator_extra_links, ModelVersionLink())

    def __init__(self, *, outcome: Any, **kwargs: Any) -> None:
        kwargs.setdefault("subject", "Promote the candidate the gate blessed?")
        kwargs.setdefault("defaults", ApprovalOperator.REJECT)
        kwargs.setdefault(
            "params",
            {REASON: Param("", type="string", title="Why (kept in the promotion ledger)")},
        )
        super().__init__(**kwargs)
        self.outcome = outcome

    def _held(self) -> GateOutcome:
        return GateOutcome.from_dict(self.outcome)

    def _link_version(self, settings: Settings, held: GateOutcome) -> None:
        from closedloop.core import links

        page = links.mlflow_model_version(settings, settings.model_name, held.version)
        self.add_link(ModelVersionLink.name, page)

    def execute(self, context: Context) -> Any:
        from closedloop.core.approval import evidence, resolution

        settings = self.settings()
        held = self._held()
        self._link_version(settings, held)
        done = resolution(settings, held.version, context["run_id"])
        if done is not None:  # a retry or rerun of an answered request: never ask twice
            self.log.info("v%s was %s by an earlier attempt of this run", held.version, done)
            return {"action": done, "version": held.version}
        self.subject = f"Promote {settings.model_name} v{held.version} to champion?"
        self.body = evidence(settings, held)
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        from closedloop.core.approval import resolve

        answer = super().execute_complete(context, event)
        settings = self.settings()
        held = self._held()
        self._link_version(settings, held)
        user = event.get("responded_by_user") or None
        by = None if event.get("timedout") or not user else (user.get("name") or user.get("id"))
        action = resolve(
            settings,
            held,
            approved=answer["chosen_options"] == [self.APPROVE],
            by=by,
            note=str((answer.get("params_input") or {}).get(REASON) or "").strip(),
            dag_id=context["dag"].dag_id,
            run_id=context["run_id"],
        )
        self.log.info("v%s %s (answered by %s)", held.version, action, by or "nobody: expired")
        return {
            "action": action,
            "version": held.version,
            "chosen_options": list(answer["chosen_options"]),
            "responded_by": by,
            "responded_at": str(event.get("responded_at") or ""),
        }
