"""The data-validation gate: Great Expectations suites derived from the use case
(:mod:`closedloop.core.suites`), run on a landed batch or a training set, condensed into
a :class:`~closedloop.core.validation_result.ValidationResult`.

``validate_batch`` runs the batch suite (exactly the declared columns, at least one row,
per column its dtype, nulls, range, categories and uniqueness, timestamps inside the
data interval, the label 0 or the positive class); ``validate_training_set`` the
training-set suite (row count, label and its positive rate within
:class:`TrainingSetPolicy`, no null feature, declared ranges), on a pandas frame, or with
``validate_training_set_on_spark`` on a Parquet snapshot by GX's Spark engine (the rows
stay in Spark). A failed check is named with examples; one that cannot run (missing
column, wrong dtype) is *not evaluated*, with the reason. ``gx_dir=None`` validates in an
ephemeral context; ``gx_dir=<folder>`` keeps the suite, checkpoint and Data Docs there.
GX is imported inside functions only. How the gate stays within 3x plain pandas:
docs/design.md.

One module of this size: running GX and reading its result share the check bookkeeping.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import pandas as pd

from closedloop.core.gate import TrainingSetPolicy
from closedloop.core.suites import (
    META,
    Check,
    build_suite,
    build_training_suite,
    gx_namespace,
    to_utc,
)
from closedloop.core.usecase import ACCEPTED_DTYPES
from closedloop.core.validation_result import (
    FailedCheck,
    ValidationResult,
    distinct_examples,
    json_safe,
    unreadable_result,
)

__all__ = [
    "FailedCheck",
    "TrainingSetPolicy",
    "ValidationResult",
    "build_suite",
    "build_training_suite",
    "unreadable_result",
    "validate_batch",
    "validate_training_set",
    "validate_training_set_on_spark",
]

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from closedloop.core.usecase import UseCase

logger = logging.getLogger(__name__)

#: Unexpected values GX returns per check; more than MAX_EXAMPLES so that duplicates
#: (e.g. both rows of a duplicated id, or one unknown category repeated) still leave
#: up to MAX_EXAMPLES *distinct* examples.
PARTIAL_UNEXPECTED = 20
VERDICT_FORMAT: dict[str, Any] = {"result_format": "BOOLEAN_ONLY"}
RESULT_FORMAT: dict[str, Any] = {
    "result_format": "BASIC",
    "partial_unexpected_count": PARTIAL_UNEXPECTED,
    "include_unexpected_rows": False,
}
#: Skip GX's md5 fingerprint of in-memory frames (a batch marker, not a check). It costs
#: about as much as all the checks together on a 1M-row frame. The benchmark flips this to
#: show GX's default cost too.
SKIP_DATA_FINGERPRINT = True

DATASOURCE = "closedloop"
#: the Spark data source of the same assets, beside the pandas one in a shared GX folder
SPARK_DATASOURCE = "closedloop_spark"
ASSET = "landed_batch"
TRAINING_ASSET = "training_set"
BATCH_DEFINITION = "whole_batch"
DOCS_SITE = "local_site"

_NUMERIC_DTYPES = {"int8", "int16", "int32", "int64", "Int64", "float32", "float64", "Float64"}
#: Spark reads Parquet's nanosecond timestamps (pandas writes them) only as longs, and
#: only while this session property is set
_NANOS_AS_LONG = "spark.sql.legacy.parquet.nanosAsLong"


@dataclass(frozen=True)
class _Frame:
    """What a suite runs on: a pandas frame, or a Spark DataFrame that GX's Spark engine
    reads where it lies; its columns and number of rows."""

    data: Any
    columns: tuple[str, ...]
    rows: int
    engine: str = "pandas"  # "pandas" | "spark"

    @classmethod
    def of(cls, df: pd.DataFrame) -> _Frame:
        return cls(df, tuple(map(str, df.columns)), len(df))


# -- running it -----------------------------------------------------------------------


@contextlib.contextmanager
def _fast_pandas() -> Iterator[None]:
    """Copy-on-Write while GX runs, and no fingerprint of the frame (see module doc).

    Both are process-wide settings, so runs in threads of one process take turns.
    """
    from great_expectations.execution_engine import pandas_execution_engine as pee

    with _RUN_LOCK:
        threshold = pee.HASH_THRESHOLD
        if SKIP_DATA_FINGERPRINT:
            pee.HASH_THRESHOLD = 0  # GX fingerprints frames smaller than this
        try:
            with pd.option_context("mode.copy_on_write", True):
                yield
        finally:
            pee.HASH_THRESHOLD = threshold


_RUN_LOCK = threading.RLock()


def _quiet(context: Any) -> None:
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)


def validate_batch(
    df: pd.DataFrame,
    usecase: UseCase,
    *,
    interval_start: datetime,
    interval_end: datetime,
    gx_dir: Path | None = None,
    run_name: str = "adhoc",
) -> ValidationResult:
    """Run the use case's suite on a batch (as read by ``read_batch``)."""
    suite, target = _batch_suite(usecase, interval_start, interval_end)
    return _validate(_Frame.of(df), suite, target, gx_dir, run_name)


