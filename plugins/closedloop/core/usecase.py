"""The use case: what the data looks like and which code hooks shape it.

Everything the pipeline needs to know about a use case lives in one YAML file
(see ``closedloop/usecases/hotel_bookings.yaml``). The validation suite, the casts of
the cleaning step, the Feast project and the model's feature service are derived from
it, so a user brings their own use case by writing such a file and, where needed, two
small functions (a generator for synthetic data and the feature engineering).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

ColumnType = Literal["string", "category", "int", "float", "timestamp", "date"]

#: pandas dtypes a freshly read batch may have for each declared type. Integers are
#: accepted for float columns (a CSV column of whole numbers parses as int64).
ACCEPTED_DTYPES: dict[str, list[str]] = {
    "string": ["object", "str", "string"],
    "category": ["object", "str", "string", "category"],
    "int": ["int8", "int16", "int32", "int64", "Int64"],
    "float": ["int8", "int16", "int32", "int64", "Int64", "float32", "float64", "Float64"],
    "timestamp": ["datetime64[ns, UTC]", "datetime64[us, UTC]"],
    "date": ["datetime64[ns, UTC]", "datetime64[us, UTC]"],
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSpec(_Strict):
    """One column of a landed batch."""

    type: ColumnType
    required: bool = True
    unique: bool = False
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None

    @model_validator(mode="after")
    def _check(self) -> ColumnSpec:
        if self.type == "category" and not self.categories:
            raise ValueError("a category column needs a non-empty 'categories' list")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self


class BatchSpec(_Strict):
    format: Literal["csv", "parquet"] = "csv"
    id_column: str
    timestamp_column: str
    entities: list[str]


class LabelSpec(_Strict):
    column: str
    positive: int = 1
    #: column holding the time the outcome becomes known (None: known at event time). A
    #: training set only uses rows whose outcome was known by the end of its window.
    known_at: str | None = None


class FeastSpec(_Strict):
    project: str
    feature_service: str
    tables: list[str]
    #: value of a feature when its entity has no row yet (a new customer has no history);
    #: applied after every join, offline and online alike
    defaults: dict[str, float | int | str] = {}


class ModelSpec(_Strict):
    """The model trained for the use case and the rules it is trained and promoted by."""

    name: str
    training_window_days: int = Field(default=60, gt=0)
    training: dict[str, Any] = {}  # closedloop.core.modeling.TrainingConfig fields
    gate: dict[str, Any] = {}  # closedloop.core.gate.GatePolicy fields
    training_set: dict[str, Any] = {}  # closedloop.core.validation.TrainingSetPolicy fields
    monitoring: dict[str, Any] = {}  # closedloop.core.monitoring.MonitoringPolicy fields


class UseCase(_Strict):
    """A use case, as declared in its YAML file."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = ""
    batch: BatchSpec
    label: LabelSpec
    columns: dict[str, ColumnSpec]
    generator: str | None = None
    engineer: str
    feast: FeastSpec
    model: ModelSpec

    @model_validator(mode="after")
    def _check_references(self) -> UseCase:
        named = [self.batch.id_column, self.batch.timestamp_column, self.label.column]
        named += self.batch.entities
        named += [self.label.known_at] if self.label.known_at else []
        missing = sorted({c for c in named if c not in self.columns})
        if missing:
            raise ValueError(f"columns named by batch/label are not declared: {missing}")
        if self.columns[self.batch.timestamp_column].type != "timestamp":
            raise ValueError(
                f"timestamp column {self.batch.timestamp_column!r} must be a timestamp"
            )
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> UseCase:
        """Read and validate a use-case file; errors name the file and the field."""
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read use case file {path}: {exc}") from exc
        return cls.model_validate(raw)

    @property
    def feature_columns(self) -> list[str]:
        """Columns that describe the booking, i.e. everything but ids, time and label."""
        skip = {self.batch.id_column, self.batch.timestamp_column, self.label.column}
        return [c for c in self.columns if c not in skip]

    def hook(self, name: Literal["generator", "engineer"]) -> Any:
        """Import the function a hook names (``"package.module:function"``)."""
        target = getattr(self, name)
        if not target:
            raise ValueError(f"use case {self.name!r} declares no {name}")
        module_name, _, attr = target.partition(":")
        return getattr(importlib.import_module(module_name), attr)
