"""Use-case declarations that cannot work fail when they are read, each problem under the
path of its field; a valid one parses and derives its names; the event table computes
the declared row-level features; the example of ``docs/usecases.md`` parses."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re
from collections.abc import Callable
from datetime import UTC, date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

import closedloop
from closedloop.core.derive import event_table
from closedloop.core.gate import GatePolicy, TrainingSetPolicy
from closedloop.core.modeling import TrainingConfig
from closedloop.core.monitoring import MonitoringPolicy
from closedloop.core.usecase import (
    EVENT_OPS,
    KNOWN_AT_COLUMN,
    LABEL_OPS,
    AggregateSpec,
    BatchSpec,
    ColumnSpec,
    DeclarationError,
    Derivation,
    EntitySpec,
    FeaturesSpec,
    LabelSpec,
    ModelSpec,
    Prior,
    ScheduleSpec,
    SegmentsSpec,
    ServingSpec,
    UseCase,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "usecases.md"
HOTEL = Path(closedloop.__file__).parent / "usecases" / "hotel_bookings.yaml"

#: devices send readings; did the device fail within 2 hours of a reading?
VALID: dict[str, Any] = {
    "name": "device_failures",
    "description": "Will a device fail within two hours of a reading?",
    "batch": {
        "format": "csv",
        "cadence": "hourly",
        "id_column": "reading_id",
        "timestamp_column": "reading_ts",
    },
    "entities": {"device": {"join_key": "device_id"}},
    "label": {"column": "failed", "positive": 1, "known_at": "2h"},
    "columns": {
        "reading_id": {"type": "string", "unique": True},
        "device_id": {"type": "string"},
        "reading_ts": {"type": "timestamp"},
        "site": {"type": "category", "categories": ["north", "south"]},
        "firmware": {"type": "string"},
        "temp": {"type": "float", "min": -50, "max": 150},
        "load": {"type": "int", "min": 0},
        "failed": {"type": "int", "min": 0, "max": 1},
    },
    "features": {
        "passthrough": ["site", "temp", "load"],
        "derived": {
            "temp_per_load": {"expr": "temp / load"},
            "reading_hour": {"date_part": "hour", "of": "reading_ts"},
            "load_band": {"bucket": "load", "edges": [10, 50]},
        },
        "aggregations": {
            "device": {
                "readings_24h": {"op": "count", "window": "24h"},
                "temp_mean_7d": {"op": "mean", "column": "temp", "window": "7d", "default": 20.0},
                "failure_rate_30d": {
                    "op": "label_rate",
                    "window": "30d",
                    "prior": {"rate": 0.05, "weight": 10},
                },
            }
        },
    },
    "segments": {"columns": ["site"], "min_rows": 50},
    "model": {"name": "device_failure", "training": {"seed": 1}, "gate": {"min_improvement": 0}},
    "schedule": {"start": "2025-01-01"},
}

AGG = "features.aggregations.device"


def declaration() -> dict[str, Any]:
    return copy.deepcopy(VALID)


def _parent(raw: dict[str, Any], path: str) -> tuple[Any, str]:
    *parents, last = path.split(".")
    node = raw
    for part in parents:
        node = node[part]
    return node, last


def put(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set the value at a dotted path (creating the last key)."""

    def mutate(raw: dict[str, Any]) -> None:
        node, last = _parent(raw, path)
        node[last] = value

    return mutate


def drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        node, last = _parent(raw, path)
        del node[last]

    return mutate


