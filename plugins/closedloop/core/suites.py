"""The Great Expectations suites derived from a use case: :func:`build_suite` for a
landed batch and :func:`build_training_suite` for a training set; every expectation
carries, in its ``meta``, which of closedloop's checks it is (:class:`Check`). GX is
imported once per process, inside :func:`gx_namespace` (it takes seconds)."""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pandas as pd

from closedloop.core.usecase import ACCEPTED_DTYPES

if TYPE_CHECKING:
    from collections.abc import Sequence

    import great_expectations as gx

    from closedloop.core.gate import TrainingSetPolicy
    from closedloop.core.usecase import UseCase

logger = logging.getLogger(__name__)

# meta["closedloop"] of each expectation: which of our checks it is, in suite order.
META = "closedloop"


# -- the suite ------------------------------------------------------------------------


def to_utc(ts: datetime) -> datetime:
    """A plain ``datetime`` in UTC (naive means UTC; pendulum & co. become datetime)."""
    stamp = pd.Timestamp(ts)
    stamp = stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)
    return stamp.to_pydatetime()


@dataclass(frozen=True)
class Check:
    kind: str  # columns | row_count | dtype | not_null | range | categories | unique | ...
    column: str | None
    seq: int


def gx_namespace() -> Any:
    """Import GX (slow) and define our custom expectation, once per process."""
    with _GX_LOCK:
        if "ns" not in _GX_CACHE:
            _GX_CACHE["ns"] = _load_gx()
        return _GX_CACHE["ns"]


_GX_LOCK = threading.Lock()
_GX_CACHE: dict[str, Any] = {}


def _load_gx() -> Any:
    # GX logs routine operations (even on import); keep it to errors unless configured.
    gx_logger = logging.getLogger("great_expectations")
    if gx_logger.level == logging.NOTSET:
        gx_logger.setLevel(logging.ERROR)

    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.expectations.expectation import BatchExpectation

    # ... and a few of its modules pin their own logger to INFO: let them inherit.
    for name, child in list(logging.root.manager.loggerDict.items()):
        if (
            name.startswith("great_expectations.")
            and isinstance(child, logging.Logger)
            and logging.NOTSET < child.level < logging.WARNING
        ):
            child.setLevel(logging.NOTSET)

    class ExpectColumnDtypeToBeInTypeList(gxe.ExpectColumnValuesToBeInTypeList):
        """Expect the column's pandas dtype to be named in ``type_list``.

        GX 1.24's ``ExpectColumnValuesToBeInTypeList`` resolves each name through numpy, so
        pandas extension dtypes ("datetime64[ns, UTC]", "Int64", "category", "string") never
        match, and on an ``object`` column it tests each value's Python type in a Python
        loop (seconds per million rows). This compares ``str(dtype)`` with the names, exactly
        as ``ACCEPTED_DTYPES`` declares them. An empty batch passes vacuously (a header-only
        CSV reads every column as ``object``; its emptiness is the row-count check's
        business), as GX's column-map expectations do.
        """

        metric_dependencies = ("table.column_types", "table.row_count")

        def get_validation_dependencies(
            self, execution_engine: Any = None, runtime_configuration: dict | None = None, **_: Any
        ) -> Any:
            # The aggregate path only (table-level metrics), never the per-value map.
            return BatchExpectation.get_validation_dependencies(
                self, execution_engine, runtime_configuration
            )

        def _validate(
            self,
            metrics: dict,
            runtime_configuration: dict | None = None,
            execution_engine: Any = None,
        ) -> dict:
            column = self.configuration.kwargs.get("column")
            dtypes = {d["name"]: d["type"] for d in metrics.get("table.column_types") or []}
            if column not in dtypes:
                return {"success": False, "result": {"observed_value": None}}
            observed = _pandas_dtype(dtypes[column])
            expected = list(self.type_list or [])
            success = observed in expected or not metrics.get("table.row_count")
            return {"success": success, "result": {"observed_value": observed}}

    class _NS:
        pass

    ns = _NS()
    ns.gx = gx
    ns.gxe = gxe
    ns.ExpectColumnDtypeToBeInTypeList = ExpectColumnDtypeToBeInTypeList
    return ns


#: the pandas dtype of a batch column that Spark reads as each type, the batch staged by
#: ``batches.stage_batch`` (the dtypes a whole read with pandas infers)
SPARK_AS_PANDAS = {
    "LongType()": "int64",
    "DoubleType()": "float64",
    "BooleanType()": "bool",
    "StringType()": "object",
    "TimestampType()": "datetime64[ns, UTC]",
}


def _pandas_dtype(observed: Any) -> str:
    """The pandas dtype's name of a column type GX reports (Spark's types by
    :data:`SPARK_AS_PANDAS`; another Spark type by its own name, which no declared
    type accepts)."""
    name = str(observed)
    return SPARK_AS_PANDAS.get(name, name)