def _batch_suite(usecase: UseCase, start: datetime, end: datetime) -> tuple[Any, _Target]:
    suite = build_suite(usecase, start, end, f"{usecase.name}_batch")
    return suite, _Target("batch", ASSET, usecase, to_utc(start), to_utc(end))


def validate_batch_on_spark(
    spark: Any,
    uri: str,
    usecase: UseCase,
    *,
    interval_start: datetime,
    interval_end: datetime,
    gx_dir: Path | None = None,
    run_name: str = "adhoc",
) -> ValidationResult:
    """:func:`validate_batch` on the batch staged as Parquet at ``uri``
    (:func:`~closedloop.core.batches.stage_batch`), run by GX's Spark execution engine in
    the SparkSession ``spark``: the same suite and checks, no row in this process."""
    suite, target = _batch_suite(usecase, interval_start, interval_end)
    with _spark_snapshot(spark, uri) as sdf:
        frame = _Frame(sdf, tuple(sdf.columns), sdf.count(), "spark")
        return _validate(frame, suite, target, gx_dir, run_name)


def validate_training_set(
    df: pd.DataFrame,
    usecase: UseCase,
    *,
    features: Sequence[str],
    policy: TrainingSetPolicy | None = None,
    gx_dir: Path | None = None,
    run_name: str = "adhoc",
) -> ValidationResult:
    """Run the training-set suite on a training frame (label + ``features``, after the join).

    Columns of ``df`` that are neither the label nor in ``features`` (entity keys, event
    timestamps) are not checked.
    """
    return _validate_training(_Frame.of(df), usecase, features, policy, gx_dir, run_name)


def validate_training_set_on_spark(
    spark: Any,
    uri: str,
    usecase: UseCase,
    *,
    features: Sequence[str],
    policy: TrainingSetPolicy | None = None,
    gx_dir: Path | None = None,
    run_name: str = "adhoc",
) -> ValidationResult:
    """:func:`validate_training_set` on the Parquet snapshot at ``uri``, run by GX's Spark
    execution engine in the SparkSession ``spark``: the same suite and result, and no row
    of the set in this process."""
    with _spark_snapshot(spark, uri) as sdf:
        frame = _Frame(sdf, tuple(sdf.columns), sdf.count(), "spark")
        return _validate_training(frame, usecase, features, policy, gx_dir, run_name)


def _validate_training(
    frame: _Frame,
    usecase: UseCase,
    features: Sequence[str],
    policy: TrainingSetPolicy | None,
    gx_dir: Path | None,
    run_name: str,
) -> ValidationResult:
    if isinstance(features, str):
        raise TypeError("features must be a sequence of column names, not a string")
    policy = policy or TrainingSetPolicy()
    suite = build_training_suite(usecase, features, policy, f"{usecase.name}_training_set")
    target = _Target("training set", TRAINING_ASSET, usecase)
    return _validate(frame, suite, target, gx_dir, run_name)