def rename(path: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        node, last = _parent(raw, path)
        node[new] = node.pop(last)

    return mutate


def append(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        node, last = _parent(raw, path)
        node[last].append(value)

    return mutate


def both(*mutations: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        for mutation in mutations:
            mutation(raw)

    return mutate


def problems_of(raw: Any) -> list[tuple[str, str]]:
    with pytest.raises(DeclarationError) as caught:
        UseCase.from_dict(raw, source="test.yaml")
    assert caught.value.problems, "a DeclarationError names its problems"
    return caught.value.problems


# -- the valid declaration ---------------------------------------------------------------
def test_valid_declaration_parses_and_derives_its_names():
    usecase = UseCase.from_dict(declaration())
    assert usecase.feature_service == "device_failure_v1"
    assert usecase.offline_tables == ["events", "device_aggregates"]
    assert usecase.aggregate_tables == {"device": "device_aggregates"}
    assert usecase.entity_keys == ["reading_id", "device_id"]
    assert usecase.known_at_column == KNOWN_AT_COLUMN
    assert usecase.label.delay == pd.Timedelta(hours=2)
    assert usecase.event_features == [
        "site", "temp", "load", "temp_per_load", "reading_hour", "load_band",
    ]  # fmt: skip
    assert usecase.model_features[-3:] == ["readings_24h", "temp_mean_7d", "failure_rate_30d"]
    assert usecase.defaults == {"readings_24h": 0, "temp_mean_7d": 20.0, "failure_rate_30d": 0.05}
    assert usecase.dag_ids == {
        "features": "device_failures_features",
        "training": "device_failures_training",
        "batch_inference": "device_failures_batch_inference",
        "monitoring": "device_failures_monitoring",
    }
    assert usecase.response_id == "reading_id"
    assert usecase.cron == "0 * * * *"


def test_valid_declaration_reads_from_yaml(tmp_path: Path):
    path = tmp_path / "device_failures.yaml"
    path.write_text(yaml.safe_dump(declaration()))
    assert UseCase.from_yaml(path) == UseCase.from_dict(declaration())


def test_hotel_declaration_shipped_in_the_package():
    usecase = UseCase.from_yaml(HOTEL)
    assert usecase.name == "hotel_bookings"
    assert usecase.feature_service == "hotel_cancellation_v1"
    assert usecase.offline_tables == ["events", "customer_aggregates", "hotel_aggregates"]
    assert usecase.entity_keys == ["booking_id", "customer_id", "hotel"]
    assert usecase.known_at_column == "arrival_date"
    assert usecase.dag_ids == {
        "features": "hotel_bookings_features",
        "training": "hotel_bookings_training",
        "batch_inference": "hotel_bookings_batch_inference",
        "monitoring": "hotel_bookings_monitoring",
    }


# -- one problem per mutation ------------------------------------------------------------
BAD = [
    # unknown columns
    pytest.param(
        append("features.passthrough", "humidity"),
        "features.passthrough[3]",
        "unknown column 'humidity'",
        id="passthrough-unknown-column",
    ),
    pytest.param(
        put(f"{AGG}.temp_mean_7d.column", "tmp"),
        f"{AGG}.temp_mean_7d.column",
        "unknown column 'tmp'",
        id="aggregation-unknown-column",
    ),
    pytest.param(
        put("features.derived.temp_per_load.expr", "temp / lod"),
        "features.derived.temp_per_load.expr",
        "unknown column 'lod'",
        id="derived-expr-unknown-column",
    ),
    pytest.param(
        put("features.derived.ratio", {"expr": "later * 2"}),
        "features.derived.ratio.expr",
        "unknown column 'later'",
        id="derived-reads-a-later-derivation",
    ),
    pytest.param(
        put("segments.columns", ["region"]),
        "segments.columns[0]",
        "unknown column 'region'",
        id="segment-unknown-column",
    ),
    pytest.param(
        put("entities.device.join_key", "dev_id"),
        "entities.device.join_key",
        "unknown column 'dev_id'",
        id="join-key-unknown-column",
    ),
    pytest.param(
        put("batch.id_column", "id"),
        "batch.id_column",
        "unknown column 'id'",
        id="id-column-unknown",
    ),
    # windows
    pytest.param(
        put(f"{AGG}.readings_24h.window", "7x"),
        f"{AGG}.readings_24h.window",
        "is not a duration",
        id="window-unknown-unit",
    ),
    pytest.param(
        put(f"{AGG}.readings_24h.window", "0d"),
        f"{AGG}.readings_24h.window",
        "is not a duration",
        id="window-zero",
    ),
    pytest.param(
        put(f"{AGG}.readings_24h.window", "30m"),
        f"{AGG}.readings_24h.window",
        "windows are hours (h), days (d), weeks (w)",
        id="window-in-minutes",
    ),
    # the label
    pytest.param(drop("label"), "label", "required", id="label-missing"),
    pytest.param(
        put("label.known_at", "later"),
        "label.known_at",
        "neither a declared column, a delay",
        id="known-at-neither-column-delay-nor-at-once",
    ),
    pytest.param(
        put("label.known_at", "firmware"),
        "label.known_at",
        "not timestamp/date",
        id="known-at-column-not-a-time",
    ),
    pytest.param(
        put("label.column", "site"),
        "label.column",
        "column 'site' is category, not int",
        id="label-not-an-int",
    ),
    pytest.param(
        put("columns.failed.required", False),
        "label.column",
        "must be required",
        id="label-column-optional",
    ),
    pytest.param(
        put("columns.label_known_at", {"type": "timestamp"}),
        "columns.label_known_at",
        "reserved",
        id="known-at-column-name-reserved",
    ),
    # defaults and priors
    pytest.param(
        drop(f"{AGG}.temp_mean_7d.default"),
        f"{AGG}.temp_mean_7d.default",
        "declare a default",
        id="mean-without-default",
    ),
    pytest.param(
        drop(f"{AGG}.failure_rate_30d.prior"),
        f"{AGG}.failure_rate_30d.default",
        "declare a default or a prior",
        id="label-rate-without-default-or-prior",
    ),
    pytest.param(
        put(f"{AGG}.readings_24h.prior", {"rate": 0.1, "weight": 1}),
        f"{AGG}.readings_24h",
        "only label_rate takes a 'prior'",
        id="prior-on-count",
    ),
    pytest.param(
        put(f"{AGG}.failure_rate_30d.prior", {"rate": 1.5, "weight": 10}),
        f"{AGG}.failure_rate_30d.prior.rate",
        "less than or equal to 1",
        id="prior-rate-above-one",
    ),
    pytest.param(
        put("features.ttl", "a week"),
        "features.ttl",
        "is not a duration",
        id="ttl-not-a-duration",
    ),
    # names
    pytest.param(
        put("features.derived.readings_24h", {"expr": "temp + 1"}),
        f"{AGG}.readings_24h",
        "feature 'readings_24h' is already declared at features.derived.readings_24h",
        id="derived-and-aggregate-share-a-name",
    ),
    pytest.param(
        put("features.derived.firmware", {"expr": "load * 2"}),
        "features.derived.firmware",
        "is a declared column",
        id="derived-named-like-a-column",
    ),
    pytest.param(
        put("features.aggregations.sensor", {"sensor_readings": {"op": "count"}}),
        "features.aggregations.sensor",
        "unknown entity 'sensor'",
        id="aggregations-unknown-entity",
    ),
    pytest.param(
        put("entities.event", {"join_key": "reading_id"}),
        "entities",
        "'event'",
        id="entity-named-event",
    ),
    pytest.param(put("name", "Device-Failures"), "name", "pattern", id="name-not-snake-case"),
    pytest.param(
        put("serving", {"response_id": "Reading-Id"}),
        "serving.response_id",
        "lower_snake_case",
        id="response-id-not-snake-case",
    ),
    # unknown fields
    pytest.param(
        rename("features.passthrough", "pasthrough"),
        "features.pasthrough",
        "unknown field",
        id="typo-pasthrough",
    ),
    pytest.param(rename("segments", "segment"), "segment", "unknown field", id="typo-top-level"),
    pytest.param(
        rename(f"{AGG}.readings_24h.window", "windw"),
        f"{AGG}.readings_24h.windw",
        "unknown field",
        id="typo-in-an-aggregate",
    ),
    pytest.param(
        put("columns.temp.maximum", 100),
        "columns.temp.maximum",
        "unknown field",
        id="typo-in-a-column",
    ),
    # types of columns
    pytest.param(
        put(f"{AGG}.temp_mean_7d.column", "site"),
        f"{AGG}.temp_mean_7d.column",
        "mean needs a number, 'site' is not",
        id="mean-of-a-category",
    ),
    pytest.param(
        both(put(f"{AGG}.temp_mean_7d.op", "sum"), put(f"{AGG}.temp_mean_7d.column", "firmware")),
        f"{AGG}.temp_mean_7d.column",
        "sum needs a number, 'firmware' is not",
        id="sum-of-a-string",
    ),
    pytest.param(
        drop(f"{AGG}.temp_mean_7d.column"),
        f"{AGG}.temp_mean_7d",
        "mean needs 'column'",
        id="mean-without-column",
    ),
    pytest.param(
        put(f"{AGG}.failure_rate_30d.column", "temp"),
        f"{AGG}.failure_rate_30d",
        "reads the label; it takes no 'column'",
        id="label-op-with-column",
    ),
    pytest.param(
        put(f"{AGG}.temp_mean_7d.column", "failed"),
        f"{AGG}.temp_mean_7d.column",
        "'failed' is not an input column",
        id="aggregate-over-the-label-column",
    ),
    pytest.param(
        put(f"{AGG}.readings_24h.op", "median"),
        f"{AGG}.readings_24h.op",
        "Input should be",
        id="unknown-op",
    ),
    pytest.param(
        append("features.passthrough", "failed"),
        "features.passthrough[3]",
        "is the label",
        id="passthrough-of-the-label",
    ),
    pytest.param(
        append("features.passthrough", "firmware"),
        "features.passthrough[3]",
        "derive a number from it",
        id="passthrough-of-a-string",
    ),
    pytest.param(
        put("columns.reading_ts.type", "date"),
        "batch.timestamp_column",
        "column 'reading_ts' is date, not timestamp",
        id="timestamp-column-not-a-timestamp",
    ),
    pytest.param(
        drop("columns.site.categories"),
        "columns.site",
        "needs a non-empty 'categories' list",
        id="category-without-categories",
    ),
    pytest.param(
        both(put("columns.temp.min", 10), put("columns.temp.max", 0)),
        "columns.temp",
        "min 10.0 is greater than max 0.0",
        id="min-above-max",
    ),
    pytest.param(
        put("columns.temp.type", "decimal"),
        "columns.temp.type",
        "Input should be",
        id="unknown-column-type",
    ),
    # derivations
    pytest.param(
        put("features.derived.temp_per_load.expr", "abs(temp)"),
        "features.derived.temp_per_load.expr",
        "found Call",
        id="expr-calls-a-function",
    ),
    pytest.param(
        put("features.derived.temp_per_load.expr", "temp ** 2"),
        "features.derived.temp_per_load.expr",
        "found Pow",
        id="expr-power",
    ),
    pytest.param(
        put("features.derived.temp_per_load.expr", "temp +"),
        "features.derived.temp_per_load.expr",
        "is not an expression",
        id="expr-syntax-error",
    ),
    pytest.param(
        put("features.derived.temp_per_load.expr", "temp + 'hot'"),
        "features.derived.temp_per_load.expr",
        "only numbers may be constants",
        id="expr-string-constant",
    ),
    pytest.param(
        put("features.derived.site_x2", {"expr": "site * 2"}),
        "features.derived.site_x2.expr",
        "'site' is a category, not a number",
        id="expr-over-a-category",
    ),
    pytest.param(
        put("features.derived.load_band.edges", [50, 10]),
        "features.derived.load_band.edges",
        "not strictly ascending",
        id="bucket-unsorted-edges",
    ),
    pytest.param(
        put("features.derived.load_band.edges", [10, 10, 50]),
        "features.derived.load_band.edges",
        "not strictly ascending",
        id="bucket-repeated-edge",
    ),
    pytest.param(
        drop("features.derived.load_band.edges"),
        "features.derived.load_band",
        "a bucket needs 'edges'",
        id="bucket-without-edges",
    ),
    pytest.param(
        put("features.derived.load_band.bucket", "firmware"),
        "features.derived.load_band.bucket",
        "not a numeric column",
        id="bucket-of-a-string",
    ),
    pytest.param(
        put("features.derived.reading_hour.of", "temp"),
        "features.derived.reading_hour.of",
        "not a timestamp or date column",
        id="date-part-of-a-number",
    ),
    pytest.param(
        put("features.derived.load_band.expr", "load * 2"),
        "features.derived.load_band",
        "give exactly one of expr, date_part, bucket",
        id="derivation-of-two-kinds",
    ),
    pytest.param(put("features", {}), "features", "declare at least one feature", id="no-feature"),
    # segments
    pytest.param(
        both(
            put("columns.zone", {"type": "category", "categories": ["a", "b"]}),
            put("segments.columns", ["zone"]),
        ),
        "segments.columns[0]",
        "must also be a passthrough feature",
        id="segment-not-a-passthrough-feature",
    ),
    pytest.param(
        put("segments.columns", ["temp"]),
        "segments.columns[0]",
        "column 'temp' is float",
        id="segment-of-a-float",
    ),
    # the model's blocks
    pytest.param(
        put("model.gate.primary", "roc_auc"),
        "model.gate.primary",
        "unknown setting",
        id="gate-unknown-key",
    ),
    pytest.param(
        put("model.gate.approval", "maybe"),
        "model.gate",
        "approval must be one of automatic, required, got 'maybe'",
        id="gate-approval-mode",
    ),
    pytest.param(
        put("model.gate", {"approval": "required", "approval_timeout_hours": 0}),
        "model.gate",
        "approval_timeout_hours must be positive",
        id="gate-approval-timeout",
    ),
    pytest.param(
        put("model.training.sed", 1),
        "model.training.sed",
        "unknown setting",
        id="training-unknown-key",
    ),
    pytest.param(
        put("model.training_set", {"min_row": 10}),
        "model.training_set.min_row",
        "unknown setting",
        id="training-set-unknown-key",
    ),
    pytest.param(
        put("model.monitoring", {"cooldown": 3}),
        "model.monitoring.cooldown",
        "unknown setting",
        id="monitoring-unknown-key",
    ),
    pytest.param(
        put("model.training.families", ["xgboost"]),
        "model.training",
        "families must be a non-empty subset",
        id="training-unknown-family",
    ),
    pytest.param(
        put("model.training_set", {"min_positive_rate": 0.5, "max_positive_rate": 0.1}),
        "model.training_set",
        "min_positive_rate <= max_positive_rate",
        id="training-set-rates-inverted",
    ),
    # schedule
    pytest.param(drop("schedule"), "schedule", "required", id="schedule-missing"),
    pytest.param(
        put("schedule.start", "yesterday"), "schedule.start", "valid date", id="start-not-a-date"
    ),
    pytest.param(
        put("batch.cadence", "weekly"), "batch.cadence", "Input should be", id="unknown-cadence"
    ),
]


@pytest.mark.parametrize(("mutate", "path", "message"), BAD)
def test_a_bad_declaration_names_the_field_and_the_problem(mutate, path, message):
    raw = declaration()
    mutate(raw)
    problems = problems_of(raw)
    at_path = [text for where, text in problems if where == path]
    assert at_path, f"no problem at {path}: {problems}"
    assert any(message in text for text in at_path), f"{message!r} not in {at_path}"


def test_the_error_message_lists_every_problem_under_its_path():
    raw = declaration()
    raw["label"]["known_at"] = "later"
    with pytest.raises(DeclarationError) as caught:
        UseCase.from_dict(raw, source="devices.yaml")
    text = str(caught.value)
    assert text.startswith("invalid use case devices.yaml (1 problem(s)):")
    assert "  label.known_at: 'later' is neither" in text
    assert caught.value.source == "devices.yaml"


def test_several_field_problems_are_reported_together():
    raw = declaration()
    rename("features.passthrough", "pasthrough")(raw)
    put(f"{AGG}.readings_24h.window", "7x")(raw)
    drop("label")(raw)
    put("columns.temp.min", "cold")(raw)
    paths = {path for path, _ in problems_of(raw)}
    assert {
        "features.pasthrough",
        f"{AGG}.readings_24h.window",
        "label",
        "columns.temp.min",
    } <= paths


def test_several_reference_problems_are_reported_together():
    raw = declaration()
    append("features.passthrough", "humidity")(raw)
    put("label.known_at", "later")(raw)
    put("features.aggregations.sensor", {"sensor_readings": {"op": "count"}})(raw)
    put("model.gate.primary", "roc_auc")(raw)
    put("features.derived.temp_per_load.expr", "abs(temp)")(raw)
    problems = problems_of(raw)
    assert sorted(path for path, _ in problems) == [
        "features.aggregations.sensor",
        "features.derived.temp_per_load.expr",
        "features.passthrough[3]",
        "label.known_at",
        "model.gate.primary",
    ]


def test_a_declaration_is_a_mapping():
    assert problems_of(["name", "devices"]) == [("(file)", "a declaration is a YAML mapping")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"name: [devices\nbatch: {", "cannot read it", id="broken-yaml"),
        pytest.param(b"\xff\xfe\x00\x01 binary", "cannot read it", id="not-text"),
        pytest.param(b"just a sentence\n", "a declaration is a YAML mapping", id="a-scalar"),
        pytest.param(b"", "a declaration is a YAML mapping", id="empty"),
    ],
)
def test_from_yaml_on_a_file_that_is_not_a_declaration(tmp_path: Path, content, message):
    path = tmp_path / "devices.yaml"
    path.write_bytes(content)
    with pytest.raises(DeclarationError) as caught:
        UseCase.from_yaml(path)
    assert caught.value.source == str(path)
    [(where, text)] = caught.value.problems
    assert where == "(file)"
    assert message in text


def test_from_yaml_on_a_missing_file(tmp_path: Path):
    with pytest.raises(DeclarationError) as caught:
        UseCase.from_yaml(tmp_path / "nowhere.yaml")
    assert caught.value.problems[0][0] == "(file)"


# -- variants that are valid ---------------------------------------------------------------
@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(put("label.known_at", "at_once"), id="known-at-once"),
        pytest.param(
            both(
                put("columns.settled_at", {"type": "timestamp"}),
                put("label.known_at", "settled_at"),
            ),
            id="known-at-a-column",
        ),
        pytest.param(put(f"{AGG}.readings_24h.window", "all"), id="window-all"),
        pytest.param(put(f"{AGG}.readings_24h.window", "2w"), id="window-weeks"),
        pytest.param(
            put(f"{AGG}.temp_mean_7d.column", "temp_per_load"), id="aggregate-of-a-derivation"
        ),
        pytest.param(
            put(f"{AGG}.failure_rate_30d", {"op": "label_rate", "default": 0.0}),
            id="label-rate-with-a-default",
        ),
        pytest.param(
            put("features.derived.ratio_x2", {"expr": "temp_per_load * 2"}),
            id="derivation-of-an-earlier-derivation",
        ),
        pytest.param(put("features.ttl", "14d"), id="ttl"),
        pytest.param(drop("segments"), id="no-segments"),
        pytest.param(drop("model"), id="model-defaults"),
    ],
)
def test_valid_variants(mutate):
    raw = declaration()
    mutate(raw)
    UseCase.from_dict(raw)


