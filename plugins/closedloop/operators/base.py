"""What every closedloop operator shares: settings from the environment (optionally
another use-case file) and the mapping of core outcomes onto Airflow's retry semantics.

Decisions — a batch or training set that failed validation, a file that cannot be read —
fail the task for good (``AirflowFailException``): retrying cannot change them. A batch
that has not landed yet and any infrastructure error are left to Airflow's retries.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from closedloop.core.errors import BatchNotFoundError, DataValidationError, DecisionError
from closedloop.core.settings import Settings, load_settings

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
        raise DataQualityGateFailed(str(exc)) from exc
    except DecisionError as exc:
        raise AirflowFailException(str(exc)) from exc
    except BatchNotFoundError as exc:
        raise AirflowException(str(exc)) from exc


class ClosedLoopOperator(BaseOperator):
    """Base of closedloop's operators.

    :param usecase_file: path of a use-case YAML to use instead of the configured one
        (templated).
    """

    template_fields: Sequence[str] = ("usecase_file",)
    ui_color = "#d7ecf7"

    def __init__(self, *, usecase_file: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.usecase_file = usecase_file

    def settings(self) -> Settings:
        return load_settings(**({"usecase_file": self.usecase_file} if self.usecase_file else {}))
