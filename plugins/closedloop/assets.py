"""Airflow Assets that chain a use case's DAGs (data-aware scheduling)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from airflow.sdk import Asset

if TYPE_CHECKING:
    from closedloop.core.usecase import UseCase


class UseCaseAssets(NamedTuple):
    #: emitted by ``<name>_features`` after each materialized interval; ``<name>_training``
    #: schedules on it
    features: Asset
    #: emitted by ``<name>_batch_inference`` after each scored interval
    predictions: Asset


def usecase_assets(usecase: UseCase) -> UseCaseAssets:
    """The Assets of one use case, named after it."""
    return UseCaseAssets(
        features=Asset(
            name=f"{usecase.name}_features", uri=f"closedloop://{usecase.name}/features"
        ),
        predictions=Asset(
            name=f"{usecase.name}_predictions", uri=f"closedloop://{usecase.name}/predictions"
        ),
    )
