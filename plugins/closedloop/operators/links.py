"""The extra-link buttons of closedloop's operators: each opens the page of what the task
produced — Data Docs or the quarantine report, the MLflow run, the registered version,
the Evidently report, the training run a verdict started.

A task computes its links while it runs (:meth:`ClosedLoopOperator.add_link`, URLs from
:mod:`closedloop.core.links`); Airflow calls :meth:`get_link` on the worker when the task
ends, failed or not, and keeps the result in XCom for the UI. A link the task did not
produce is empty, and the UI shows no button for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


class ClosedLoopLink(BaseOperatorLink):
    """A link whose URL the task set under its name."""

    name = ""

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return getattr(operator, "closedloop_links", {}).get(self.name, "")


class DataDocsLink(ClosedLoopLink):
    name = "Data Docs"


class QuarantineReportLink(ClosedLoopLink):
    name = "Quarantine report"


class MlflowRunLink(ClosedLoopLink):
    name = "MLflow run"


class ModelVersionLink(ClosedLoopLink):
    name = "Model version"


class EvidentlyReportLink(ClosedLoopLink):
    name = "Evidently report"


class DriftReportLink(ClosedLoopLink):
    name = "Drift report (HTML)"


class TriggeredTrainingLink(ClosedLoopLink):
    name = "Triggered training"


class ClosedLoopViewLink(ClosedLoopLink):
    name = "closedloop view"


#: every link class, for the provider info
LINKS = (
    DataDocsLink,
    QuarantineReportLink,
    MlflowRunLink,
    ModelVersionLink,
    EvidentlyReportLink,
    DriftReportLink,
    TriggeredTrainingLink,
    ClosedLoopViewLink,
)
