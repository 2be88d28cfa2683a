"""The use-case declaration: one YAML file holds everything specific to a use case.

The library reads names, tables, entities, the label, the features, segments and
thresholds from here and has no default that belongs to one example. Everything else
is derived from it: the Great Expectations suite, the cleaning casts, the Feast
entities/sources/views/service (:mod:`closedloop.core.feast_objects`), the windowed
aggregates (:mod:`closedloop.core.aggregates`), the serving schemas, the Assets and the
DAGs. ``docs/usecases.md`` is the reference of every field.

A declaration that cannot work fails when it is read, before anything runs, with a
:class:`DeclarationError` that lists each problem under the path of its field
(``features.aggregations.device.failure_rate_7d.window: ...``).

One module of this size: the declaration is one pydantic model tree, read top to bottom
like its reference, docs/usecases.md.
"""

from __future__ import annotations

import ast
import re
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

ColumnType = Literal["string", "category", "int", "float", "timestamp", "date"]
NUMERIC = ("int", "float")

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

#: the offline table of events (the cleaned batches plus derived features)
EVENT_TABLE = "events"
#: the Feast entity and feature view of an event's own features (keyed by its id)
EVENT_ENTITY = "event"
EVENT_VIEW = "event_features"
#: the column holding when an event's label became known, when no declared column does
KNOWN_AT_COLUMN = "label_known_at"
#: the timestamp of aggregate rows: the end of the interval they were computed for
AGGREGATE_TS = "event_ts"

_DURATION = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}
_UNITS["w"] = timedelta(weeks=1)
_NAME = r"^[a-z][a-z0-9_]*$"


