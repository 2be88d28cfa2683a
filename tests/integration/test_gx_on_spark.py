"""The training set's GX gate on Spark (``validate_training_set_on_spark``: GX's Spark
execution engine on the Parquet snapshot) against the pandas path
(``validate_training_set`` on the frame ``pd.read_parquet`` gives): on the same
snapshot, good and broken, the same verdict, number of checks, rows and named failures
(check, column, description, count, examples), in an ephemeral context and in one GX
folder both engines share; and ``validate_training`` takes the Spark path under
``compute: spark``.

The snapshot is the hotel generator's events with a float aggregate, written by pandas
as the training pipeline writes it (nanosecond timestamps, which Spark reads only as
longs); one case stores NaN as a Parquet value rather than a null.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from closedloop.core.derive import event_table
from closedloop.core.errors import DataValidationError
from closedloop.core.gate import TrainingSetPolicy
from closedloop.core.payloads import TrainingSetRef
from closedloop.core.training_pipeline import validate_training
from closedloop.core.validation import (
    DATASOURCE,
    SPARK_DATASOURCE,
    ValidationResult,
    validate_training_set,
    validate_training_set_on_spark,
)
from closedloop.usecases.hotel.generator import generate_day

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.integration

START = date(2026, 1, 5)
DAYS = 6
LABEL = "is_canceled"
AGGREGATE = "hotel_cancel_rate_30d"  # a float feature without declared bounds

ROW_COUNT = "expect_table_row_count_to_be_between"
NOT_NULL = "expect_column_values_to_not_be_null"
BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"
MEAN = "expect_column_mean_to_be_between"


@pytest.fixture(scope="module")
def settings(spark_home):
    return spark_home


@pytest.fixture(scope="module")
def spark(settings):
    from closedloop.core.spark import session

    return session(settings)


@pytest.fixture(scope="module")
def features(settings) -> list[str]:
    return [*settings.usecase.feature_columns, AGGREGATE]


@pytest.fixture(scope="module")
def policy(settings) -> TrainingSetPolicy:
    return TrainingSetPolicy(**settings.usecase.model.training_set)


@pytest.fixture(scope="module")
def good_frame(settings) -> pd.DataFrame:
    """A training frame as the historical join gives it (event time, features, label)."""
    days = [generate_day(START + timedelta(d), rows_per_day=150) for d in range(DAYS)]
    df = event_table(pd.concat(days, ignore_index=True), settings.usecase)
    df = df.rename(columns={settings.usecase.batch.timestamp_column: "event_timestamp"})
    df[AGGREGATE] = np.linspace(0.1, 0.6, len(df))
    return df


def _at(column: str, rows: list[int], value: Any) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def mutate(df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        df.loc[rows, column] = value
        return df

    return mutate


def _broken_values(df: pd.DataFrame) -> pd.DataFrame:
    """Nulls in an int, a float and a string feature, values out of their declared
    ranges, a label that is neither 0 nor 1."""
    for column, rows, value in [
        ("lead_time", [3, 4, 5], None),  # the int column becomes float with nulls
        (AGGREGATE, [7, 8], None),
        ("market_segment", [9], None),
        ("lead_time", [6], 9999),
        ("adr", [8, 11], -12.5),
        (LABEL, [3, 17], 2),
    ]:
        df = _at(column, rows, value)(df)
    return df


BROKEN_VALUES = {
    (NOT_NULL, "lead_time"),
    (NOT_NULL, AGGREGATE),
    (NOT_NULL, "market_segment"),
    (BETWEEN, "lead_time"),
    (BETWEEN, "adr"),
    (IN_SET, LABEL),
}

CASES = [
    # (mutation, NaN stored as a value instead of a null, the failed checks)
    pytest.param(lambda df: df, False, set(), id="good"),
    pytest.param(_broken_values, False, BROKEN_VALUES, id="nulls-ranges-label"),
    pytest.param(
        lambda df: df.drop(columns="adr").assign(**{LABEL: 0}),
        False,
        {(MEAN, LABEL), (NOT_NULL, "adr"), (BETWEEN, "adr")},
        id="no-positives-and-a-missing-feature",
    ),
    pytest.param(
        lambda df: _at(AGGREGATE, [1, 2], np.nan)(df.head(120)),
        True,
        {(ROW_COUNT, None), (NOT_NULL, AGGREGATE)},
        id="too-few-rows-and-nan-stored",
    ),
]


def _write(df: pd.DataFrame, path: Path, *, nan_values: bool) -> str:
    """``df.to_parquet``; with ``nan_values`` the float columns keep NaN as a value."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    if nan_values:
        for i, name in enumerate(table.column_names):
            if pa.types.is_floating(table.schema.field(i).type):
                values = pa.array(df[name].to_numpy(), from_pandas=False)
                table = table.set_column(i, table.schema.field(i), values)
    pq.write_table(table, path)
    if nan_values:  # what the case is about: NaN values in the file, no nulls
        stored = pq.read_table(path, columns=[AGGREGATE]).column(0)
        assert stored.null_count == 0 and pc.any(pc.is_nan(stored)).as_py()
    return str(path)


