"""The event table: a cleaned batch plus the declared row-level features and the time
each event's label becomes known.

The same function serves the feature pipeline (a day's batch), serving (one request's
events) and ``closedloop check`` (a sample file), so a derived feature has one
definition wherever it is computed.
"""

from __future__ import annotations

import ast
import operator
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from closedloop.core.usecase import KNOWN_AT_COLUMN, expression_names

if TYPE_CHECKING:
    from closedloop.core.usecase import Derivation, UseCase

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def event_table(frame: pd.DataFrame, usecase: UseCase) -> pd.DataFrame:
    """``frame`` (cleaned events) with every derived feature and, for a label known
    after a delay, the :data:`~closedloop.core.usecase.KNOWN_AT_COLUMN` column."""
    out = frame.copy()
    for name, derivation in usecase.features.derived.items():
        out[name] = derive(out, derivation)
    delay = usecase.label.delay
    if delay is not None:
        out[KNOWN_AT_COLUMN] = out[usecase.batch.timestamp_column] + delay
    return out


def derive(frame: pd.DataFrame, derivation: Derivation) -> pd.Series:
    """One derived feature of every row of ``frame``.

    Arithmetic keeps integers integral (``a + b``); a division gives floats, and a
    division by zero gives a missing value, not an infinity. A date part is an integer
    (weekday: Monday is 0). A bucket is the number of inner edges at or below the value
    (``edges: [7, 30]``: 0 below 7, 1 from 7, 2 from 30). A missing input gives a
    missing value.
    """
    if derivation.expr is not None:
        tree = ast.parse(derivation.expr, mode="eval")
        value = _evaluate(tree.body, frame)
        if np.isscalar(value):
            value = pd.Series(value, index=frame.index)
        return value
    if derivation.date_part is not None:
        times = frame[derivation.of].dt
        part = (
            times.weekday
            if derivation.date_part == "weekday"
            else getattr(times, derivation.date_part)
        )
        return part.astype("int64") if part.notna().all() else part.astype("Int64")
    values = frame[derivation.bucket].to_numpy(dtype="float64")
    buckets = pd.Series(
        np.searchsorted(np.asarray(derivation.edges), values, side="right"), index=frame.index
    )
    missing = np.isnan(values)
    return buckets.astype("int64") if not missing.any() else buckets.mask(missing).astype("Int64")


def _evaluate(node: ast.AST, frame: pd.DataFrame) -> Any:
    return _walk(node, frame.__getitem__, _divide_series)


def _divide_series(left: Any, right: Any) -> Any:
    """Division on a frame's columns: floats, and a missing value where ``right`` is 0."""
    index = next(v.index for v in (left, right) if isinstance(v, pd.Series))
    left = left.astype("float64") if isinstance(left, pd.Series) else float(left)
    right = right.astype("float64") if isinstance(right, pd.Series) else float(right)
    if isinstance(right, pd.Series):
        right = right.where(right != 0)
    elif right == 0:
        return pd.Series(np.nan, index=index)
    return left / right


def _divide_arrays(left: Any, right: Any) -> Any:
    """:func:`_divide_series` on numpy arrays of present values (NaN for missing)."""
    left, right = np.asarray(left, dtype="float64"), np.asarray(right, dtype="float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(right != 0, left / np.where(right != 0, right, 1.0), np.nan)


def _walk(node: ast.AST, column: Any, divide: Any) -> Any:
    """An arithmetic expression's value: ``column(name)`` gives a column, ``divide`` a
    quotient; ``+ - *`` keep integers integral."""
    if isinstance(node, ast.Name):
        return column(node.id)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp):
        operand = _walk(node.operand, column, divide)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        left, right = _walk(node.left, column, divide), _walk(node.right, column, divide)
        if isinstance(node.op, ast.Div):
            return divide(left, right)
        return _BINARY[type(node.op)](left, right)
    raise ValueError(f"unsupported expression node {type(node).__name__}")  # checked on read


_DATE_PARTS = {
    "hour": lambda t: t.hour,
    "weekday": lambda t: t.weekday(),  # Monday is 0, as pandas
    "day": lambda t: t.day,
    "month": lambda t: t.month,
    "year": lambda t: t.year,
    "dayofyear": lambda t: t.timetuple().tm_yday,
}


def derive_values(
    columns: dict[str, list[Any]], derivations: dict[str, Derivation], times: list[str]
) -> dict[str, list[Any]] | None:
    """The derived features of a few events given as columns of Python values, computed
    with numpy and :mod:`datetime` instead of a pandas frame (a one-row frame costs
    milliseconds; serving computes one per request). Only when no input is missing and
    every time is a ``datetime``/``date``: else None, and the caller uses :func:`derive`,
    whose semantics these are (``tests/unit/test_derive_values.py`` compares them)."""
    from datetime import UTC, date, datetime

    for derivation in derivations.values():
        needed = (
            expression_names(derivation.expr)
            if derivation.expr is not None
            else [derivation.of or derivation.bucket]
        )
        for name in needed:
            values = columns.get(name)
            if values is None or any(v is None for v in values):
                return None
            if name in times and not all(isinstance(v, date) for v in values):
                return None
    out: dict[str, list[Any]] = {}
    for name, derivation in derivations.items():
        if derivation.expr is not None:
            tree = ast.parse(derivation.expr, mode="eval")
            value = _walk(tree.body, lambda name: np.asarray(columns[name]), _divide_arrays)
            n = len(next(iter(columns.values()))) if columns else 0
            out[name] = (np.full(n, value) if np.isscalar(value) else value).tolist()
        elif derivation.date_part is not None:
            part = _DATE_PARTS[derivation.date_part]
            moments = [
                (v.astimezone(UTC) if v.tzinfo else v)
                if isinstance(v, datetime)
                else datetime(v.year, v.month, v.day)
                for v in columns[derivation.of]
            ]
            out[name] = [part(t) for t in moments]
        else:
            values = np.asarray(columns[derivation.bucket], dtype="float64")
            if np.isnan(values).any():
                return None
            out[name] = np.searchsorted(np.asarray(derivation.edges), values,
                                        side="right").astype("int64").tolist()  # fmt: skip
    return out


def derive_columns(
    columns: dict[str, list[Any]], derivations: dict[str, Derivation], times: list[str]
) -> dict[str, list[Any]]:
    """The derived features of events given as columns of Python values (serving's
    requests): :func:`derive_values` when it can, else through a pandas frame (times
    and dates in UTC, as in batches)."""
    if not derivations:
        return {}
    fast = derive_values(columns, derivations, times)
    if fast is not None:
        return fast
    frame = pd.DataFrame(columns)
    for name in times:
        frame[name] = pd.to_datetime(frame[name], utc=True).astype("datetime64[us, UTC]")
    for name, derivation in derivations.items():
        frame[name] = derive(frame, derivation)
    return {name: frame[name].tolist() for name in derivations}
