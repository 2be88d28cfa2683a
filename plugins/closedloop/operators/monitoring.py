"""Operators of batch inference and monitoring: data interval in, small XCom out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowSkipException

from closedloop.operators.features import _IntervalOperator

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

    from closedloop.core.settings import Settings


class BatchScoreOperator(_IntervalOperator):
    """Score the interval's new bookings with the champion, features from Feast, in
    chunks; write the predictions partition and the prediction log (idempotent).

    :param chunk_rows: entity rows per chunk (memory stays flat in the number of rows).
    """

    def __init__(self, *, chunk_rows: int = 50_000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.chunk_rows = chunk_rows

    def run_step(self, settings: Settings, start, end, context: Context) -> dict[str, Any]:
        from closedloop.core.batch_inference import score_interval

        out = score_interval(settings, start, end, chunk_rows=self.chunk_rows)
        self.log.info("Scored %d bookings with v%s", out["rows"], out["model_version"])
        return out


class DriftCheckOperator(_IntervalOperator):
    """Evidently drift of the recent prediction log against the champion's training set.

    :param window_days: days of predictions, ending with the interval, to compare.
    """

    def __init__(self, *, window_days: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.window_days = window_days

    def run_step(self, settings: Settings, start, end, context: Context) -> dict[str, Any]:
        from closedloop.core.monitoring_pipeline import check_drift

        return check_drift(settings, start, end, window_days=self.window_days)


class PerformanceCheckOperator(_IntervalOperator):
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


class MonitoringDecisionOperator(_IntervalOperator):
    """Decide (thresholds, cooldown), record the verdict, and skip the trigger unless
    retraining is warranted.

    :param drift: the drift task's XCom; :param performance: the performance task's XCom
        (both templated).
    """

    template_fields: Sequence[str] = (*_IntervalOperator.template_fields, "drift", "performance")

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
            verdict["day"],
            verdict["retrain"],
            "; ".join(verdict["reasons"]),
        )
        return verdict


class RetrainGateOperator(_IntervalOperator):
    """Let the trigger run only when the verdict says retrain (else skip it).

    :param verdict: the decision task's XCom (templated).
    """

    template_fields: Sequence[str] = (*_IntervalOperator.template_fields, "verdict")

    def __init__(self, *, verdict: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.verdict = verdict

    def run_step(self, settings: Settings, start, end, context: Context) -> dict[str, Any]:
        if not self.verdict["retrain"]:
            raise AirflowSkipException("no retraining: " + "; ".join(self.verdict["reasons"]))
        return {
            "reason": "drift",
            "as_of": end.isoformat(),
            "report": self.verdict["report"],
            "verdict": "; ".join(self.verdict["reasons"]),
        }


class ABTestReportOperator(_IntervalOperator):
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