# -- the event table ------------------------------------------------------------------------
def _events() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "reading_id": ["r1", "r2", "r3", "r4"],
            "device_id": ["d1", "d1", "d2", "d2"],
            "reading_ts": pd.to_datetime(
                [
                    "2025-01-06 00:30",  # a Monday
                    "2025-01-12 13:05",  # a Sunday
                    "2025-02-28 23:59",
                    "2025-12-31 09:00",
                ],
                utc=True,
            ),
            "site": ["north", "south", "north", "south"],
            "firmware": ["1.0", "1.0", "1.1", "1.1"],
            "temp": [20.0, 30.0, 40.0, 50.0],
            "load": [0, 10, 49, 50],
            "failed": [0, 1, 0, 0],
        }
    )


def _usecase(derived: dict[str, Any], known_at: str = "2h") -> UseCase:
    raw = declaration()
    raw["features"]["derived"].update(derived)
    raw["label"]["known_at"] = known_at
    return UseCase.from_dict(raw)


def test_event_table_arithmetic_keeps_integers():
    usecase = _usecase(
        {
            "load_x2": {"expr": "load * 2 + 1"},
            "neg_load": {"expr": "-(load - 10)"},
            "six": {"expr": "2 * 3"},
            "temp_plus_load": {"expr": "temp + load"},
        }
    )
    out = event_table(_events(), usecase)
    assert out["load_x2"].dtype == "int64"
    assert out["load_x2"].tolist() == [1, 21, 99, 101]
    assert out["neg_load"].dtype == "int64"
    assert out["neg_load"].tolist() == [10, 0, -39, -40]
    assert out["six"].dtype == "int64"
    assert out["six"].tolist() == [6, 6, 6, 6]
    assert out["temp_plus_load"].dtype == "float64"


