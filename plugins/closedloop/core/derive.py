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

from closedloop.core.usecase import KNOWN_AT_COLUMN

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
    if isinstance(node, ast.Name):
        return frame[node.id]
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, frame)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left, frame), _evaluate(node.right, frame)
        if isinstance(node.op, ast.Div):
            left = left.astype("float64") if isinstance(left, pd.Series) else float(left)
            right = right.astype("float64") if isinstance(right, pd.Series) else float(right)
            if isinstance(right, pd.Series):
                right = right.where(right != 0)
            elif right == 0:
                return pd.Series(np.nan, index=frame.index)
            return left / right
        return _BINARY[type(node.op)](left, right)
    raise ValueError(f"unsupported expression node {type(node).__name__}")  # checked on read
