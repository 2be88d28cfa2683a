"""The landed batch's GX gate on Spark (``compute: spark``: the batch staged in chunks by
``stage_batch``, the suite run by GX's Spark engine, ``validate_batch_on_spark``)
against the pandas path (``validate_batch`` on ``read_batch``'s frame): for a good batch
and one of each kind of bad one, written as CSV, the same verdict, checks, rows and
named failures (check, column, description, count, whether it ran) and examples.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

import pandas as pd
import pytest

from closedloop.core import batches
from closedloop.core.batches import read_batch, stage_batch
from closedloop.core.validation import validate_batch, validate_batch_on_spark
from closedloop.usecases.hotel.generator import generate_day

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.integration

DAY = date(2026, 1, 5)
START = datetime.combine(DAY, datetime.min.time(), UTC)
END = START + timedelta(days=1)

COLUMNS = "expect_table_columns_to_match_set"
ROW_COUNT = "expect_table_row_count_to_be_between"
DTYPE = "expect_column_dtype_to_be_in_type_list"
NOT_NULL = "expect_column_values_to_not_be_null"
BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"
UNIQUE = "expect_column_values_to_be_unique"


@pytest.fixture(scope="module")
def settings(spark_home):
    return spark_home


@pytest.fixture(scope="module")
def text() -> pd.DataFrame:
    """A day's batch as the CSV's text (every value a string, a gap an empty one)."""
    day = generate_day(DAY, rows_per_day=300)
    return day.astype(str).replace({"NaT": "", "nan": "", "None": ""})


def _cell(column: str, rows: list[int], value: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def mutate(df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        df.loc[rows, column] = value
        return df

    return mutate


def _duplicate(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df.loc[[150, 290], "booking_id"] = df.loc[3, "booking_id"]
    return df


CASES = [
    pytest.param(lambda df: df, set(), id="good"),
    pytest.param(_cell("adr", [250], "abc"), {(DTYPE, "adr"), (BETWEEN, "adr")}, id="text-in-adr"),
    pytest.param(_cell("lead_time", [260], "2.5"), {(DTYPE, "lead_time")}, id="fraction-in-int"),
    pytest.param(
        _cell("lead_time", [270], ""), {(DTYPE, "lead_time"), (NOT_NULL, "lead_time")}, id="gap"
    ),
    pytest.param(_cell("customer_id", [2, 200], ""), {(NOT_NULL, "customer_id")}, id="nulls"),
    pytest.param(_cell("lead_time", [6, 280], "-5"), {(BETWEEN, "lead_time")}, id="negative"),
    pytest.param(_duplicate, {(UNIQUE, "booking_id")}, id="duplicate-ids"),
    pytest.param(_cell("hotel", [10, 210], "H99"), {(IN_SET, "hotel")}, id="unknown-category"),
    pytest.param(
        _cell("booking_ts", [4, 240], "2026-01-04T23:59:59+00:00"),
        {(BETWEEN, "booking_ts")},
        id="before-the-interval",
    ),
    pytest.param(
        _cell("booking_ts", [230], "not a time"), {(NOT_NULL, "booking_ts")}, id="not-a-time"
    ),
    pytest.param(
        _cell("is_canceled", [11], "2"),
        {(IN_SET, "is_canceled"), (BETWEEN, "is_canceled")},
        id="label-2",
    ),
    pytest.param(
        lambda df: df.drop(columns=["adr"]).assign(surprise="1"),
        {(COLUMNS, None), (DTYPE, "adr"), (NOT_NULL, "adr"), (BETWEEN, "adr")},
        id="missing-and-extra-column",
    ),
]


def _facts(result):
    failed = [
        (f.expectation, f.column, f.description, f.unexpected_count, f.evaluated, f.examples)
        for f in result.failed
    ]
    return result.success, result.checks_total, result.row_count, failed


@pytest.mark.parametrize(("mutate", "failing"), CASES)
def test_spark_gives_the_pandas_result(settings, text, tmp_path, monkeypatch, mutate, failing):
    from closedloop.core.spark import session

    monkeypatch.setattr(batches, "CHUNK_ROWS", 128)  # a few chunks
    usecase = settings.usecase
    path = tmp_path / f"{DAY.isoformat()}.csv"
    mutate(text).to_csv(path, index=False)
    staged = tmp_path / "read.parquet"
    assert stage_batch(path, usecase, staged)[0] == len(text)
    bounds = {"interval_start": START, "interval_end": END}

    on_pandas = validate_batch(read_batch(path, usecase), usecase, **bounds)
    on_spark = validate_batch_on_spark(session(settings), str(staged), usecase, **bounds)

    assert {(f.expectation, f.column) for f in on_pandas.failed} == failing, on_pandas.summary()
    assert _facts(on_spark) == _facts(on_pandas)


def test_the_validate_step_on_spark_quarantines_a_bad_batch_with_its_report(settings, text):
    """``extract`` stages the landed file, ``validate`` runs the suite on Spark and, on a
    failure, moves the file to quarantine with the report; a rerun of ``extract`` fails
    with the stored report."""
    from closedloop.core.errors import DataValidationError
    from closedloop.core.feature_pipeline import extract, validate
    from closedloop.core.quarantine import load_quarantine_report

    key = settings.usecase.interval_key(START)
    landed = settings.landing_dir / f"{key}.csv"
    landed.parent.mkdir(parents=True, exist_ok=True)
    _cell("hotel", [10, 210], "H99")(text).to_csv(landed, index=False)
    assert extract(settings, START, END)["rows"] == len(text)
    with pytest.raises(DataValidationError) as failed:
        validate(settings, START, END, run_name="spark-quarantine", docs=False)
    assert [(f.expectation, f.column) for f in failed.value.result.failed] == [(IN_SET, "hotel")]
    assert failed.value.result.failed[0].examples == ["H99"]
    assert not landed.exists()
    report = load_quarantine_report(settings.quarantine_dir, key)
    assert report is not None and report.failed == failed.value.result.failed
    with pytest.raises(DataValidationError):
        extract(settings, START, END)