@contextlib.contextmanager
def _spark_snapshot(spark: Any, uri: str) -> Iterator[Any]:
    """The snapshot as Spark reads it while GX runs, with pandas' values: nanosecond
    timestamps (read as longs, see ``_NANOS_AS_LONG``) as timestamps, NaN as null (pandas
    reads both as NaN, and GX's pandas checks take NaN for null)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, FloatType

    nanos = {
        field.name
        for field in pq.read_schema(uri)
        if pa.types.is_timestamp(field.type) and field.type.unit == "ns"
    }
    with _RUN_LOCK:  # the property is the session's: one validation at a time sets it
        before = spark.conf.get(_NANOS_AS_LONG, None)
        spark.conf.set(_NANOS_AS_LONG, "true")
        try:
            sdf = spark.read.parquet(uri)
            columns = []
            for field in sdf.schema.fields:
                name = field.name
                quoted = "`" + name.replace("`", "``") + "`"
                column = F.col(quoted)
                if name in nanos:
                    column = F.expr(f"timestamp_micros({quoted} div 1000)")
                elif isinstance(field.dataType, (DoubleType, FloatType)):
                    column = F.nanvl(column, F.lit(None).cast(field.dataType))
                columns.append(column.alias(name))
            yield sdf.select(*columns)
        finally:
            if before is None:
                spark.conf.unset(_NANOS_AS_LONG)
            else:
                spark.conf.set(_NANOS_AS_LONG, before)


@dataclass(frozen=True)
class _Target:
    """What a suite is run on: the wording of the result and the GX asset of such frames."""

    noun: str  # "batch", "training set"
    asset: str
    usecase: UseCase
    start: datetime | None = None  # the data interval of a batch (UTC)
    end: datetime | None = None


def _validate(
    frame: _Frame, suite: Any, target: _Target, gx_dir: Path | None, run_name: str
) -> ValidationResult:
    ns = gx_namespace()
    # Our view of each check, by the seq GX carries along in each result's meta.
    checks = {
        _seq(e): Check(e.meta[META]["check"], getattr(e, "column", None), i)
        for i, e in enumerate(suite.expectations)
    }
    docs: str | None = None
    with _fast_pandas() if frame.engine == "pandas" else contextlib.nullcontext():
        if gx_dir is None:
            success, results = _run_ephemeral(ns, frame, suite, target.asset)
        else:
            success, results, docs = _run_checkpoint(
                ns, frame, suite, target.asset, Path(gx_dir), run_name
            )
    failed = _failed_checks(results, checks, frame, target)
    return ValidationResult(
        success=success and not failed,
        checks_total=len(checks),
        failed=failed,
        row_count=frame.rows,
        data_docs=docs,
        subject=target.noun,
    )


def _run_ephemeral(ns: Any, frame: _Frame, suite: Any, asset: str) -> tuple[bool, list[Any]]:
    """Verdict first (``BOOLEAN_ONLY``), details (counts, examples) for failures only.

    GX computes a ``BASIC`` result's unexpected values by filtering the column again,
    nulls included, for every check; on a clean batch that is pure overhead.
    """
    context = ns.gx.get_context(mode="ephemeral")
    _quiet(context)
    originals = {_seq(e): e for e in suite.expectations}
    suite = context.suites.add(suite)
    batch_definition = (
        _add_source(context, frame.engine)
        .add_dataframe_asset(asset)
        .add_batch_definition_whole_dataframe(BATCH_DEFINITION)
    )
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame.data})
    verdict = batch.validate(suite, result_format=VERDICT_FORMAT)
    results = {_seq(r.expectation_config): r for r in verdict.results}
    redo = [seq for seq, r in results.items() if not r.success and _exception_message(r) is None]
    if redo:
        again = []
        for seq in sorted(redo):
            clone = originals[seq].copy(deep=True)
            clone.id = None
            again.append(clone)
        details = context.suites.add(
            ns.gx.ExpectationSuite(name=f"{suite.name}_details", expectations=again)
        )
        for r in batch.validate(details, result_format=RESULT_FORMAT).results:
            results[_seq(r.expectation_config)] = r
    return bool(verdict.success), list(results.values())


def _seq(expectation_or_config: Any) -> int:
    meta = (expectation_or_config.meta or {}).get(META) or {}
    return int(meta.get("seq", -1))


@contextlib.contextmanager
def _locked(gx_dir: Path) -> Iterator[None]:
    """One validation at a time per GX folder (suite/checkpoint names are shared)."""
    import fcntl

    gx_dir.mkdir(parents=True, exist_ok=True)
    with open(gx_dir / ".closedloop.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _add_source(context: Any, engine: str) -> Any:
    if engine == "spark":
        # persist=False: GX would cache the whole frame in Spark and never release it;
        # each of its passes reads the snapshot's columns again instead
        return context.data_sources.add_spark(SPARK_DATASOURCE, persist=False)
    return context.data_sources.add_pandas(DATASOURCE)


def _batch_definition(context: Any, asset_name: str, engine: str) -> Any:
    """The data source / asset / batch definition of ``engine``'s frames, created if
    absent (pandas and Spark have a data source each)."""
    try:
        source = context.data_sources.get(SPARK_DATASOURCE if engine == "spark" else DATASOURCE)
    except LookupError:  # GX raises KeyError / LookupError for all three
        source = _add_source(context, engine)
    try:
        asset = source.get_asset(asset_name)
    except LookupError:
        asset = source.add_dataframe_asset(asset_name)
    try:
        return asset.get_batch_definition(BATCH_DEFINITION)
    except LookupError:
        return asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION)


def _run_checkpoint(
    ns: Any, frame: _Frame, suite: Any, asset: str, gx_dir: Path, run_name: str
) -> tuple[bool, list[Any], str | None]:
    """One checkpoint run, ``BASIC`` details for every check (they go into Data Docs).

    The checkpoint and its validation definition are the suite's name, with ``_spark``
    on Spark: each names its engine's batch definition."""
    gx = ns.gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    with _locked(gx_dir):
        context = gx.get_context(mode="file", project_root_dir=str(gx_dir))
        _quiet(context)
        batch_definition = _batch_definition(context, asset, frame.engine)
        name = suite.name + ("_spark" if frame.engine == "spark" else "")
        definition = gx.ValidationDefinition(name=name, data=batch_definition, suite=suite)
        checkpoint = context.checkpoints.add_or_update(
            gx.Checkpoint(
                name=name,
                validation_definitions=[definition],
                actions=[UpdateDataDocsAction(name="update_data_docs", site_names=[DOCS_SITE])],
                result_format=RESULT_FORMAT,
            )
        )
        run_id = gx.RunIdentifier(run_name=run_name, run_time=datetime.now(UTC))
        result = checkpoint.run(batch_parameters={"dataframe": frame.data}, run_id=run_id)
        ((key, suite_result),) = result.run_results.items()
        return bool(suite_result.success), list(suite_result.results), _docs_page(context, key)