def test_event_table_division_gives_floats_and_nan_on_zero():
    usecase = _usecase({"load_half": {"expr": "load / 2"}, "by_zero": {"expr": "temp / 0"}})
    out = event_table(_events(), usecase)
    assert out["load_half"].dtype == "float64"
    assert out["load_half"].tolist() == [0.0, 5.0, 24.5, 25.0]
    # temp_per_load is temp / load; the first load is 0
    assert pd.isna(out["temp_per_load"].iloc[0])
    assert out["temp_per_load"].iloc[1:].tolist() == [3.0, 40.0 / 49, 1.0]
    assert out["by_zero"].isna().all()
    assert not out.select_dtypes("number").isin([float("inf"), float("-inf")]).any().any()


def test_event_table_date_parts():
    usecase = _usecase(
        {
            "weekday": {"date_part": "weekday", "of": "reading_ts"},
            "month": {"date_part": "month", "of": "reading_ts"},
            "day_of_year": {"date_part": "dayofyear", "of": "reading_ts"},
        }
    )
    out = event_table(_events(), usecase)
    assert out["weekday"].tolist() == [0, 6, 4, 2]  # Monday is 0
    assert out["month"].tolist() == [1, 1, 2, 12]
    assert out["reading_hour"].tolist() == [0, 13, 23, 9]
    assert out["day_of_year"].tolist() == [6, 12, 59, 365]
    assert {str(out[c].dtype) for c in ("weekday", "month", "reading_hour")} == {"int64"}


