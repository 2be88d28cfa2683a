"""Serving's derived features without pandas (``derive_values``) give what the pandas
path gives (the feature pipeline's ``derive`` on a frame), value for value and type for
type, on random events: expressions (integers, floats, division by zero, constants),
every date part of aware, naive and date values, and buckets."""

from __future__ import annotations

import math
import random
from datetime import UTC, date, datetime, timedelta, timezone

import pandas as pd
import pytest

from closedloop.core.derive import derive, derive_values
from closedloop.core.settings import PACKAGE_USECASES
from closedloop.core.usecase import Derivation, UseCase

DERIVATIONS = {
    "total": Derivation(expr="a + b"),
    "scaled": Derivation(expr="-a * 3 - 2"),
    "mixed": Derivation(expr="a * x + 1"),
    "ratio": Derivation(expr="a / b"),
    "by_zero": Derivation(expr="x / 0"),
    "constant": Derivation(expr="2 + 3"),
    **{
        f"at_{p}": Derivation(date_part=p, of="at")
        for p in ("hour", "weekday", "day", "month", "year", "dayofyear")
    },
    **{f"on_{p}": Derivation(date_part=p, of="on") for p in ("weekday", "day", "dayofyear")},
    "band": Derivation(bucket="x", edges=[-1.0, 0.0, 2.5]),
}


def _pandas(columns, derivations, times):
    """What serving computed before: a frame, times in UTC, ``derive`` per feature."""
    frame = pd.DataFrame(columns)
    for name in times:
        frame[name] = pd.to_datetime(frame[name], utc=True).astype("datetime64[us, UTC]")
    return {name: derive(frame, d).tolist() for name, d in derivations.items()} | {}


def _events(rng: random.Random, n: int) -> dict[str, list]:
    zones = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
    at = []
    for _ in range(n):
        moment = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(10**8))
        zone = rng.choice([*zones, None])
        at.append(moment.replace(tzinfo=None) if zone is None else moment.astimezone(zone))
    return {
        "a": [rng.randrange(-50, 50) for _ in range(n)],
        "b": [rng.choice([0, *range(-5, 6)]) for _ in range(n)],
        "x": [rng.uniform(-3, 4) for _ in range(n)],
        "at": at,
        "on": [date(2020, 1, 1) + timedelta(days=rng.randrange(3000)) for _ in range(n)],
    }


def _same(fast: list, slow: list) -> bool:
    return len(fast) == len(slow) and all(
        type(f) is type(s)
        and (f == s or (isinstance(f, float) and math.isnan(f) and math.isnan(s)))
        for f, s in zip(fast, slow, strict=True)
    )


@pytest.mark.parametrize("n", [1, 3, 50])
def test_values_and_types_are_the_pandas_paths(n):
    rng = random.Random(n)
    for _ in range(20):
        columns = _events(rng, n)
        fast = derive_values(columns, DERIVATIONS, ["at", "on"])
        slow = _pandas(columns, DERIVATIONS, ["at", "on"])
        assert fast is not None
        for name in DERIVATIONS:
            assert _same(fast[name], slow[name]), (name, fast[name], slow[name])


def test_a_missing_input_leaves_it_to_the_pandas_path():
    columns = _events(random.Random(0), 3)
    columns["a"][1] = None
    assert derive_values(columns, DERIVATIONS, ["at", "on"]) is None
    columns = _events(random.Random(0), 3)
    columns["at"][0] = "2026-01-01T00:00:00"  # not a datetime: pandas parses it
    assert derive_values(columns, DERIVATIONS, ["at", "on"]) is None


def test_the_shipped_use_cases_derivations_agree():
    usecase = UseCase.from_yaml(PACKAGE_USECASES / "hotel_bookings.yaml")
    derived = usecase.features.derived
    assert derived, "the hotel case declares derived features"
    from closedloop.usecases.hotel.generator import generate_day

    frame = generate_day(date(2026, 1, 1), rows_per_day=40, seed=3)
    times = [c for c in frame.columns if usecase.columns.get(c) and
             usecase.columns[c].type in ("date", "timestamp")]  # fmt: skip
    columns = {c: frame[c].tolist() for c in frame.columns}
    for name in times:  # as the request model gives them: datetime objects
        columns[name] = [v.to_pydatetime() if hasattr(v, "to_pydatetime") else v
                         for v in columns[name]]  # fmt: skip
    fast = derive_values(columns, derived, times)
    assert fast is not None
    slow = _pandas(columns, derived, times)
    for name in derived:
        assert _same(fast[name], slow[name]), (name, fast[name][:5], slow[name][:5])