def _docs_page(context: Any, key: Any) -> str | None:
    """Path of the Data Docs page of one validation result, if it was written."""
    try:
        urls = context.get_docs_sites_urls(resource_identifier=key, site_name=DOCS_SITE)
    except Exception:  # a docs problem must not hide the verdict
        logger.warning("cannot locate the Data Docs page of %s", key, exc_info=True)
        return None
    for entry in urls:
        url = entry.get("site_url")
        if url and url.startswith("file://"):
            path = Path(unquote(urlparse(url).path))
            if path.is_file():
                return str(path)
    return None


# -- from GX's result to ours -----------------------------------------------------------


def _failed_checks(
    results: list[Any],
    checks: dict[int, Check],
    frame: _Frame,
    target: _Target,
) -> list[FailedCheck]:
    present = set(frame.columns)
    by_seq = {_seq(r.expectation_config): r for r in results}
    # dtype verdicts first: value checks on a wrong-dtype column are explained by them
    wrong_dtype: dict[str, str] = {}
    for seq, check in checks.items():
        r = by_seq.get(seq)
        if check.kind == "dtype" and r is not None and not r.success and check.column in present:
            wrong_dtype[check.column] = str((r.result or {}).get("observed_value"))

    failed: list[FailedCheck] = []
    for seq in sorted(checks, key=lambda s: checks[s].seq):
        check = checks[seq]
        r = by_seq.get(seq)
        if r is not None and r.success:
            continue
        expectation = r.expectation_config.type if r is not None else check.kind
        column = check.column
        if r is None:  # GX dropped it: should not happen, but never report a pass
            failed.append(FailedCheck(expectation, column, "no result from GX", None, [], False))
            continue
        result = r.result or {}
        error = _exception_message(r)
        if column is not None and column not in present:
            failed.append(
                FailedCheck(expectation, column, f"{column}: column is missing", None, [], False)
            )
            continue
        if error is not None:
            if column in wrong_dtype:
                reason = f"{column}: column has dtype {wrong_dtype[column]}"
            else:
                reason = f"{column or target.noun}: could not run ({error})"
            failed.append(FailedCheck(expectation, column, reason, None, [], False))
            continue
        kwargs = dict(r.expectation_config.kwargs or {})
        failed.append(_describe(check, expectation, kwargs, result, frame, target))
    return failed