def test_event_table_bucket_counts_the_edges_at_or_below_the_value():
    frame = _events()
    frame["load"] = [9, 10, 49, 50]
    out = event_table(frame, _usecase({}))  # load_band: edges [10, 50]
    assert out["load_band"].tolist() == [0, 1, 1, 2]
    assert out["load_band"].dtype == "int64"


def test_event_table_known_at_of_a_delay():
    usecase = _usecase({}, known_at="2h")
    out = event_table(_events(), usecase)
    assert usecase.known_at_column == KNOWN_AT_COLUMN
    assert (out[KNOWN_AT_COLUMN] - out["reading_ts"] == pd.Timedelta(hours=2)).all()


def test_event_table_known_at_once():
    usecase = _usecase({}, known_at="at_once")
    out = event_table(_events(), usecase)
    assert usecase.known_at_column == KNOWN_AT_COLUMN
    assert out[KNOWN_AT_COLUMN].equals(out["reading_ts"])


def test_event_table_known_at_a_column_adds_nothing():
    raw = declaration()
    raw["columns"]["settled_at"] = {"type": "timestamp"}
    raw["label"]["known_at"] = "settled_at"
    usecase = UseCase.from_dict(raw)
    frame = _events().assign(settled_at=lambda f: f["reading_ts"] + pd.Timedelta(days=1))
    out = event_table(frame, usecase)
    assert usecase.known_at_column == "settled_at"
    assert KNOWN_AT_COLUMN not in out
    assert list(out.columns) == [*frame.columns, "temp_per_load", "reading_hour", "load_band"]