def parse_duration(text: str) -> timedelta:
    """``30m``, ``2h``, ``7d``, ``2w`` as a ``timedelta`` (ValueError otherwise)."""
    match = _DURATION.match(str(text).strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not a duration like 30m, 2h, 7d or 2w")
    return int(match.group(1)) * _UNITS[match.group(2)]


class DeclarationError(ValueError):
    """A use-case declaration that cannot work; ``problems`` are ``(path, message)``."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {path}: {message}" for path, message in problems)
        super().__init__(f"invalid use case {source} ({len(problems)} problem(s)):\n{lines}")


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
    #: what a category outside ``categories`` does: fail validation (the batch is
    #: quarantined) or pass and be counted in the drift report as new
    new_categories: Literal["quarantine", "flag"] = "quarantine"
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> Any:
        if self.type == "category" and not self.categories:
            raise ValueError("a category column needs a non-empty 'categories' list")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self


class BatchSpec(_Strict):
    """Where and how events land: one file per interval, ``<landing>/<interval>.<format>``."""

    format: Literal["csv", "parquet"] = "csv"
    cadence: Literal["daily", "hourly"] = "daily"
    id_column: str
    timestamp_column: str


class EntitySpec(_Strict):
    """Something events share and features are aggregated per (a user, a device)."""

    join_key: str
    description: str = ""


class LabelSpec(_Strict):
    """What the model predicts and when the truth about an event becomes known.

    ``known_at`` is a declared timestamp/date column (``arrival_date``), a delay after
    the event (``2h``, ``7d``) or ``at_once``. A training set only uses events whose
    label was known by the end of its window; an aggregate over labels counts a label
    only once it is known.
    """

    column: str
    positive: int = 1
    known_at: str

    @property
    def delay(self) -> timedelta | None:
        """The declared delay (``at_once``: zero), or None when a column says it."""
        if self.known_at == "at_once":
            return timedelta(0)
        try:
            return parse_duration(self.known_at)
        except ValueError:
            return None


class Derivation(_Strict):
    """A row-level feature: exactly one of ``expr`` (arithmetic over columns),
    ``date_part`` (of a timestamp/date column) or ``bucket`` (of a numeric column)."""

    expr: str | None = None
    date_part: Literal["hour", "weekday", "day", "month", "year", "dayofyear"] | None = None
    bucket: str | None = None
    of: str | None = None  # the column of a date_part
    edges: list[float] | None = None  # a bucket's ascending inner edges
    description: str = ""

    @field_validator("edges")
    @classmethod
    def _ascending(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and sorted(set(value)) != list(value):
            raise ValueError(f"edges {value} are not strictly ascending")
        return value

    @model_validator(mode="after")
    def _check(self) -> Any:
        kinds = [k for k in ("expr", "date_part", "bucket") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of expr, date_part, bucket (got {kinds or 'none'})")
        if self.date_part and not self.of:
            raise ValueError("a date_part needs 'of': the timestamp or date column")
        if self.bucket and not self.edges:
            raise ValueError("a bucket needs 'edges': a strictly ascending list of numbers")
        return self

    def inputs(self) -> list[str]:
        """The columns (or earlier derived features) this derivation reads."""
        if self.expr is not None:
            return expression_names(self.expr)
        return [self.of] if self.date_part else [str(self.bucket)]


AggregateOp = Literal[
    "count", "sum", "mean", "min", "max", "distinct_count",
    "label_count", "positive_count", "label_rate",
]  # fmt: skip
#: operations over the events themselves (windowed by event time)
EVENT_OPS = ("count", "sum", "mean", "min", "max", "distinct_count")
#: operations over known labels (windowed by the time each label became known)
LABEL_OPS = ("label_count", "positive_count", "label_rate")
_NEEDS_NUMERIC = ("sum", "mean", "min", "max")


class Prior(_Strict):
    """A label rate's prior: ``(positives + rate * weight) / (known + weight)``."""

    rate: float = Field(ge=0, le=1)
    weight: float = Field(gt=0)


class AggregateSpec(_Strict):
    """One windowed aggregate of an entity's past, as of the end of each interval."""

    op: AggregateOp
    column: str | None = None
    window: str = "all"
    default: float | None = None
    prior: Prior | None = None
    description: str = ""

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        if value != "all":
            parse_duration(value)
            if value.strip().endswith("m"):
                raise ValueError(f"window {value!r}: windows are hours (h), days (d), weeks (w)")
        return value

    @model_validator(mode="after")
    def _check(self) -> Any:
        if self.op in _NEEDS_NUMERIC or self.op == "distinct_count":
            if not self.column:
                raise ValueError(f"{self.op} needs 'column'")
        elif self.column and self.op != "count":
            raise ValueError(f"{self.op} reads the label; it takes no 'column'")
        if self.prior is not None and self.op != "label_rate":
            raise ValueError("only label_rate takes a 'prior'")
        return self

    @property
    def window_length(self) -> timedelta | None:
        """The window as a duration; None for ``all``."""
        return None if self.window == "all" else parse_duration(self.window)

    @property
    def dtype(self) -> Literal["int", "float"]:
        return (
            "int"
            if self.op in ("count", "distinct_count", "label_count", "positive_count")
            else "float"
        )

    @property
    def fill_value(self) -> float | None:
        """The value for an entity without history in the window (None: no default)."""
        if self.default is not None:
            return self.default
        if self.op in ("count", "sum", "distinct_count", "label_count", "positive_count"):
            return 0
        if self.op == "label_rate" and self.prior is not None:
            return self.prior.rate
        return None


class FeaturesSpec(_Strict):
    """The model's inputs: event columns passed through, row-level derivations and
    windowed aggregates per entity. ``version`` names the Feast feature service
    (``<model>_v<version>``): change the features, bump it."""

    version: int = Field(default=1, ge=1)
    #: how long an aggregate row stays valid (default: the longest window plus one
    #: interval; a year when a window is ``all``)
    ttl: str | None = None
    passthrough: list[str] = []
    derived: dict[str, Derivation] = {}
    aggregations: dict[str, dict[str, AggregateSpec]] = {}

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


class SegmentsSpec(_Strict):
    """Columns whose values split the gate's and reports' metrics, and the fewest rows a
    segment needs to be judged (smaller ones are reported, never veto a promotion)."""

    columns: list[str] = []
    min_rows: int = Field(default=100, ge=1)


class ModelSpec(_Strict):
    """The model trained for the use case and the rules it is trained and promoted by.

    The nested blocks are the fields of ``closedloop.core.modeling.TrainingConfig``,
    ``closedloop.core.gate.GatePolicy``, ``closedloop.core.gate.TrainingSetPolicy``
    and ``closedloop.core.monitoring.MonitoringPolicy``; their keys are checked when the
    declaration is read."""

    name: str | None = Field(default=None, pattern=_NAME)
    training_window_days: int = Field(default=60, gt=0)
    training: dict[str, Any] = {}
    gate: dict[str, Any] = {}
    training_set: dict[str, Any] = {}
    monitoring: dict[str, Any] = {}


class ScheduleSpec(_Strict):
    """When the use case's DAGs run. ``start`` is the first interval with data: a run
    for an earlier interval fails instead of succeeding with nothing done."""

    start: date
    timezone: str = "UTC"
    #: the training DAG's own schedule, besides new features (cron, in ``timezone``)
    training_cron: str | None = "0 3 * * 1"
    #: how many days of predictions each monitoring run compares against training data
    drift_window_days: int = Field(default=3, ge=1)
    performance_window_days: int = Field(default=7, ge=1)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown timezone {value!r} (an IANA name like Europe/Berlin)"
            ) from None
        return value


