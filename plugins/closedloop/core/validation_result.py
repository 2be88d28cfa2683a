"""What a validation says: :class:`ValidationResult` (JSON-safe, stored with a
quarantined batch) and its :class:`FailedCheck` s, each named with examples of the
offending values; :func:`unreadable_result` for a file that does not even parse."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: Distinct offending values kept per failed check.
MAX_EXAMPLES = 5


# -- the result ---------------------------------------------------------------------


@dataclass(frozen=True)
class FailedCheck:
    """One check of the suite that did not pass."""

    expectation: str  # e.g. "expect_column_values_to_not_be_null"
    column: str | None
    description: str  # human sentence, e.g. "adr: 3 of 400 values are null"
    unexpected_count: int | None
    examples: list[Any]  # up to 5 distinct offending values, JSON-safe
    #: False when the check could not run (its column is missing, or its dtype is wrong
    #: so that e.g. a range cannot be compared); the description says why.
    evaluated: bool = True

    @property
    def label(self) -> str:
        return f"{self.expectation}({self.column})" if self.column else self.expectation


@dataclass(frozen=True)
class ValidationResult:
    """What the gate decided about one batch (or training set: see ``subject``)."""

    success: bool
    checks_total: int
    failed: list[FailedCheck]
    row_count: int
    data_docs: str | None = None  # path of the Data Docs page of this validation
    subject: str = "batch"  # what was validated: the noun of summary()

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ValidationResult:
        known = set(FailedCheck.__dataclass_fields__)
        failed = [FailedCheck(**{k: v for k, v in f.items() if k in known}) for f in d["failed"]]
        return cls(
            success=bool(d["success"]),
            checks_total=int(d["checks_total"]),
            failed=failed,
            row_count=int(d["row_count"]),
            data_docs=d.get("data_docs"),
            subject=str(d.get("subject") or "batch"),
        )

    def summary(self) -> str:
        if self.success:
            return f"{self.subject} passed all {self.checks_total} checks ({self.row_count} rows)"
        ran = [f for f in self.failed if f.evaluated]
        skipped = [f for f in self.failed if not f.evaluated]
        parts = [f"{f.label}: {_strip_column(f)}" for f in ran]
        if skipped:
            # Consequences of a failure above; name the columns, not every check.
            by_reason: dict[str, list[str]] = {}
            for f in skipped:
                reason = f.description.partition(": ")[2] or f.description
                by_reason.setdefault(reason, []).append(f.column or f.expectation)
            for reason, columns in by_reason.items():
                names = sorted(set(columns))
                shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
                checks = "check" if len(columns) == 1 else "checks"
                parts.append(f"{len(columns)} {checks} not evaluated ({reason}): {shown}")
        head = f"{self.subject} failed {len(self.failed)} of {self.checks_total} checks: "
        return head + "; ".join(parts)


def _strip_column(check: FailedCheck) -> str:
    prefix = f"{check.column}: "
    text = check.description
    return text[len(prefix) :] if check.column and text.startswith(prefix) else text


def unreadable_result(path: Path, reason: str) -> ValidationResult:
    """The result for a file that cannot be parsed at all: one failed check."""
    return ValidationResult(
        success=False,
        checks_total=1,
        failed=[
            FailedCheck(
                expectation="file_is_readable",
                column=None,
                description=f"{Path(path).name} cannot be read: {reason}",
                unexpected_count=None,
                examples=[],
            )
        ],
        row_count=0,
        data_docs=None,
    )


# -- JSON safety ----------------------------------------------------------------------


def json_safe(value: Any) -> Any:
    """Plain JSON types from numpy/pandas scalars, timestamps (ISO strings) and containers."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
        if isinstance(value, bytes | np.generic):
            return str(value)
    if value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp | datetime | date):
        return value.isoformat()
    if isinstance(value, pd.Timedelta):
        return value.isoformat()
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, int):
        return value
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def distinct_examples(values: list[Any] | None, limit: int = MAX_EXAMPLES) -> list[Any]:
    out: list[Any] = []
    seen: set[str] = set()
    for v in values or []:
        safe = json_safe(v)
        key = repr(safe)
        if key not in seen:
            seen.add(key)
            out.append(safe)
        if len(out) == limit:
            break
    return out