# -- the reference ------------------------------------------------------------------------
def _doc() -> str:
    return DOC.read_text()


def test_the_documented_example_parses():
    match = re.search(r"<!-- example -->\s*```yaml\n(.*?)```", _doc(), re.DOTALL)
    assert match, "docs/usecases.md has a ```yaml block after <!-- example -->"
    usecase = UseCase.from_dict(yaml.safe_load(match.group(1)), source="docs/usecases.md")
    assert usecase.features.aggregations, "the example shows aggregations"
    assert usecase.features.derived, "the example shows derivations"


def test_every_yaml_block_of_the_reference_is_yaml():
    for block in re.findall(r"```yaml\n(.*?)```", _doc(), re.DOTALL):
        yaml.safe_load(block)


#: every block of a declaration
MODELS = [
    UseCase, BatchSpec, EntitySpec, LabelSpec, ColumnSpec, FeaturesSpec, Derivation,
    AggregateSpec, Prior, SegmentsSpec, ModelSpec, ScheduleSpec, ServingSpec,
]  # fmt: skip


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_the_reference_names_every_field(model):
    doc = _doc()
    missing = [name for name in model.model_fields if f"`{name}`" not in doc]
    assert not missing, f"docs/usecases.md does not document {model.__name__}: {missing}"


@pytest.mark.parametrize(
    "policy",
    [TrainingConfig, GatePolicy, TrainingSetPolicy, MonitoringPolicy],
    ids=lambda p: p.__name__,
)
def test_the_reference_names_every_model_setting(policy):
    doc = _doc()
    missing = [f.name for f in dataclasses.fields(policy) if f"`{f.name}`" not in doc]
    assert not missing, f"docs/usecases.md does not document {policy.__name__}: {missing}"


