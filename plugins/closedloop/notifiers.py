"""The loop's alerts as an Airflow notifier: :class:`ClosedLoopNotifier` turns a task's
outcome into :class:`~closedloop.core.alerts.Alert` s and delivers them
(:func:`closedloop.core.alert_delivery.deliver`: webhooks, retries, the outbox), then, when
configured and their provider is installed, through Airflow's own ``SlackWebhookNotifier``
and ``SmtpNotifier``.

The DAG factory attaches it to every task of every use case (``on_success_callback`` and
``on_failure_callback``). Callbacks run in the worker after the task, the failure one
only once the task has failed for good (its retries spent):

* a task that failed for good → ``task_failed`` (linking the task), except a batch blocked
  by the validation gate (``DataQualityGateFailed`` with the quarantined batch's
  ``validation`` XCom), which is one ``quarantined`` alert linking its quarantine report;
* a success → whatever :data:`SUCCESS_ALERTS` says for the task's operator class (the
  monitoring verdict: ``drift``/``performance`` and ``retraining``; the promotion gate:
  ``promoted``/``rejected``), nothing for the others.

:func:`approval_notifier` is the notifier an approval task (a ``HITLOperator``) passes as
``notifiers=[...]``: it sends ``approval_waiting`` with the link to the task's
required-actions page.

A notifier never fails the task it reports on: anything that goes wrong is logged with
its exception (Airflow's task runner would log a raising callback too, but a notifier
that a ``HITLOperator`` calls from ``execute`` would fail the task).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseNotifier

from closedloop.core import alert_delivery, alerts, links
from closedloop.core.settings import load_settings
from closedloop.operators.approval import PromotionApprovalOperator
from closedloop.operators.base import ClosedLoopOperator, DataQualityGateFailed
from closedloop.operators.monitoring import MonitoringDecisionOperator
from closedloop.operators.training import PromotionGateOperator

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow.sdk import Context

    from closedloop.core.alerts import Alert
    from closedloop.core.settings import Settings

log = logging.getLogger(__name__)

#: the longest error a ``task_failed`` alert quotes
ERROR_CHARS = 2000


def _where(context: Context) -> dict[str, Any]:
    ti = context.get("ti") or context.get("task_instance")
    dag = context.get("dag")
    return {
        "dag_id": getattr(ti, "dag_id", None) or getattr(dag, "dag_id", None),
        "run_id": context.get("run_id") or getattr(ti, "run_id", None),
        "task_id": getattr(ti, "task_id", None),
    }


def _return_value(context: Context) -> Any:
    ti = context["ti"]
    return ti.xcom_pull(task_ids=ti.task_id)


def verdict_alerts(settings: Settings, context: Context) -> list[Alert]:
    """The monitoring verdict (the decide task's XCom): nothing unless it says retrain."""
    verdict = _return_value(context)
    if not isinstance(verdict, dict):
        return []
    return alerts.verdict_alerts(settings, verdict, **_where(context))


def gate_alerts(settings: Settings, context: Context) -> list[Alert]:
    """The gate's outcome (its XCom, ``GateOutcome.to_dict()``): promoted or rejected."""
    outcome = _return_value(context)
    if not isinstance(outcome, dict):
        return []
    found = alerts.gate_alert(settings, outcome, **_where(context))
    return [found] if found else []


def approval_answer_alerts(settings: Settings, context: Context) -> list[Alert]:
    """A person's answer to a promotion request (or its expiry): promoted or rejected."""
    answer = _return_value(context)
    # without chosen_options an earlier attempt had the answer, and alerted it
    if not isinstance(answer, dict) or not answer.get("chosen_options"):
        return []
    by = answer.get("responded_by")
    why = f"{answer.get('action')} by {by}" if by else "the request expired unanswered"
    found = alerts.gate_alert(settings, {**answer, "reasons": [why]}, **_where(context))
    return [found] if found else []


#: operator class -> the alerts a success of its task produces (looked up along the
#: task's class hierarchy, so a subclass alerts like its base)
SUCCESS_ALERTS: dict[type, Callable[[Settings, Context], list[Alert]]] = {
    MonitoringDecisionOperator: verdict_alerts,
    PromotionGateOperator: gate_alerts,
    PromotionApprovalOperator: approval_answer_alerts,
}


def success_alerts(settings: Settings, context: Context) -> list[Alert]:
    for cls in type(context.get("task")).__mro__:
        if cls in SUCCESS_ALERTS:
            return SUCCESS_ALERTS[cls](settings, context)
    return []


def quarantine_alert(settings: Settings, context: Context) -> Alert | None:
    """The ``quarantined`` alert of a batch the validation gate blocked, or None when
    the failure is not one (a training set that failed validation is not quarantined)."""
    if not isinstance(context.get("exception"), DataQualityGateFailed):
        return None
    ti = context["ti"]
    result = ti.xcom_pull(task_ids=ti.task_id, key="validation")
    start = context.get("data_interval_start")
    if not isinstance(result, dict) or result.get("subject", "batch") != "batch" or not start:
        return None
    from closedloop.core.quarantine import REPORT

    key = settings.usecase.interval_key(datetime.fromisoformat(start.isoformat()))
    report = settings.quarantine_dir / key / REPORT
    if not report.is_file():
        return None
    summary = json.loads(report.read_text()).get("summary") or str(context["exception"])
    return alerts.quarantined(settings, key, report, summary, **_where(context))


def failure_alerts(settings: Settings, context: Context) -> list[Alert]:
    """One alert for a task that failed for good: ``quarantined`` or ``task_failed``."""
    quarantined = quarantine_alert(settings, context)
    if quarantined is not None:
        return [quarantined]
    where = _where(context)
    exc = context.get("exception")
    error = f"{type(exc).__name__}: {exc}" if exc is not None else None
    if error and len(error) > ERROR_CHARS:
        error = error[: ERROR_CHARS - 1] + "…"
    return [alerts.task_failed(settings, where["dag_id"], where["run_id"], where["task_id"], error)]


def approval_alerts(settings: Settings, context: Context) -> list[Alert]:
    """``approval_waiting`` for a Human-in-the-loop task, linking its required-actions
    page (the task's page if that cannot be built)."""
    where = _where(context)
    task = context.get("task")
    try:
        from airflow.providers.standard.operators.hitl import HITLOperator

        link = HITLOperator.generate_link_to_ui_from_context(
            context=context, base_url=settings.airflow_public_url
        )
    except Exception as exc:
        log.warning("no required-actions link for %s (%s): linking the task", where, exc)
        link = links.airflow_task(settings, where["dag_id"], where["run_id"], where["task_id"])
    subject = str(getattr(task, "subject", None) or f"{where['dag_id']}.{where['task_id']}")
    body = getattr(task, "body", None)
    return [alerts.approval_waiting(settings, subject, body, link, **where)]


OUTCOMES: dict[str, Callable[[Settings, Context], list[Alert]]] = {
    "success": success_alerts,
    "failure": failure_alerts,
    "approval": approval_alerts,
}


class ClosedLoopNotifier(BaseNotifier):
    """Alerts for a task's outcome (see the module docstring).

    :param on: which outcome this instance reports: ``success`` (an
        ``on_success_callback``), ``failure`` (an ``on_failure_callback``) or ``approval``
        (a ``HITLOperator``'s ``notifiers``).
    :param usecase_file: the use case of a task that is not a closedloop operator (a
        closedloop operator's own settings are used otherwise).
    """

    def __init__(
        self,
        *,
        on: Literal["success", "failure", "approval"],
        usecase_file: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if on not in OUTCOMES:
            raise ValueError(f"on={on!r}: one of {sorted(OUTCOMES)}")
        self.on = on
        self.usecase_file = usecase_file

    def settings(self, context: Context) -> Settings:
        task = context.get("task")
        if isinstance(task, ClosedLoopOperator):
            return task.settings()
        return load_settings(**({"usecase_file": self.usecase_file} if self.usecase_file else {}))

    def notify(self, context: Context) -> None:
        try:
            settings = self.settings(context)
            found = OUTCOMES[self.on](settings, context)
        except Exception:
            self.log.exception(
                "closedloop alerts: the %s alerts of %s could not be made", self.on, _where(context)
            )
            return
        for alert in found:
            self.send(alert, settings, context)

    def send(self, alert: Alert, settings: Settings, context: Context) -> None:
        """Deliver one alert: the webhooks (with the outbox), then Airflow's notifiers."""
        if not alert_delivery.wanted(alert, settings.alerts):
            return
        try:
            delivery = alert_delivery.deliver(alert, settings)
            self.log.info(
                "closedloop alert %s (%s): sent to %s, queued for %s%s",
                alert.event,
                alert.link,
                delivery.sent or "-",
                delivery.queued or "-",
                f" ({delivery.skipped})" if delivery.skipped else "",
            )
        except Exception:  # deliver() does not raise; this is the belt to its braces
            self.log.exception("closedloop alert %s could not be delivered", alert.event)
        for notifier in airflow_notifiers(alert, settings):
            try:
                notifier.notify(context)
            except Exception:
                self.log.exception(
                    "closedloop alert %s: %s failed", alert.event, type(notifier).__name__
                )


def airflow_notifiers(alert: Alert, settings: Settings) -> list[BaseNotifier]:
    """Airflow's Slack and SMTP notifiers for ``alert``, as configured (``alerts.
    slack_webhook_conn_id``, ``alerts.smtp_conn_id`` and ``smtp_to``), each only when its
    provider is installed."""
    config = settings.alerts
    found: list[BaseNotifier] = []
    if config.slack_webhook_conn_id:
        try:
            from airflow.providers.slack.notifications.slack_webhook import (
                SlackWebhookNotifier,
            )
        except ImportError:
            log.warning(
                "alerts.slack_webhook_conn_id is set but apache-airflow-providers-slack "
                "is not installed: no Slack message"
            )
        else:
            found.append(
                SlackWebhookNotifier(
                    slack_webhook_conn_id=config.slack_webhook_conn_id, text=alert.text
                )
            )
    if config.smtp_conn_id:
        try:
            from airflow.providers.smtp.notifications.smtp import SmtpNotifier
        except ImportError:
            log.warning(
                "alerts.smtp_conn_id is set but apache-airflow-providers-smtp is not "
                "installed: no e-mail"
            )
        else:
            if not config.smtp_to:
                log.warning("alerts.smtp_conn_id is set but alerts.smtp_to is empty")
            else:
                found.append(
                    SmtpNotifier(
                        to=config.smtp_to,
                        smtp_conn_id=config.smtp_conn_id,
                        subject=f"[closedloop] {alert.usecase}: {alerts.EVENT_LABELS[alert.event]}",
                        html_content=_html(alert),
                    )
                )
    return found


def _html(alert: Alert) -> str:
    from html import escape

    link = f'<p><a href="{escape(alert.link)}">{escape(alert.link)}</a></p>' if alert.link else ""
    return (
        f"<p><b>{escape(alert.title)}</b></p><p>{escape(alert.reason)}</p>{link}"
        f"<p>{escape(str(alert.dag_id))} / {escape(str(alert.run_id))} / "
        f"{escape(str(alert.task_id))} at {escape(alert.time)}</p>"
    )


def task_callbacks(usecase_file: str | None = None) -> dict[str, ClosedLoopNotifier]:
    """The ``default_args`` that attach the alerts to every task of a DAG."""
    return {
        "on_success_callback": ClosedLoopNotifier(on="success", usecase_file=usecase_file),
        "on_failure_callback": ClosedLoopNotifier(on="failure", usecase_file=usecase_file),
    }


def approval_notifier(usecase_file: str | None = None) -> ClosedLoopNotifier:
    """For an approval task: ``ApprovalOperator(..., notifiers=[approval_notifier()])``
    sends ``approval_waiting`` when the task starts waiting."""
    return ClosedLoopNotifier(on="approval", usecase_file=usecase_file)
