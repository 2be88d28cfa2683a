"""The drift check's own statistics as an Evidently report: one metric per compared column
(its stat test's score, tested against the threshold) and the share of drifted columns
(tested against the window's threshold). The values are the check's, so nothing is
computed twice: the report costs tens of milliseconds where Evidently's
``DataDriftPreset``, which runs every stat test again and draws each column's
distribution, costs seconds (docs/monitoring.md). ``run_drift`` writes it on every check,
and adds the preset when the verdict flags something (or when asked).

The metrics are Evidently ``SingleValueMetric`` subclasses that read their value from a
one-row dataset of the check's results (:func:`results_frame`), so a metric's
configuration is the same every day and the workspace dashboard draws one series per
metric. A stored snapshot carries the configuration as plain parameters: Evidently's UI
shows it without importing this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from evidently.core.metric_types import BoundTest, SingleValueCalculation, SingleValueMetric
from evidently.tests import gte, lt

#: the metrics' types (a workspace dashboard panel names a metric by a type of this form)
SHARE_TYPE = "evidently:metric_v2:ClosedLoopDriftedShare"
COLUMN_TYPE = "evidently:metric_v2:ClosedLoopColumnDriftScore"
#: the results frame's column of the share (no feature is named with a dot and a colon)
SHARE_COLUMN = "closedloop:drifted_share"


@dataclass(frozen=True)
class ColumnTest:
    """One compared column's stat test, as the check ran it."""

    column: str
    kind: str  # "numerical" | "categorical"
    method: str
    threshold: float
    score: float
    drifted: bool

    @property
    def higher_drifts(self) -> bool:
        """Whether a score at or above the threshold means drift (a distance) rather
        than one below it (a p-value): read off the test's own outcome."""
        return self.drifted == (self.score >= self.threshold)


class ColumnDriftScore(SingleValueMetric):
    """A column's drift score by the check's stat test; its test passes when the column
    did not drift."""

    class Config:
        type_alias = COLUMN_TYPE

    column: str
    method: str
    threshold: float
    higher_drifts: bool

    def _default_tests(self, context: Any) -> list[BoundTest]:
        test = lt(self.threshold) if self.higher_drifts else gte(self.threshold)
        return [test.bind_single(self.get_fingerprint())]

    def _default_tests_with_reference(self, context: Any) -> list[BoundTest]:
        return self._default_tests(context)


class ColumnDriftScoreCalculation(SingleValueCalculation[ColumnDriftScore]):
    def calculate(self, context: Any, current_data: Any, reference_data: Any) -> Any:
        return self.result(float(current_data.as_dataframe()[self.metric.column].iloc[0]))

    def display_name(self) -> str:
        m = self.metric
        at = ">=" if m.higher_drifts else "<"
        return f"{m.column}: {m.method} drift score (drift at {at} {m.threshold:g})"


class DriftedShare(SingleValueMetric):
    """The share of the checked feature columns that drifted; its test passes when the
    window did not drift as a whole."""

    class Config:
        type_alias = SHARE_TYPE

    checked: int
    threshold: float

    def _default_tests(self, context: Any) -> list[BoundTest]:
        return [lt(self.threshold).bind_single(self.get_fingerprint())]

    def _default_tests_with_reference(self, context: Any) -> list[BoundTest]:
        return self._default_tests(context)


class DriftedShareCalculation(SingleValueCalculation[DriftedShare]):
    def calculate(self, context: Any, current_data: Any, reference_data: Any) -> Any:
        return self.result(float(current_data.as_dataframe()[SHARE_COLUMN].iloc[0]))

    def display_name(self) -> str:
        m = self.metric
        return (
            f"Share of the {m.checked} columns that drifted (dataset drift at >= {m.threshold:g})"
        )


def metrics(tests: list[ColumnTest], checked: int, threshold: float) -> list[Any]:
    """The check's metrics: the share of the ``checked`` feature columns that drifted
    first, then each compared column (and the score)."""
    out: list[Any] = [DriftedShare(checked=checked, threshold=threshold)]
    out += [
        ColumnDriftScore(column=t.column, method=t.method, threshold=t.threshold,
                         higher_drifts=t.higher_drifts)
        for t in tests
    ]  # fmt: skip
    return out


def results_frame(tests: list[ColumnTest], share: float) -> pd.DataFrame:
    """The one row the metrics read: each column's score, and the share."""
    return pd.DataFrame([{SHARE_COLUMN: share, **{t.column: t.score for t in tests}}])


def results_dataset(tests: list[ColumnTest], share: float) -> Any:
    from evidently import DataDefinition, Dataset

    frame = results_frame(tests, share)
    definition = DataDefinition(numerical_columns=list(frame.columns))
    return Dataset.from_pandas(frame, data_definition=definition)
