"""Operator of batch inference: the interval's events scored by the champion."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from closedloop.operators.base import IntervalOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from closedloop.core.settings import Settings


class BatchScoreOperator(IntervalOperator):
    """Score the interval's new events with the champion, features from Feast, in
    chunks; write the predictions partition and the prediction log (idempotent).

    :param chunk_rows: entity rows per chunk (memory stays flat in the number of rows).
    """

    def __init__(self, *, chunk_rows: int = 50_000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.chunk_rows = chunk_rows

    def run_step(self, settings: Settings, start, end, context: Context) -> dict[str, Any]:
        from closedloop.core.batch_inference import score_interval

        out = score_interval(settings, start, end, chunk_rows=self.chunk_rows)
        self.log.info("Scored %d events with v%s", out["rows"], out["model_version"])
        return out