class ServingSpec(_Strict):
    """The field each prediction of ``closedloop serve`` is answered under (the id)."""

    response_id: str | None = None


class DemoSpec(_Strict):
    """How ``closedloop demo --usecase NAME`` replays the use case's own data: a function
    (``"module:function"``) that lands ``days`` daily batches from ``first_day`` as
    ``f(landing_dir, first_day, days, fmt=...)``, the days loaded as history before the
    first champion, and the days then watched one by one through Airflow."""

    writer: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    first_day: date
    history_days: int = Field(ge=14)
    watched_days: int = Field(ge=1)


class UseCase(_Strict):
    """A use case, as declared in its YAML file (see the module docstring)."""

    name: str = Field(pattern=_NAME)
    description: str = ""
    batch: BatchSpec
    entities: dict[str, EntitySpec] = {}
    label: LabelSpec
    columns: dict[str, ColumnSpec]
    features: FeaturesSpec
    segments: SegmentsSpec = SegmentsSpec()
    model: ModelSpec = ModelSpec()
    schedule: ScheduleSpec
    serving: ServingSpec = ServingSpec()
    #: synthetic data for demos and tests ("package.module:function"); optional
    generator: str | None = None
    demo: DemoSpec | None = None

    @field_validator("entities")
    @classmethod
    def _entity_names(cls, value: dict[str, EntitySpec]) -> dict[str, EntitySpec]:
        for name in value:
            if not re.match(_NAME, name) or name == EVENT_ENTITY:
                raise ValueError(
                    f"entity name {name!r} must be lower_snake_case and not {EVENT_ENTITY!r}"
                )
        return value

    # -- reading ---------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> UseCase:
        """Read and check a declaration; a problem raises :class:`DeclarationError`."""
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise DeclarationError(str(path), [("(file)", f"cannot read it: {exc}")]) from exc
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "<dict>") -> UseCase:
        if not isinstance(raw, dict):
            raise DeclarationError(source, [("(file)", "a declaration is a YAML mapping")])
        try:
            usecase = cls.model_validate(raw)
        except ValidationError as exc:
            raise DeclarationError(source, _pydantic_problems(exc)) from None
        problems = check_references(usecase)
        if problems:
            raise DeclarationError(source, problems)
        return usecase

    # -- derived names -----------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.model.name or self.name

    @property
    def feature_service(self) -> str:
        return f"{self.model_name}_v{self.features.version}"

    @property
    def entity_keys(self) -> list[str]:
        """The id and every entity's join key, in declaration order."""
        keys = [self.batch.id_column]
        keys += [e.join_key for e in self.entities.values() if e.join_key not in keys]
        return keys

    @property
    def known_at_column(self) -> str:
        """The column of the event table that says when its label became known."""
        return KNOWN_AT_COLUMN if self.label.delay is not None else self.label.known_at

    @property
    def event_features(self) -> list[str]:
        """The event's own model inputs: passed-through columns, then derivations."""
        return [*self.features.passthrough, *self.features.derived]

    @property
    def request_columns(self) -> list[str]:
        """What a serving request carries, in declaration order: the id, every entity's
        join key and the declared columns the event's features are computed from (so
        an event is scored when it happens; only aggregates come from the online store)."""
        needed = set(self.entity_keys) | set(self.features.passthrough)
        pending = list(self.features.derived.values())
        while pending:  # a derivation may read an earlier one: down to declared columns
            for name in pending.pop().inputs():
                if name in self.features.derived:
                    pending.append(self.features.derived[name])
                else:
                    needed.add(name)
        return [c for c in self.columns if c in needed]

    @property
    def aggregate_features(self) -> dict[str, AggregateSpec]:
        return {n: a for aggs in self.features.aggregations.values() for n, a in aggs.items()}

    @property
    def model_features(self) -> list[str]:
        return [*self.event_features, *self.aggregate_features]

    @property
    def feature_columns(self) -> list[str]:
        """The declared columns that are model inputs (watched for drift)."""
        return [c for c in self.features.passthrough if c in self.columns]

    @property
    def aggregate_tables(self) -> dict[str, str]:
        """entity -> the offline table of its aggregates."""
        return {e: f"{e}_aggregates" for e in self.features.aggregations}

    @property
    def event_table(self) -> str:
        return EVENT_TABLE

    @property
    def offline_tables(self) -> list[str]:
        return [EVENT_TABLE, *self.aggregate_tables.values()]

    @property
    def defaults(self) -> dict[str, float | int]:
        """Feature -> its value for an entity without history (applied after each join)."""
        out: dict[str, float | int] = {}
        for name, agg in self.aggregate_features.items():
            value = agg.fill_value
            if value is not None:
                out[name] = int(value) if agg.dtype == "int" else float(value)
        return out

    @property
    def response_id(self) -> str:
        return self.serving.response_id or self.batch.id_column

    @property
    def interval(self) -> timedelta:
        return timedelta(hours=1) if self.batch.cadence == "hourly" else timedelta(days=1)

    @property
    def first_interval_start(self) -> datetime:
        """The start of the first interval with data: ``schedule.start`` at midnight in
        the schedule's timezone."""
        return self.day_start(self.schedule.start)

    def interval_key(self, start: datetime) -> str:
        """The key of the data interval starting at ``start``: its landed file's name and
        its partition in every table. A daily interval's is its date in
        ``schedule.timezone`` (``YYYY-MM-DD``); an hourly one's its hour in UTC
        (``YYYY-MM-DDTHHZ``: a local hour repeats when the clocks go back). Keys sort in
        time."""
        if self.batch.cadence == "hourly":
            return start.astimezone(UTC).strftime("%Y-%m-%dT%HZ")
        return start.astimezone(self.tz).strftime("%Y-%m-%d")

    def key_start(self, key: str) -> datetime:
        """The start of the interval whose key is ``key`` (inverse of :meth:`interval_key`)."""
        if key.endswith("Z"):
            return datetime.fromisoformat(key).astimezone(self.tz)
        return self.day_start(date.fromisoformat(key))

    def next_start(self, start: datetime) -> datetime:
        """The start of the interval after the one starting at ``start``: the next local
        midnight (a day of 23 or 25 hours where the clocks change), or an hour later."""
        if self.batch.cadence == "hourly":
            return (start.astimezone(UTC) + timedelta(hours=1)).astimezone(self.tz)
        return self.day_start(start.astimezone(self.tz).date() + timedelta(days=1))

    def intervals(self, first: date, last: date) -> list[tuple[datetime, datetime]]:
        """The data intervals ``(start, end)`` of the days ``first`` to ``last``."""
        start, stop = self.day_start(first), self.day_start(last + timedelta(days=1))
        out = []
        while start < stop:
            out.append((start, self.next_start(start)))
            start = out[-1][1]
        return out

    def day_start(self, day: date) -> datetime:
        """Midnight of ``day`` in ``schedule.timezone``: where a day's intervals begin."""
        return datetime.combine(day, time.min, self.tz)

    @property
    def tz(self) -> Any:
        import zoneinfo

        return zoneinfo.ZoneInfo(self.schedule.timezone)

    @property
    def cron(self) -> str:
        return "0 * * * *" if self.batch.cadence == "hourly" else "0 0 * * *"

    @cached_property
    def dag_ids(self) -> dict[str, str]:
        """stage -> DAG id (``<use case>_<stage>``)."""
        stages = ("features", "training", "batch_inference", "monitoring")
        return {stage: f"{self.name}_{stage}" for stage in stages}

    def hook(self, name: Literal["generator"]) -> Any:
        """Import the function a hook names (``"package.module:function"``)."""
        target = getattr(self, name)
        if not target:
            raise ValueError(f"use case {self.name!r} declares no {name}")
        return self.hook_of(target)

    @staticmethod
    def hook_of(target: str) -> Any:
        import importlib

        module_name, _, attr = target.partition(":")
        return getattr(importlib.import_module(module_name), attr)


