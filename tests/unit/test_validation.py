"""The data-validation gate and quarantine (no Airflow).

Most cases run on an ephemeral GX context; one test uses a file context to check that
Data Docs are written. Frames are built here from the use case's YAML schema, so the
tests do not depend on the synthetic-data generator.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from closedloop.core.batches import read_batch
from closedloop.core.errors import DataValidationError
from closedloop.core.quarantine import load_quarantine_report, quarantine_batch
from closedloop.core.settings import PACKAGE_USECASES
from closedloop.core.usecase import UseCase
from closedloop.core.validation import (
    FailedCheck,
    TrainingSetPolicy,
    ValidationResult,
    build_suite,
    unreadable_result,
    validate_batch,
    validate_training_set,
)

START = datetime(2024, 5, 1, tzinfo=UTC)
END = START + timedelta(days=1)
ROWS = 50

COLUMNS_MATCH = "expect_table_columns_to_match_set"
ROW_COUNT = "expect_table_row_count_to_be_between"
DTYPE = "expect_column_dtype_to_be_in_type_list"
NOT_NULL = "expect_column_values_to_not_be_null"
BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"
UNIQUE = "expect_column_values_to_be_unique"
MEAN = "expect_column_mean_to_be_between"


@pytest.fixture(scope="module")
def usecase() -> UseCase:
    return UseCase.from_yaml(PACKAGE_USECASES / "hotel_bookings.yaml")


def good_frame(usecase: UseCase, rows: int = ROWS) -> pd.DataFrame:
    """A batch that satisfies every declaration of the use case, as read_batch returns it."""
    i = np.arange(rows)
    start = pd.Timestamp(START)
    data: dict[str, object] = {}
    for name, spec in usecase.columns.items():
        if name == usecase.label.column:
            data[name] = (i % 2) * usecase.label.positive
        elif spec.type == "string":
            data[name] = [f"{name[:1].upper()}{k if spec.unique else k % 7}" for k in i]
        elif spec.type == "category":
            data[name] = [spec.categories[k % len(spec.categories)] for k in i]
        elif spec.type == "timestamp":
            data[name] = start + pd.to_timedelta(i * 17, unit="min")
        elif spec.type == "date":
            data[name] = start + pd.to_timedelta(i, unit="D")
        elif spec.type == "int":
            lo = int(spec.min) if spec.min is not None else 0
            hi = int(spec.max) if spec.max is not None else lo + 100
            data[name] = lo + i % (hi - lo + 1)
        else:
            lo = spec.min if spec.min is not None else 0.0
            hi = spec.max if spec.max is not None else lo + 100.0
            data[name] = np.minimum(lo + (i % 100) * 0.5 + 0.25, hi)
    return pd.DataFrame(data)


def run(df: pd.DataFrame, usecase: UseCase, **kwargs: object) -> ValidationResult:
    return validate_batch(df, usecase, interval_start=START, interval_end=END, **kwargs)


def failed_pairs(result: ValidationResult) -> set[tuple[str, str | None]]:
    return {(f.expectation, f.column) for f in result.failed}


def check_for(result: ValidationResult, expectation: str, column: str | None) -> FailedCheck:
    for f in result.failed:
        if (f.expectation, f.column) == (expectation, column):
            return f
    raise AssertionError(f"{expectation}({column}) not among {failed_pairs(result)}")


@pytest.fixture(scope="module")
def good_result(usecase: UseCase) -> ValidationResult:
    return run(good_frame(usecase), usecase)


def test_good_frame_passes(good_result: ValidationResult) -> None:
    assert good_result.success, good_result.summary()
    assert good_result.failed == []
    assert good_result.row_count == ROWS
    assert good_result.checks_total > 40  # 2 table checks + several per column
    assert good_result.summary().startswith(f"batch passed all {good_result.checks_total}")
    assert good_result.data_docs is None


def test_suite_is_derived_from_the_usecase(usecase: UseCase) -> None:
    suite = build_suite(usecase, START, END, "s")
    kinds = [(e.expectation_type, getattr(e, "column", None)) for e in suite.expectations]
    for column in usecase.columns:
        assert (DTYPE, column) in kinds
    assert (UNIQUE, usecase.batch.id_column) in kinds
    assert (IN_SET, usecase.label.column) in kinds
    assert kinds.count((BETWEEN, usecase.batch.timestamp_column)) == 1
    assert kinds[:2] == [(COLUMNS_MATCH, None), (ROW_COUNT, None)]


# -- one case per kind of bad input ---------------------------------------------------------


def _set(column: str, row: int, value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def mutate(df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        if isinstance(value, str) and df[column].dtype != object:
            df[column] = df[column].astype(object)
        df.loc[row, column] = value
        return df

    return mutate


def _as_text_with(column: str, row: int, text: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """What read_csv makes of a numeric column with one non-number in it."""

    def mutate(df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        df[column] = df[column].astype(str).astype(object)
        df.loc[row, column] = text
        return df

    return mutate


def _nulls(column: str, rows: list[int]) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def mutate(df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        if df[column].dtype.kind in "iu":
            df[column] = df[column].astype("float64")  # as read_csv does with gaps
        df.loc[rows, column] = None
        return df

    return mutate


def _duplicate_ids(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df.loc[[7, 9], "booking_id"] = df.loc[3, "booking_id"]
    return df


def _at(ts: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    return _set("booking_ts", 4, pd.Timestamp(ts, tz="UTC"))


BAD_INPUTS = [
    # (mutation, expectation, column, an example that must be reported or None)
    pytest.param(
        lambda df: df.drop(columns=["adr"]), COLUMNS_MATCH, None, "adr", id="missing-column"
    ),
    pytest.param(
        lambda df: df.assign(surprise=1), COLUMNS_MATCH, None, "surprise", id="extra-column"
    ),
    pytest.param(_as_text_with("adr", 5, "abc"), DTYPE, "adr", "abc", id="wrong-dtype"),
    pytest.param(_nulls("customer_id", [2, 3, 4]), NOT_NULL, "customer_id", None, id="nulls"),
    pytest.param(_set("lead_time", 6, -5), BETWEEN, "lead_time", -5, id="negative-lead-time"),
    pytest.param(_set("adr", 8, -12.5), BETWEEN, "adr", -12.5, id="negative-adr"),
    pytest.param(_duplicate_ids, UNIQUE, "booking_id", "B3", id="duplicate-ids"),
    pytest.param(
        lambda df: df.iloc[:0].astype(object), ROW_COUNT, None, None, id="empty-header-only"
    ),
    pytest.param(lambda df: pd.DataFrame(), ROW_COUNT, None, None, id="no-columns"),
    pytest.param(
        _at("2024-04-30T23:59:59"),
        BETWEEN,
        "booking_ts",
        "2024-04-30T23:59:59+00:00",
        id="timestamp-before-interval",
    ),
    pytest.param(
        _at("2099-01-01T00:00:00"),
        BETWEEN,
        "booking_ts",
        "2099-01-01T00:00:00+00:00",
        id="timestamp-in-future",
    ),
    pytest.param(
        _set("booking_ts", 4, pd.Timestamp(END)),
        BETWEEN,
        "booking_ts",
        END.isoformat(),
        id="timestamp-at-interval-end",
    ),
    pytest.param(_set("hotel", 10, "H99"), IN_SET, "hotel", "H99", id="unknown-category"),
    pytest.param(
        lambda df: df.drop(columns=["is_canceled"]),
        COLUMNS_MATCH,
        None,
        "is_canceled",
        id="label-absent",
    ),
    pytest.param(_nulls("is_canceled", [1, 2]), NOT_NULL, "is_canceled", None, id="label-nulls"),
    pytest.param(_set("is_canceled", 11, 2), IN_SET, "is_canceled", 2, id="label-not-binary"),
]


@pytest.mark.parametrize(("mutate", "expectation", "column", "example"), BAD_INPUTS)
def test_bad_input_is_named(
    usecase: UseCase,
    mutate: Callable[[pd.DataFrame], pd.DataFrame],
    expectation: str,
    column: str | None,
    example: object,
) -> None:
    result = run(mutate(good_frame(usecase)), usecase)
    assert not result.success
    check = check_for(result, expectation, column)
    assert check.evaluated
    if example is not None:
        assert example in check.examples, check
    if column is not None:
        assert check.description.startswith(f"{column}: ")
    assert check.label in result.summary()
    json.dumps(result.to_dict())  # JSON-safe whatever went wrong


def test_missing_and_extra_columns_are_both_named(usecase: UseCase) -> None:
    df = good_frame(usecase).drop(columns=["adr", "hotel"]).assign(extra_a=1)
    check = check_for(run(df, usecase), COLUMNS_MATCH, None)
    assert check.description == "missing columns: adr, hotel; unexpected columns: extra_a"
    assert check.examples == ["adr", "hotel", "extra_a"]


def test_checks_on_a_missing_column_are_reported_not_evaluated(usecase: UseCase) -> None:
    result = run(good_frame(usecase).drop(columns=["lead_time"]), usecase)
    range_check = check_for(result, BETWEEN, "lead_time")
    assert not range_check.evaluated
    assert "column is missing" in range_check.description
    assert "not evaluated (column is missing): lead_time" in result.summary()


def test_wrong_dtype_names_the_dtype_and_skips_the_range_check(usecase: UseCase) -> None:
    result = run(_as_text_with("adr", 5, "abc")(good_frame(usecase)), usecase)
    dtype = check_for(result, DTYPE, "adr")
    assert "dtype is object" in dtype.description
    assert "'abc'" in dtype.description
    assert dtype.examples == ["abc"]  # the numbers written as text are not blamed
    range_check = check_for(result, BETWEEN, "adr")
    assert not range_check.evaluated
    assert "dtype object" in range_check.description
    assert "dtype is object" in result.summary()


def test_counts_and_distinct_examples(usecase: UseCase) -> None:
    df = good_frame(usecase)
    df.loc[[1, 2, 3], "hotel"] = "H99"
    df.loc[4, "hotel"] = "H77"
    df = _duplicate_ids(df)
    result = run(df, usecase)
    hotel = check_for(result, IN_SET, "hotel")
    assert hotel.unexpected_count == 4
    assert hotel.examples == ["H99", "H77"]
    assert "4 of 50 values" in hotel.description
    ids = check_for(result, UNIQUE, "booking_id")
    assert ids.unexpected_count == 3
    assert ids.examples == ["B3"]


def test_header_only_csv_reports_only_emptiness(usecase: UseCase, tmp_path: Path) -> None:
    path = tmp_path / "2024-05-01.csv"
    good_frame(usecase).iloc[:0].to_csv(path, index=False)
    result = run(read_batch(path, usecase), usecase)
    assert [f.expectation for f in result.failed] == [ROW_COUNT]
    assert result.failed[0].description == "the batch has no rows"


def test_zero_byte_file_fails_cleanly(usecase: UseCase, tmp_path: Path) -> None:
    path = tmp_path / "2024-05-01.csv"
    path.write_bytes(b"")
    result = run(read_batch(path, usecase), usecase)
    assert not result.success
    assert result.row_count == 0
    assert [f.expectation for f in result.failed if f.evaluated] == [COLUMNS_MATCH, ROW_COUNT]
    assert all(not f.evaluated for f in result.failed[2:])
    assert "empty file" in result.summary()


def test_result_round_trips_through_json(usecase: UseCase) -> None:
    result = run(_at("2099-01-01T00:00:00")(good_frame(usecase)), usecase)
    again = ValidationResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result
    assert again.summary() == result.summary()
    error = DataValidationError(again)
    assert "expect_column_values_to_be_between(booking_ts)" in str(error)
    assert "data interval" in str(error)


def test_unreadable_result() -> None:
    result = unreadable_result(Path("/landing/2024-05-01.csv"), "ParserError: bad quoting")
    assert not result.success
    assert result.checks_total == 1
    (check,) = result.failed
    assert check.expectation == "file_is_readable"
    assert "2024-05-01.csv" in check.description and "bad quoting" in check.description
    assert result.summary().startswith("batch failed 1 of 1 checks: file_is_readable: ")
    assert ValidationResult.from_dict(result.to_dict()) == result


# -- quarantine -------------------------------------------------------------------------------


def _landed(tmp_path: Path, text: str = "booking_id\nB1\n") -> Path:
    landing = tmp_path / "landing"
    landing.mkdir(exist_ok=True)
    path = landing / "2024-05-01.csv"
    path.write_text(text)
    return path


def test_quarantine_moves_the_file_and_writes_the_report(tmp_path: Path) -> None:
    batch = _landed(tmp_path)
    result = unreadable_result(batch, "broken")
    folder = quarantine_batch(batch, result, tmp_path / "quarantine", "2024-05-01")
    assert folder == tmp_path / "quarantine" / "2024-05-01"
    assert not batch.exists()
    assert (folder / "2024-05-01.csv").read_text() == "booking_id\nB1\n"
    report = json.loads((folder / "report.json").read_text())
    assert report["original_path"] == str(batch)
    assert report["file_name"] == "2024-05-01.csv"
    assert report["failed"][0]["expectation"] == "file_is_readable"
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []
    assert load_quarantine_report(tmp_path / "quarantine", "2024-05-01") == result
    assert load_quarantine_report(tmp_path / "quarantine", "2024-05-02") is None


def test_quarantine_is_idempotent_on_retry(tmp_path: Path) -> None:
    batch = _landed(tmp_path)
    result = unreadable_result(batch, "broken")
    quarantine = tmp_path / "quarantine"
    folder = quarantine_batch(batch, result, quarantine, "k")
    first = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert quarantine_batch(batch, result, quarantine, "k") == folder  # file already moved
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == first


def test_quarantine_replaces_the_copy_when_a_newer_file_lands(tmp_path: Path) -> None:
    quarantine = tmp_path / "quarantine"
    batch = _landed(tmp_path, "old\n")
    quarantine_batch(batch, unreadable_result(batch, "old"), quarantine, "k")
    batch = _landed(tmp_path, "new\n")
    folder = quarantine_batch(batch, unreadable_result(batch, "new"), quarantine, "k")
    assert not batch.exists()
    assert (folder / "2024-05-01.csv").read_text() == "new\n"
    report = load_quarantine_report(quarantine, "k")
    assert report is not None and "new" in report.failed[0].description


def test_quarantine_without_any_file_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        quarantine_batch(
            tmp_path / "nothing.csv", unreadable_result(tmp_path, "x"), tmp_path / "q", "k"
        )


# -- a file context: Data Docs ----------------------------------------------------------------


def test_data_docs_are_written_for_every_validation(usecase: UseCase, tmp_path: Path) -> None:
    gx_dir = tmp_path / "gx"
    good = good_frame(usecase)
    passed = run(good, usecase, gx_dir=gx_dir, run_name="2024-05-01")
    failed = run(_at("2099-01-01T00:00:00")(good), usecase, gx_dir=gx_dir, run_name="2024-05-02")
    again = run(good, usecase, gx_dir=gx_dir, run_name="2024-05-01")  # a re-run

    assert passed.success and again.success
    assert not failed.success
    assert failed_pairs(failed) == {(BETWEEN, "booking_ts")}
    pages = [Path(r.data_docs) for r in (passed, failed, again) if r.data_docs]
    assert len(pages) == 3 and len(set(pages)) == 3
    for page in pages:
        assert page.suffix == ".html" and page.is_file()
        assert gx_dir in page.parents
        assert "validations" in page.parts
    assert "2099" in pages[1].read_text()
    # replaced by name on re-runs, not duplicated
    root = gx_dir / "gx"  # GX's file context lives in <project root>/gx
    for store in ("expectations", "checkpoints", "validation_definitions"):
        assert len(list((root / store).glob("*.json"))) == 1, store

    # the quarantine keeps a copy of the page
    batch = _landed(tmp_path)
    folder = quarantine_batch(batch, failed, tmp_path / "quarantine", "2024-05-02")
    assert (folder / "data_docs.html").read_text() == pages[1].read_text()
    assert json.loads((folder / "report.json").read_text())["data_docs"] == str(pages[1])


# -- the training set -------------------------------------------------------------------------

TRAIN_ROWS = 600  # above the default policy's min_rows (500)
AGGREGATES = ["cust_bookings", "cust_cancel_rate", "hotel_bookings_7d"]


def training_features(usecase: UseCase) -> list[str]:
    return [*usecase.feature_columns, *AGGREGATES]


def good_training_frame(usecase: UseCase, rows: int = TRAIN_ROWS) -> pd.DataFrame:
    """What the historical join returns: the batch columns plus aggregate features."""
    df = good_frame(usecase, rows)
    i = np.arange(rows)
    df["cust_bookings"] = (i % 9).astype("int64")
    df["cust_cancel_rate"] = (i % 10 + 1) / 12.0
    df["hotel_bookings_7d"] = (40 + i % 30).astype("int64")
    return df


def train(df: pd.DataFrame, usecase: UseCase, **kwargs: object) -> ValidationResult:
    return validate_training_set(df, usecase, features=training_features(usecase), **kwargs)


def test_good_training_set_passes(usecase: UseCase) -> None:
    df = good_training_frame(usecase)
    df.loc[3, "hotel"] = "H99"  # a new category is drift, not a broken training set
    df["not_a_feature"] = None  # columns outside features are not checked
    result = train(df, usecase)
    assert result.success, result.summary()
    assert result.failed == []
    assert result.row_count == TRAIN_ROWS
    assert result.subject == "training set"
    declared_ranges = [
        c for c in usecase.feature_columns if usecase.columns[c].min is not None
    ]  # row count + label (not null, in set, rate) + per feature not-null + ranges
    features = training_features(usecase)
    assert result.checks_total == 4 + len(features) + len(declared_ranges)
    assert result.summary() == (
        f"training set passed all {result.checks_total} checks ({TRAIN_ROWS} rows)"
    )
    assert result.data_docs is None


def _label(value: int) -> Callable[[pd.DataFrame], pd.DataFrame]:
    return lambda df: df.assign(is_canceled=value)


BAD_TRAINING_SETS = [
    # (mutation, expectation, column, a phrase of the description, an example or None)
    pytest.param(
        lambda df: df.head(120),
        ROW_COUNT,
        None,
        "has 120 rows, fewer than the required 500",
        120,
        id="too-few-rows",
    ),
    pytest.param(
        _label(0),
        MEAN,
        "is_canceled",
        "positive rate is 0, expected within [0.05, 0.95]",
        0.0,
        id="no-positives",
    ),
    pytest.param(
        _label(1),
        MEAN,
        "is_canceled",
        "positive rate is 1, expected within [0.05, 0.95]",
        1.0,
        id="all-positives",
    ),
    pytest.param(
        _set("is_canceled", 11, 2), IN_SET, "is_canceled", "not 0 or 1", 2, id="label-not-binary"
    ),
    pytest.param(
        _nulls("is_canceled", [1, 2]),
        NOT_NULL,
        "is_canceled",
        "2 of 600 values are null",
        None,
        id="label-nulls",
    ),
    pytest.param(
        _nulls("cust_cancel_rate", [5]),
        NOT_NULL,
        "cust_cancel_rate",
        "1 of 600 values are null (the feature is missing",
        None,
        id="null-aggregate",
    ),
    pytest.param(
        _nulls("hotel", [7, 8]),
        NOT_NULL,
        "hotel",
        "2 of 600 values are null",
        None,
        id="null-categorical",
    ),
    pytest.param(
        _set("lead_time", 6, 9999),
        BETWEEN,
        "lead_time",
        "outside [0, 730]",
        9999,
        id="lead-time-out-of-range",
    ),
    pytest.param(
        _set("adr", 8, -12.5), BETWEEN, "adr", "outside [0, 5000]", -12.5, id="negative-adr"
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expectation", "column", "phrase", "example"), BAD_TRAINING_SETS
)
def test_bad_training_set_is_named(
    usecase: UseCase,
    mutate: Callable[[pd.DataFrame], pd.DataFrame],
    expectation: str,
    column: str | None,
    phrase: str,
    example: object,
) -> None:
    result = train(mutate(good_training_frame(usecase)), usecase)
    assert not result.success
    assert len(result.failed) == 1, result.summary()
    check = check_for(result, expectation, column)
    assert check.evaluated
    assert phrase in check.description, check.description
    if example is not None:
        assert example in check.examples, check
    summary = result.summary()
    assert summary.startswith(f"training set failed 1 of {result.checks_total} checks: ")
    assert check.label in summary
    again = ValidationResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result and again.summary() == summary


def test_training_set_policy_and_missing_feature(usecase: UseCase) -> None:
    df = good_training_frame(usecase, rows=40)  # 20 positives: rate 0.5
    policy = TrainingSetPolicy(min_rows=10, min_positive_rate=0.6, max_positive_rate=0.9)
    features = [*training_features(usecase), "cust_lifetime_value"]
    result = validate_training_set(df, usecase, features=features, policy=policy)
    assert failed_pairs(result) == {(MEAN, "is_canceled"), (NOT_NULL, "cust_lifetime_value")}
    assert "positive rate is 0.5, expected within [0.6, 0.9]" in result.summary()
    missing = check_for(result, NOT_NULL, "cust_lifetime_value")
    assert not missing.evaluated and "column is missing" in missing.description
    with pytest.raises(ValueError, match="positive_rate"):
        TrainingSetPolicy(min_positive_rate=0.9, max_positive_rate=0.1)


def test_training_set_data_docs(usecase: UseCase, tmp_path: Path) -> None:
    gx_dir = tmp_path / "gx"
    df = _set("lead_time", 6, 9999)(good_training_frame(usecase))
    result = train(df, usecase, gx_dir=gx_dir, run_name="train-2024-05-01")
    assert failed_pairs(result) == {(BETWEEN, "lead_time")}
    assert result.data_docs is not None
    page = Path(result.data_docs)
    assert page.suffix == ".html" and page.is_file() and gx_dir in page.parents
    assert "validations" in page.parts
    html = page.read_text()
    assert f"{usecase.name}_training_set" in html and "9999" in html
    suites = list((gx_dir / "gx" / "expectations").glob("*.json"))
    assert [p.stem for p in suites] == [f"{usecase.name}_training_set"]
