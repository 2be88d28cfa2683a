"""Typed errors of closedloop's core. Operators map them onto Airflow's retry semantics:
a *decision* (bad data, a rejected model) fails the task for good, anything else is left
to Airflow's retries."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from closedloop.core.validation_result import ValidationResult


class ClosedLoopError(Exception):
    """Base class of closedloop's errors."""


class DecisionError(ClosedLoopError):
    """The pipeline decided to stop: retrying the same input cannot change the outcome."""


class BatchNotFoundError(ClosedLoopError):
    """No batch has landed for the interval (yet): retryable, the file may still arrive."""


class BatchUnreadableError(DecisionError):
    """The landed file cannot be parsed at all (corrupt, wrong format)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"batch {path} is unreadable: {reason}")
        self.path = path
        self.reason = reason


class DataValidationError(DecisionError):
    """A batch failed its expectation suite; ``result`` names every failed check."""

    def __init__(self, result: ValidationResult, quarantined_to: Path | None = None) -> None:
        where = f"; batch quarantined to {quarantined_to}" if quarantined_to else ""
        super().__init__(f"{result.summary()}{where}")
        self.result = result
        self.quarantined_to = quarantined_to


class NoChampionError(ClosedLoopError):
    """The registry has no version under the alias asked for (usually ``champion``): there
    is nothing to score or monitor with until a training run promotes one."""


class UntrustedModelError(DecisionError):
    """A registered version whose artifacts are not a model that this project's training
    logged (its source is another path or URI, another experiment's model, or a run it
    does not belong to): closedloop refuses to load it."""


class OnlineStoreRestartedError(ClosedLoopError):
    """The online store's server restarted again and again while an interval was being
    written: what was written before each restart may be gone. Retryable."""