def _exception_message(r: Any) -> str | None:
    info = r.exception_info or {}
    if info.get("raised_exception"):
        return str(info.get("exception_message") or "error")
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            message = str(value.get("exception_message") or "error")
            return message.splitlines()[0][:300] if message else "error"
    return None


def _count(result: dict) -> int | None:
    count = result.get("unexpected_count")
    return int(count) if count is not None else None


def _describe(
    check: Check,
    expectation: str,
    kwargs: dict[str, Any],
    result: dict,
    frame: _Frame,
    target: _Target,
) -> FailedCheck:
    column = check.column
    rows = frame.rows
    usecase = target.usecase
    spec = usecase.columns.get(column) if column else None
    count = _count(result)
    unexpected = result.get("partial_unexpected_list")
    if frame.engine == "spark" and spec is not None and spec.type in ("timestamp", "date"):
        unexpected = [_utc_instant(v) for v in unexpected or []]
    examples = distinct_examples(unexpected)
    of = f"{count} of {rows} values" if count is not None else "some values"
    kind = check.kind
    if kind == "columns":
        mismatched = ((result.get("details") or {}).get("mismatched")) or {}
        missing = sorted(map(str, mismatched.get("missing") or []))
        extra = sorted(map(str, mismatched.get("unexpected") or []))
        parts = []
        if missing:
            parts.append("missing columns: " + ", ".join(missing))
        if extra:
            parts.append("unexpected columns: " + ", ".join(extra))
        text = "; ".join(parts) or "the columns do not match the use case"
        return FailedCheck(expectation, None, text, len(missing) + len(extra), missing + extra)
    if kind == "row_count":
        least = kwargs.get("min_value")
        if least is not None and least > 1:
            text = f"the {target.noun} has {rows} rows, fewer than the required {least}"
            return FailedCheck(expectation, None, text, None, [rows])
        what = "no columns and no rows (empty file)" if not frame.columns else "no rows"
        return FailedCheck(expectation, None, f"the {target.noun} has {what}", 0, [])
    if kind == "dtype":
        observed = result.get("observed_value")
        expected = ", ".join(ACCEPTED_DTYPES[spec.type])
        text = f"{column}: dtype is {observed}, expected one of {expected} ({spec.type})"
        if frame.engine == "spark":
            examples, note = _dtype_examples_spark(frame.data, column, spec.type)
        else:
            examples, note = _dtype_examples(frame.data[column], spec.type)
        return FailedCheck(expectation, column, text + note, None, examples)
    if kind == "not_null":
        return FailedCheck(expectation, column, f"{column}: {of} are null", count, [])
    if kind == "feature_not_null":
        text = f"{column}: {of} are null (the feature is missing for those rows)"
        return FailedCheck(expectation, column, text, count, [])
    if kind == "positive_rate":
        positive = usecase.label.positive
        mean = result.get("observed_value")
        rate = None if mean is None else json_safe(float(mean) / positive)
        lo, hi = (_num(kwargs[k] / positive) for k in ("min_value", "max_value"))
        observed = "undefined (no values)" if rate is None else f"{rate:.4g}"
        text = f"{column}: the positive rate is {observed}, expected within [{lo}, {hi}]"
        return FailedCheck(expectation, column, text, None, [] if rate is None else [rate])
    if kind == "range":
        lo, hi = spec.min, spec.max
        if lo is not None and hi is not None:
            bounds = f"outside [{_num(lo)}, {_num(hi)}]"
        elif lo is not None:
            bounds = f"below {_num(lo)}"
        else:
            bounds = f"above {_num(hi)}"
        return FailedCheck(expectation, column, f"{column}: {of} are {bounds}", count, examples)
    if kind == "in_interval":
        start, end = target.start, target.end
        assert start is not None and end is not None  # batches only
        text = (
            f"{column}: {of} are outside the data interval [{start.isoformat()}, {end.isoformat()})"
        )
        side = {"before its start": [], "after its end": []}
        for e in examples:
            ts = pd.Timestamp(e) if isinstance(e, str) else None
            if ts is not None and ts.tzinfo is not None:
                side["after its end" if ts >= end else "before its start"].append(e)
        text += "".join(f"; {k}: {', '.join(v)}" for k, v in side.items() if v)
        return FailedCheck(expectation, column, text, count, examples)
    if kind == "categories":
        known = ", ".join(spec.categories)
        text = f"{column}: {of} are not declared categories ({known}); unknown: " + ", ".join(
            map(str, examples)
        )
        return FailedCheck(expectation, column, text, count, examples)
    if kind == "label":
        text = f"{column}: {of} are not 0 or {usecase.label.positive}"
        return FailedCheck(expectation, column, text, count, examples)
    if kind == "unique":
        text = f"{column}: {of} share their value with another row; duplicated: " + ", ".join(
            map(str, examples)
        )
        return FailedCheck(expectation, column, text, count, examples)
    return FailedCheck(expectation, column, f"{column}: {of} fail", count, examples)