def build_suite(
    usecase: UseCase, interval_start: datetime, interval_end: datetime, name: str
) -> gx.ExpectationSuite:
    """The expectation suite of a use case's landed batches for one data interval.

    Naive interval bounds are taken as UTC. Each expectation carries
    ``meta["closedloop"] = {"check": kind, "seq": n}`` so results map back to our checks.
    """
    ns = gx_namespace()
    gxe = ns.gxe
    start, end = to_utc(interval_start), to_utc(interval_end)
    if not start < end:
        raise ValueError(f"empty data interval [{start}, {end})")
    expectations: list[Any] = []
    add = _adder(expectations)
    add(
        "columns",
        None,
        gxe.ExpectTableColumnsToMatchSet,
        column_set=list(usecase.columns),
        exact_match=True,
    )
    add("row_count", None, gxe.ExpectTableRowCountToBeBetween, min_value=1, max_value=None)
    label = usecase.label.column
    ts_column = usecase.batch.timestamp_column
    for column, spec in usecase.columns.items():
        add(
            "dtype",
            column,
            ns.ExpectColumnDtypeToBeInTypeList,
            type_list=list(ACCEPTED_DTYPES[spec.type]),
        )
        if spec.required:
            add("not_null", column, gxe.ExpectColumnValuesToNotBeNull)
        _add_range(add, gxe, column, spec)
        if spec.categories and spec.new_categories == "quarantine":
            # "flag": a new category passes; the drift report names it
            add("categories", column, gxe.ExpectColumnValuesToBeInSet, value_set=spec.categories)
        if spec.unique:
            add("unique", column, gxe.ExpectColumnValuesToBeUnique)
        if column == ts_column:
            add(
                "in_interval",
                column,
                gxe.ExpectColumnValuesToBeBetween,
                min_value=start,
                max_value=end,
                strict_max=True,
                description=(
                    f"{column} lies within the data interval "
                    f"[{start.isoformat()}, {end.isoformat()})"
                ),
            )
        if column == label:
            _add_label_values(add, gxe, usecase)
    return ns.gx.ExpectationSuite(
        name=name,
        expectations=expectations,
        meta={
            META: {
                "usecase": usecase.name,
                "interval_start": start.isoformat(),
                "interval_end": end.isoformat(),
            }
        },
    )


def _adder(expectations: list[Any]) -> Any:
    """``add(kind, column, ExpectationClass, **kwargs)``: append one tagged expectation."""

    def add(kind: str, column: str | None, expectation_cls: Any, **kwargs: Any) -> None:
        meta = {META: {"check": kind, "seq": len(expectations)}}
        if column is not None:
            kwargs["column"] = column
        expectations.append(expectation_cls(meta=meta, **kwargs))

    return add


def _add_range(add: Any, gxe: Any, column: str, spec: Any) -> None:
    """The declared ``min``/``max`` of ``column``, when it has any."""
    if spec is not None and (spec.min is not None or spec.max is not None):
        add("range", column, gxe.ExpectColumnValuesToBeBetween, min_value=spec.min,
            max_value=spec.max)  # fmt: skip


def _add_label_values(add: Any, gxe: Any, usecase: UseCase) -> None:
    column, positive = usecase.label.column, usecase.label.positive
    add(
        "label",
        column,
        gxe.ExpectColumnValuesToBeInSet,
        value_set=sorted({0, positive}),
        description=f"the label {column} is 0 or {positive}",
    )


def build_training_suite(
    usecase: UseCase, features: Sequence[str], policy: TrainingSetPolicy, name: str
) -> gx.ExpectationSuite:
    """The expectation suite of a training set (see the module doc), tagged as build_suite's."""
    ns = gx_namespace()
    gxe = ns.gxe
    expectations: list[Any] = []
    add = _adder(expectations)
    label, positive = usecase.label.column, usecase.label.positive
    add(
        "row_count",
        None,
        gxe.ExpectTableRowCountToBeBetween,
        min_value=policy.min_rows,
        max_value=None,
    )
    add("not_null", label, gxe.ExpectColumnValuesToNotBeNull)
    _add_label_values(add, gxe, usecase)
    add(
        "positive_rate",
        label,
        gxe.ExpectColumnMeanToBeBetween,
        # the mean of a 0/positive column is positive x the positive rate
        min_value=policy.min_positive_rate * positive,
        max_value=policy.max_positive_rate * positive,
        description=(
            f"the positive rate of {label} lies within "
            f"[{policy.min_positive_rate}, {policy.max_positive_rate}]"
        ),
    )
    for column in dict.fromkeys(features):  # in order, once each
        if column == label:
            continue
        add("feature_not_null", column, gxe.ExpectColumnValuesToNotBeNull)
        _add_range(add, gxe, column, usecase.columns.get(column))
    return ns.gx.ExpectationSuite(
        name=name,
        expectations=expectations,
        meta={
            META: {
                "usecase": usecase.name,
                "features": list(dict.fromkeys(features)),
                "policy": asdict(policy),
            }
        },
    )
