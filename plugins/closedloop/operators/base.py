"""What every closedloop operator shares: settings from the environment (optionally
another use-case file) and the mapping of core outcomes onto Airflow's retry semantics.

Decisions — a batch or training set that failed validation, a file that cannot be read —
fail the task for good (``AirflowFailException``): retrying cannot change them. A batch
that has not landed yet and any infrastructure error are left to Airflow's retries.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from closedloop.core.errors import BatchNotFoundError, DataValidationError, DecisionError
from closedloop.core.settings import Settings, load_settings
from closedloop.operators.links import ClosedLoopViewLink, DataDocsLink, QuarantineReportLink

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from airflow.sdk import Context


class DataQualityGateFailed(AirflowFailException):
    """The data was rejected by a validation gate (and, for a batch, quarantined)."""


@contextmanager
def decisions_fail_the_task(context: Context) -> Iterator[None]:
    """Map core errors onto Airflow's retry semantics (see the module docstring)."""
    try:
        yield
    except DataValidationError as exc:
        context["ti"].xcom_push(key="validation", value=exc.result.to_dict())
        task = context.get("task")
        if exc.quarantined_to is not None and isinstance(task, ClosedLoopOperator):
            from closedloop.core.quarantine import DOCS_COPY, REPORT

            settings = task.settings()
            task.add_file_link(settings, QuarantineReportLink.name, exc.quarantined_to / REPORT)
            task.add_file_link(settings, DataDocsLink.name, exc.quarantined_to / DOCS_COPY)
        raise DataQualityGateFailed(str(exc)) from exc
    except DecisionError as exc:
        raise AirflowFailException(str(exc)) from exc
    except BatchNotFoundError as exc:
        raise AirflowException(str(exc)) from exc


class ClosedLoopOperator(BaseOperator):
    """Base of closedloop's operators. Without connections, everything comes from
    closedloop's settings (environment and ``closedloop.yaml``); a connection overrides
    what it names.

    :param usecase_file: path of a use-case YAML to use instead of the configured one
        (templated).
    :param mlflow_conn_id: a ``closedloop_mlflow`` connection: the tracking server and
        its login (:class:`~closedloop.hooks.mlflow.MlflowHook`).
    :param feast_conn_id: a ``closedloop_feast`` connection whose extra JSON overrides
        settings (:class:`~closedloop.hooks.feast.FeastHook`).
    """

    template_fields: Sequence[str] = ("usecase_file",)
    ui_color = "#d7ecf7"
    #: every closedloop task links to the closedloop view of its use case
    operator_extra_links = (ClosedLoopViewLink(),)

    def __init__(
        self,
        *,
        usecase_file: str | None = None,
        mlflow_conn_id: str | None = None,
        feast_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.usecase_file = usecase_file
        self.mlflow_conn_id = mlflow_conn_id
        self.feast_conn_id = feast_conn_id
        #: link name -> URL, set while the task runs (closedloop.operators.links)
        self.closedloop_links: dict[str, str] = {}

    def add_link(self, name: str, url: str) -> None:
        self.closedloop_links[name] = url

    def add_file_link(self, settings: Settings, name: str, path: str | Path | None) -> None:
        """Link a file the closedloop view serves, if it exists and is one it serves."""
        from closedloop.core import links

        if path is None or not Path(path).is_file():
            return
        try:
            self.add_link(name, links.file_url(settings, path))
        except ValueError:
            self.log.warning("%s is not served by the closedloop view: no %r link", path, name)

    def settings(self) -> Settings:
        from closedloop.hooks.feast import FeastHook
        from closedloop.hooks.mlflow import MlflowHook

        mlflow = MlflowHook(mlflow_conn_id=self.mlflow_conn_id)
        overrides: dict[str, Any] = {}
        for hook in (FeastHook(feast_conn_id=self.feast_conn_id), mlflow):
            for name, value in hook.overrides().items():
                if isinstance(value, dict) and isinstance(overrides.get(name), dict):
                    overrides[name] = {**overrides[name], **value}
                else:
                    overrides[name] = value
        mlflow.apply_credentials()  # the connection read once (cached by the hook)
        if self.usecase_file:
            overrides["usecase_file"] = self.usecase_file
        settings = load_settings(**overrides)
        if ClosedLoopViewLink.name not in self.closedloop_links:
            from closedloop.core import links

            self.add_link(ClosedLoopViewLink.name, links.view(settings, settings.usecase.name))
        return settings


class IntervalOperator(ClosedLoopOperator):
    """Base of the steps that work on one data interval per run (features, scoring,
    monitoring): refuses an empty interval or one before the use case's declared start."""

    def execute(self, context: Context) -> Any:
        start, end = context["data_interval_start"], context["data_interval_end"]
        if start is None or end is None or start >= end:
            raise AirflowFailException(
                f"{self.task_id} needs a non-empty data interval, got [{start}, {end})"
            )
        # Core works on plain datetimes; Airflow hands out pendulum ones.
        start, end = (datetime.fromisoformat(d.isoformat()) for d in (start, end))
        settings = self.settings()
        first = settings.usecase.first_interval_start
        if start < first:
            raise AirflowFailException(
                f"the interval [{start}, {end}) lies before the declared start of "
                f"{settings.usecase.name} ({first}, schedule.start): no data of it is processed"
            )
        with decisions_fail_the_task(context):
            return self.run_step(settings, start, end, context)

    def run_step(self, settings: Settings, start: Any, end: Any, context: Context) -> Any:
        raise NotImplementedError