def _utc_instant(value: Any) -> Any:
    """A time GX's Spark engine reports without its zone (Spark's session time, UTC) as
    the UTC instant pandas reports."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _dtype_examples_spark(sdf: Any, column: str, declared: str) -> tuple[list[Any], str]:
    """:func:`_dtype_examples` of a column of a Spark DataFrame: Spark finds the offending
    values (up to 1,000, in the file's order), which are collected and named alike."""
    from pyspark.sql import functions as F

    c = F.col("`" + column.replace("`", "``") + "`")
    values = sdf.select(c.alias("v")).where(F.col("v").isNotNull())
    number = F.col("v").try_cast("double")

    def first(rows: Any) -> list[Any]:
        return [r.v for r in rows.limit(1000).collect()]

    return _dtype_finding(
        declared,
        not_numbers=lambda: first(values.where(number.isNull())),
        fractions=lambda: first(values.where(number % 1 != 0)),
        has_gaps=lambda: bool(sdf.where(c.isNull()).limit(1).count()),
        some=lambda: first(values),
    )


def _dtype_examples(series: pd.Series, declared: str) -> tuple[list[Any], str]:
    """Offending values of a wrong-dtype column (only computed when the check failed)."""
    values = series.dropna()

    @functools.cache
    def numbers() -> pd.Series:  # asked for the non-numbers, then the fractions: once
        return pd.to_numeric(values, errors="coerce")

    return _dtype_finding(
        declared,
        not_numbers=lambda: values[numbers().isna()].head(1000).tolist(),
        fractions=lambda: values[numbers() % 1 != 0].head(1000).tolist(),
        has_gaps=lambda: bool(series.isna().any()),
        some=lambda: values.head(1000).tolist(),
    )


def _dtype_finding(
    declared: str,
    *,
    not_numbers: Callable[[], list[Any]],
    fractions: Callable[[], list[Any]],
    has_gaps: Callable[[], bool],
    some: Callable[[], list[Any]],
) -> tuple[list[Any], str]:
    """The examples and the note of a wrong-dtype column, its values asked for only as
    needed: for a numeric declaration the values that are not numbers, else (integers)
    the fractions, else the gaps; otherwise some values."""
    if set(ACCEPTED_DTYPES[declared]) <= _NUMERIC_DTYPES | {"Int64", "Float64"}:
        bad = not_numbers()
        if bad:
            examples = distinct_examples(bad)
            return examples, "; values that are not numbers: " + ", ".join(map(repr, examples))
        if declared == "int":
            fractional = fractions()
            if fractional:
                examples = distinct_examples(fractional)
                return examples, "; values that are not whole numbers: " + ", ".join(
                    map(str, examples)
                )
            if has_gaps():
                return [], "; missing values turn an integer column into floats"
    return distinct_examples(some()), ""
