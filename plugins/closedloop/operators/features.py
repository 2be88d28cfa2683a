"""Operators of the feature pipeline: thin adapters from Airflow's context (the data
interval) to ``closedloop.core.feature_pipeline`` and back (a small XCom or an error)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from closedloop.operators.base import DataQualityGateFailed, IntervalOperator
from closedloop.operators.links import DataDocsLink, QuarantineReportLink

if TYPE_CHECKING:
    from collections.abc import Sequence


__all__ = ["DataQualityGateFailed"]


class ExtractBatchOperator(IntervalOperator):
    """Locate the interval's landed batch and check that it can be read."""

    def run_step(self, settings, start, end, context):
        from closedloop.core.feature_pipeline import extract

        summary = extract(settings, start, end)
        self.log.info("Batch %s: %d rows", summary["batch_path"], summary["rows"])
        return summary


class ValidateBatchOperator(IntervalOperator):
    """Run the use case's Great Expectations suite on the batch; quarantine on failure.
    Links: the Data Docs page of the validation, and the quarantine report of a blocked
    batch."""

    operator_extra_links = (
        *IntervalOperator.operator_extra_links,
        DataDocsLink(),
        QuarantineReportLink(),
    )

    def run_step(self, settings, start, end, context):
        from closedloop.core.feature_pipeline import validate

        result = validate(settings, start, end, run_name=context["run_id"])
        self.add_file_link(settings, DataDocsLink.name, result.get("data_docs"))
        self.log.info(
            "Batch passed %d checks; Data Docs: %s", result["checks_total"], result["data_docs"]
        )
        return result


class CleanBatchOperator(IntervalOperator):
    """Cast the validated batch to its declared types and stage it."""

    def run_step(self, settings, start, end, context):
        from closedloop.core.feature_pipeline import clean

        return clean(settings, start)


class EngineerFeaturesOperator(IntervalOperator):
    """Compute the interval's partition of every offline table.

    :param clean_uri: the staged clean batch (templated; usually the clean task's XCom).
    """

    template_fields: Sequence[str] = (*IntervalOperator.template_fields, "clean_uri")

    def __init__(self, *, clean_uri: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clean_uri = clean_uri

    def run_step(self, settings, start, end, context):
        from closedloop.core.feature_pipeline import engineer

        return engineer(settings, start, end, self.clean_uri)


class LoadOfflineStoreOperator(IntervalOperator):
    """Replace the interval's partitions in the offline store with the staged tables.

    :param staged: table name -> staged Parquet URI (templated; the engineer task's XCom).
    """

    template_fields: Sequence[str] = (*IntervalOperator.template_fields, "staged")

    def __init__(self, *, staged: dict[str, str] | str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.staged = staged

    def run_step(self, settings, start, end, context):
        from closedloop.core.feature_pipeline import load_offline

        rows = load_offline(settings, start, self.staged)
        self.log.info("Offline partitions written: %s", rows)
        return rows


class FeastApplyOperator(IntervalOperator):
    """Register the Feast repository's declarations (``feast apply`` through the API)."""

    def run_step(self, settings, start, end, context):
        from closedloop.core.feature_store import apply_definitions
        from closedloop.hooks.feast import FeastHook

        hook = FeastHook(self.feast_conn_id, {"usecase_file": settings.usecase_file})
        return apply_definitions(hook.get_conn(), settings)


class FeastMaterializeOperator(IntervalOperator):
    """Load the interval's feature rows into the online store."""

    def run_step(self, settings, start, end, context):
        from closedloop.core.feature_store import materialize_interval
        from closedloop.hooks.feast import FeastHook

        hook = FeastHook(self.feast_conn_id, {"usecase_file": settings.usecase_file})
        views = materialize_interval(hook.get_conn(), start, end)
        self.log.info("Materialized %s for [%s, %s]", views, start, end)
        # Consumers (<use case>_training) learn which interval the new features cover.
        for outlet in self.outlets:
            context["outlet_events"][outlet].extra = {
                "interval_start": start.isoformat(),
                "interval_end": end.isoformat(),
            }
        return {"start": start.isoformat(), "end": end.isoformat(), "feature_views": views}