# -- checks across fields ----------------------------------------------------------------
_BLOCK_FIELDS = {
    "training": ("closedloop.core.training_config", "TrainingConfig"),
    "gate": ("closedloop.core.gate", "GatePolicy"),
    "training_set": ("closedloop.core.gate", "TrainingSetPolicy"),
    "monitoring": ("closedloop.core.monitoring", "MonitoringPolicy"),
}


def check_references(usecase: UseCase) -> list[tuple[str, str]]:
    """Every problem of a declaration that single fields cannot see, with its path."""
    problems: list[tuple[str, str]] = []
    columns = usecase.columns

    def column(path: str, name: str | None, types: tuple[str, ...] | None = None) -> bool:
        if name not in columns:
            problems.append((path, f"unknown column {name!r}; declared: {sorted(columns)}"))
            return False
        if types and columns[name].type not in types:
            problems.append(
                (path, f"column {name!r} is {columns[name].type}, not {'/'.join(types)}")
            )
            return False
        return True

    batch = usecase.batch
    column("batch.id_column", batch.id_column, ("string", "int", "category"))
    column("batch.timestamp_column", batch.timestamp_column, ("timestamp",))
    for name, entity in usecase.entities.items():
        column(f"entities.{name}.join_key", entity.join_key, ("string", "int", "category"))
    label = usecase.label
    if column("label.column", label.column, ("int",)):
        spec = columns[label.column]
        if spec.categories and str(label.positive) not in spec.categories:
            problems.append(
                ("label.positive", f"{label.positive!r} is not one of {spec.categories}")
            )
        if not spec.required:
            problems.append(("label.column", f"label column {label.column!r} must be required"))
    if label.delay is None and label.known_at not in columns:
        problems.append(
            (
                "label.known_at",
                f"{label.known_at!r} is neither a declared column, a delay like 2h or 7d, "
                "nor 'at_once'",
            )
        )
    elif label.delay is None:
        column("label.known_at", label.known_at, ("timestamp", "date"))
    elif KNOWN_AT_COLUMN in columns:
        problems.append(
            (f"columns.{KNOWN_AT_COLUMN}", "this name is reserved for the known-at time")
        )

    private = {label.column, label.known_at, batch.timestamp_column, KNOWN_AT_COLUMN}
    names: dict[str, str] = {}

    def feature(path: str, name: str) -> None:
        if name in names:
            problems.append((path, f"feature {name!r} is already declared at {names[name]}"))
        names[name] = path

    features = usecase.features
    for i, name in enumerate(features.passthrough):
        path = f"features.passthrough[{i}]"
        feature(path, name)
        if name in private:
            problems.append((path, f"{name!r} is the label, its known-at time or the timestamp"))
        elif column(path, name) and columns[name].type in ("timestamp", "date", "string"):
            problems.append((path, f"{name!r} is a {columns[name].type}: derive a number from it"))
    available = set(columns) - private
    for name, derivation in features.derived.items():
        path = f"features.derived.{name}"
        if name in columns:
            problems.append((path, f"{name!r} is a declared column; pick another name"))
        feature(path, name)
        problems += _check_derivation(path, derivation, columns, available)
        available.add(name)
    for entity, aggregates in features.aggregations.items():
        if entity not in usecase.entities:
            problems.append(
                (
                    f"features.aggregations.{entity}",
                    f"unknown entity {entity!r}; declared: {sorted(usecase.entities)}",
                )
            )
        for name, agg in aggregates.items():
            path = f"features.aggregations.{entity}.{name}"
            feature(path, name)
            if name in columns:
                problems.append((path, f"{name!r} is a declared column; pick another name"))
            if agg.column is not None:
                if agg.column in private:
                    problems.append((f"{path}.column", f"{agg.column!r} is not an input column"))
                elif agg.column not in available:
                    problems.append((f"{path}.column", f"unknown column {agg.column!r}"))
                elif (
                    agg.op in _NEEDS_NUMERIC
                    and agg.column in columns
                    and (columns[agg.column].type not in NUMERIC)
                ):
                    problems.append(
                        (f"{path}.column", f"{agg.op} needs a number, {agg.column!r} is not")
                    )
            if agg.op in LABEL_OPS and columns.get(label.column, None) is None:
                problems.append((f"{path}.op", "an aggregate over labels needs a label"))
            if agg.fill_value is None:
                problems.append(
                    (
                        f"{path}.default",
                        f"{agg.op} has no value for an entity without history in its window: "
                        "declare a default" + (" or a prior" if agg.op == "label_rate" else ""),
                    )
                )
    if not names:
        problems.append(("features", "declare at least one feature"))

    for i, name in enumerate(usecase.segments.columns):
        if column(f"segments.columns[{i}]", name, ("category", "string", "int")) and (
            name not in features.passthrough
        ):
            problems.append(
                (f"segments.columns[{i}]", f"{name!r} must also be a passthrough feature")
            )
    if usecase.serving.response_id is not None and not re.match(_NAME, usecase.serving.response_id):
        problems.append(("serving.response_id", "must be lower_snake_case"))
    problems += _check_blocks(usecase.model)
    return problems