def _facts(result: ValidationResult) -> tuple:
    """What the gate reports but its Data Docs page and examples."""
    failed = [
        (f.expectation, f.column, f.description, f.unexpected_count, f.evaluated)
        for f in result.failed
    ]
    return result.success, result.checks_total, result.row_count, result.subject, failed


def _same(got: ValidationResult, expected: ValidationResult) -> None:
    """The same facts, and per failed check the same examples in any order (a positive
    rate to within float rounding: Spark and pandas sum in different orders)."""
    assert _facts(got) == _facts(expected)
    for check, want in zip(got.failed, expected.failed, strict=True):
        examples, wanted = (sorted(c.examples, key=repr) for c in (check, want))
        numeric = all(isinstance(x, (int, float)) for x in wanted)
        assert examples == (pytest.approx(wanted) if numeric else wanted), check.label


@pytest.mark.parametrize(("mutate", "nan_values", "failing"), CASES)
def test_spark_gives_the_pandas_result(
    spark, settings, features, policy, good_frame, tmp_path, mutate, nan_values, failing
):
    df = mutate(good_frame)
    uri = _write(df, tmp_path / "training_set.parquet", nan_values=nan_values)
    usecase = settings.usecase
    options = {"features": features, "policy": policy}

    on_pandas = validate_training_set(pd.read_parquet(uri), usecase, **options)
    on_spark = validate_training_set_on_spark(spark, uri, usecase, **options)

    assert {(f.expectation, f.column) for f in on_pandas.failed} == failing, on_pandas.summary()
    assert on_pandas.success == (not failing)
    assert on_pandas.row_count == len(df)
    _same(on_spark, on_pandas)


def test_validate_training_runs_on_spark_under_compute_spark(
    spark, settings, features, good_frame, tmp_path
):
    """The pipeline's step with the home's GX folder (checkpoint and Data Docs), under
    ``compute: spark`` and ``local`` in turn: one result, a page each, each engine its
    data source in the folder, and the session's Parquet property put back after."""
    import great_expectations as gx

    from closedloop.core.validation import _NANOS_AS_LONG

    local = settings.model_copy(update={"compute": "local"})
    good = TrainingSetRef(
        uri=_write(good_frame, tmp_path / "good.parquet", nan_values=False),
        digest="-",
        rows=len(good_frame),
        positive_rate=0.5,
        window_start="-",
        window_end="-",
        feature_service=settings.usecase.feature_service,
        feature_views=[],
        features=features,
    )
    bad = replace(
        good, uri=_write(_broken_values(good_frame), tmp_path / "bad.parquet", nan_values=False)
    )

    on_spark = ValidationResult.from_dict(validate_training(settings, good, "good-spark"))
    on_pandas = ValidationResult.from_dict(validate_training(local, good, "good-local"))
    with pytest.raises(DataValidationError) as spark_error:
        validate_training(settings, bad, "bad-spark")
    with pytest.raises(DataValidationError) as pandas_error:
        validate_training(local, bad, "bad-local")

    assert on_spark.success and on_spark.row_count == len(good_frame)
    _same(on_spark, on_pandas)
    failed_on_spark, failed_on_pandas = spark_error.value.result, pandas_error.value.result
    assert {(f.expectation, f.column) for f in failed_on_pandas.failed} == BROKEN_VALUES
    _same(failed_on_spark, failed_on_pandas)
    pages = [r.data_docs for r in (on_spark, on_pandas, failed_on_spark, failed_on_pandas)]
    assert all(p and Path(p).is_file() for p in pages) and len(set(pages)) == 4
    context = gx.get_context(mode="file", project_root_dir=str(settings.gx_dir))
    assert {s.name for s in context.data_sources.all().values()} == {DATASOURCE, SPARK_DATASOURCE}
    assert context.data_sources.get(SPARK_DATASOURCE).type == "spark"
    assert [s.name for s in context.suites.all()] == [f"{settings.usecase.name}_training_set"]
    assert spark.conf.get(_NANOS_AS_LONG, None) is None


def test_spark_reads_the_snapshot_as_pandas_does(spark, good_frame, tmp_path):
    """Nanosecond timestamps (Spark reads them only as longs) come back as timestamps,
    NaN stored as a value as null, like ``pd.read_parquet``; the session's Parquet
    property is put back after."""
    from closedloop.core.validation import _NANOS_AS_LONG, _spark_snapshot

    df = _at(AGGREGATE, [1, 2], np.nan)(good_frame.head(50))
    uri = _write(df, tmp_path / "training_set.parquet", nan_values=True)
    with _spark_snapshot(spark, uri) as sdf:
        got = sdf.select("event_timestamp", "arrival_date").toPandas()
        nulls = sdf.where(sdf[AGGREGATE].isNull()).count()
    assert spark.conf.get(_NANOS_AS_LONG, None) is None

    expected = pd.read_parquet(uri, columns=["event_timestamp", "arrival_date"])
    for column in ("event_timestamp", "arrival_date"):
        assert got[column].dt.tz_localize("UTC").tolist() == expected[column].tolist(), column
    assert nulls == 2