def test_the_reference_names_every_op():
    doc = _doc()
    assert [op for op in (*EVENT_OPS, *LABEL_OPS) if f"`{op}`" not in doc] == []


@pytest.mark.parametrize(
    ("cadence", "timezone", "day", "count", "first_key", "hours"),
    [
        pytest.param("daily", "Europe/Berlin", "2025-03-30", 1, "2025-03-30", 23,
                     id="berlin-23h-day"),
        pytest.param("daily", "America/New_York", "2025-11-02", 1, "2025-11-02", 25,
                     id="ny-25h-day"),
        pytest.param("hourly", "Europe/Berlin", "2025-10-26", 25, "2025-10-25T22Z", 25,
                     id="berlin-25-hours"),
        pytest.param("hourly", "UTC", "2025-03-30", 24, "2025-03-30T00Z", 24, id="utc-24-hours"),
    ],
)  # fmt: skip
def test_intervals_are_the_local_days_or_hours_and_their_keys_sort_in_time(
    cadence, timezone, day, count, first_key, hours
):
    raw = declaration()
    raw["batch"]["cadence"] = cadence
    raw["schedule"]["timezone"] = timezone
    usecase = UseCase.from_dict(raw)
    first = date.fromisoformat(day)
    intervals = usecase.intervals(first, first)
    assert len(intervals) == count
    assert intervals[0][0] == usecase.day_start(first)
    assert intervals[-1][1] == usecase.day_start(first + timedelta(days=1))
    elapsed = intervals[-1][1].astimezone(UTC) - intervals[0][0].astimezone(UTC)
    assert elapsed == timedelta(hours=hours)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(intervals))
    keys = [usecase.interval_key(start) for start, _ in intervals]
    # one key each, even for the local hour repeated when the clocks go back
    assert keys[0] == first_key and keys == sorted(keys) and len(set(keys)) == len(keys)
    assert all(usecase.key_start(k) == start for k, (start, _) in zip(keys, intervals, strict=True))
