"""Operators of monitoring: data interval in, small XCom (a verdict) out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseXCom, SkipMixin

from closedloop.operators.base import IntervalOperator
from closedloop.operators.links import DriftReportLink, EvidentlyReportLink, TriggeredTrainingLink

#: the XCom key of the training run's ``conf`` (see :class:`MonitoringDecisionOperator`)
TRIGGER_CONF_KEY = "trigger_conf"

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

    from closedloop.core.monitoring import Verdict
    from closedloop.core.settings import Settings


class DriftCheckOperator(IntervalOperator):
    """Evidently drift of the recent prediction log against the champion's training set.

    :param window_days: days of predictions, ending with the interval, to compare.
    """

    operator_extra_links = (
        *IntervalOperator.operator_extra_links,
        EvidentlyReportLink(),
        DriftReportLink(),
    )

    def __init__(self, *, window_days: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.window_days = window_days

    def run_step(self, settings: Settings, start, end, context: Context) -> dict[str, Any]:
        from closedloop.core import links
        from closedloop.core.monitoring_pipeline import check_drift

        result = check_drift(settings, start, end, window_days=self.window_days)
        if result.get("evidently_run"):
            self.add_link(
                EvidentlyReportLink.name,
                links.evidently_report(
                    settings, result["evidently_project"], result["evidently_run"]
                ),
            )
        self.add_file_link(settings, DriftReportLink.name, result.get("report"))
        return result


class PerformanceCheckOperator(IntervalOperator):
    """Live ROC AUC of the champion where ground truth has arrived, against its live AUC
    in the window before (alike censored).

    :param window_days: the width of each of the two windows.
    """

    def __init__(self, *, window_days: int = 7, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.window_days = window_days

    def run_step(self, settings: Settings, start, end, context: Context) -> dict[str, Any]:
        from closedloop.core.monitoring_pipeline import check_performance

        return check_performance(settings, end, window_days=self.window_days)


class MonitoringDecisionOperator(IntervalOperator, SkipMixin):
    """Decide (thresholds, cooldown), record the verdict, and short-circuit: unless the
    verdict says retrain, the tasks downstream (the trigger of ``<use case>_training``) are
    skipped and this task succeeds.

    The verdict is the task's return value (XCom) either way; when it says retrain, the
    ``conf`` for the training run — reason (``drift`` or ``performance``), ``as_of``
    (the interval's end), the report and the verdict's reasons — is pushed under the XCom
    key ``trigger_conf``.

    A short circuit, not a gate task that raises ``AirflowSkipException``: a skipped
    task's state reaches the API server only after its process has been reaped, and
    Airflow's task supervisor can notice that up to a heartbeat interval (5 s) late —
    on the monitoring run's critical path every day. A success is reported at once.

    :param drift: the drift task's XCom; :param performance: the performance task's XCom
        (both templated).
    """

    template_fields: Sequence[str] = (*IntervalOperator.template_fields, "drift", "performance")
    inherits_from_skipmixin = True
    operator_extra_links = (
        *IntervalOperator.operator_extra_links,
        TriggeredTrainingLink(),
        DriftReportLink(),
    )

    def __init__(self, *, drift: Any, performance: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.drift, self.performance = drift, performance

    def run_step(self, settings: Settings, start, end, context: Context) -> dict[str, Any]:
        from closedloop.core.monitoring_pipeline import decide_and_record

        verdict = decide_and_record(
            settings, start, self.drift, self.performance, run_id=context["run_id"]
        )
        self.log.info(
            "Verdict for %s: retrain=%s — %s",
            verdict.day,
            verdict.retrain,
            "; ".join(verdict.reasons),
        )
        ti = context["ti"]
        xcom = verdict.to_dict() | {"trigger_run_id": verdict.trigger_run_id}
        if isinstance(self.drift, dict):
            self.add_file_link(settings, DriftReportLink.name, self.drift.get("report"))
        if verdict.retrain:
            from closedloop.core import links

            training = settings.usecase.dag_ids["training"]
            self.add_link(
                TriggeredTrainingLink.name,
                links.airflow_dag_run(settings, training, verdict.trigger_run_id),
            )
            ti.xcom_push(key=TRIGGER_CONF_KEY, value=trigger_conf(verdict, end))
            return xcom
        # skip() ends execute with an exception: the verdict is pushed first
        ti.xcom_push(key=BaseXCom.XCOM_RETURN_KEY, value=xcom)
        self.skip(ti=ti, tasks=context["task"].get_direct_relatives(upstream=False))
        return xcom  # not reached while there is a task downstream


def trigger_conf(verdict: Verdict, end: Any) -> dict[str, Any]:
    """The ``conf`` of the training run a retrain verdict starts."""
    return {
        "reason": verdict.cause,
        "as_of": end.isoformat(),
        "report": verdict.report,
        "verdict": "; ".join(verdict.reasons),
    }


class ABTestReportOperator(IntervalOperator):
    """Per-arm performance of an A/B test (``closedloop serve --challenger-share``): the
    online predictions of each arm on the outcomes known by the interval's end, the gate's
    primary metric per arm and a bootstrap confidence interval of the difference, written
    as ``ab_test.json`` beside the day's monitoring reports.

    :param window_days: days of online predictions, ending with the interval.
    """

    def __init__(self, *, window_days: int = 14, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.window_days = window_days

    def run_step(self, settings: Settings, start, end, context: Context) -> dict[str, Any]:
        from closedloop.core.ab import ab_report
        from closedloop.core.monitoring_pipeline import reports_dir

        report = ab_report(
            settings, end, window_days=self.window_days, out=reports_dir(settings, start)
        )
        self.log.info("A/B test: %s — %s", report["verdict"], "; ".join(report["reasons"]))
        return report