def _check_derivation(
    path: str, derivation: Derivation, columns: dict[str, ColumnSpec], available: set[str]
) -> list[tuple[str, str]]:
    problems = []
    if derivation.expr is not None:
        try:
            names = expression_names(derivation.expr)
        except ValueError as exc:
            return [(f"{path}.expr", str(exc))]
        for name in names:
            if name not in available:
                problems.append((f"{path}.expr", f"unknown column {name!r}"))
            elif name in columns and columns[name].type not in NUMERIC:
                problems.append(
                    (f"{path}.expr", f"{name!r} is a {columns[name].type}, not a number")
                )
    elif derivation.date_part:
        if derivation.of not in columns or columns[derivation.of].type not in ("timestamp", "date"):
            problems.append((f"{path}.of", f"{derivation.of!r} is not a timestamp or date column"))
    else:
        source = derivation.bucket
        if source not in available or (source in columns and columns[source].type not in NUMERIC):
            problems.append((f"{path}.bucket", f"{source!r} is not a numeric column"))
    return problems


def _check_blocks(model: ModelSpec) -> list[tuple[str, str]]:
    """Unknown keys of the model's nested blocks, named by path (no import of their
    modules' heavy dependencies: the field names are read from the dataclasses)."""
    import dataclasses
    import importlib

    problems = []
    for block, (module, cls) in _BLOCK_FIELDS.items():
        policy = getattr(importlib.import_module(module), cls)
        known = {f.name for f in dataclasses.fields(policy)}
        unknown = [key for key in getattr(model, block) if key not in known]
        for key in unknown:
            problems.append((f"model.{block}.{key}", f"unknown setting; known: {sorted(known)}"))
        if not unknown:  # the values, as the dataclass checks them when it is built
            try:
                policy(**getattr(model, block))
            except (TypeError, ValueError) as exc:
                problems.append((f"model.{block}", str(exc)))
    return problems


# -- expressions ---------------------------------------------------------------------
_ALLOWED_NODES = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.Name, ast.Load, ast.Constant,
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.USub, ast.UAdd,
)  # fmt: skip


def expression_names(expr: str) -> list[str]:
    """The column names an arithmetic expression reads (``+ - * /``, parentheses and
    numbers only); ValueError for anything else."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"{expr!r} is not an expression: {exc.msg}") from None
    names: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise ValueError(
                f"{expr!r}: only column names, numbers, + - * / and parentheses are allowed "
                f"(found {type(node).__name__})"
            )
        if isinstance(node, ast.Constant) and not isinstance(node.value, int | float):
            raise ValueError(f"{expr!r}: only numbers may be constants")
        if isinstance(node, ast.Name) and node.id not in names:
            names.append(node.id)
    return names


def _pydantic_problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for error in exc.errors():
        path = ""
        for part in error["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif error["type"] == "missing":
            message = "required field is missing"
        problems.append((path or "(file)", message))
    return problems
