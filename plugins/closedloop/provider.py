"""Airflow provider metadata: registered through the ``apache_airflow_provider`` entry
point so ``airflow providers list`` shows closedloop and the UI knows its connection types."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any


def _version() -> str:
    try:
        return version("closedloop")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "closedloop",
        "name": "closedloop",
        "description": "A closed MLOps loop: Feast features, GX validation, MLflow registry, "
        "Evidently monitoring and retraining, orchestrated by Airflow.",
        "versions": [_version()],
        "integrations": [
            {
                "integration-name": "closedloop",
                "external-doc-url": "https://github.com/closedloop-mlops/closedloop",
                "tags": ["software"],
            }
        ],
        "operators": [
            {
                "integration-name": "closedloop",
                "python-modules": [
                    "closedloop.operators.features",
                    "closedloop.operators.training",
                    "closedloop.operators.scoring",
                    "closedloop.operators.monitoring",
                ],
            }
        ],
        "hooks": [
            {
                "integration-name": "closedloop",
                "python-modules": ["closedloop.hooks.feast", "closedloop.hooks.mlflow"],
            }
        ],
        "extra-links": [
            f"closedloop.operators.links.{name}"
            for name in (
                "DataDocsLink",
                "QuarantineReportLink",
                "MlflowRunLink",
                "ModelVersionLink",
                "EvidentlyReportLink",
                "DriftReportLink",
                "TriggeredTrainingLink",
                "ClosedLoopViewLink",
            )
        ],
        "connection-types": [
            {
                "hook-class-name": "closedloop.hooks.feast.FeastHook",
                "connection-type": "closedloop_feast",
            },
            {
                "hook-class-name": "closedloop.hooks.mlflow.MlflowHook",
                "connection-type": "closedloop_mlflow",
            },
        ],
    }
