"""Cleaning a validated batch: declared types, stripped text, missing values kept
missing, a deterministic order."""

from __future__ import annotations

import pandas as pd

from closedloop.core.transform import clean_batch
from closedloop.core.usecase import UseCase

USECASE = UseCase.from_dict(
    {
        "name": "meter_readings",
        "batch": {"id_column": "reading_id", "timestamp_column": "read_at"},
        "entities": {"meter": {"join_key": "meter_id"}},
        "label": {"column": "fault", "positive": 1, "known_at": "at_once"},
        "columns": {
            "reading_id": {"type": "string", "unique": True},
            "meter_id": {"type": "string", "required": False},
            "zone": {"type": "category", "categories": ["a", "b"], "required": False},
            "read_at": {"type": "timestamp"},
            "kwh": {"type": "float"},
            "fault": {"type": "int", "min": 0, "max": 1},
        },
        "features": {"passthrough": ["kwh"]},
        "schedule": {"start": "2025-01-01"},
    }
)


def test_text_is_stripped_and_a_missing_key_stays_missing_not_the_text_nan():
    raw = pd.DataFrame(
        {
            "reading_id": ["r2", " r1 ", "r3"],
            "meter_id": [" M1", None, float("nan")],
            "zone": ["a ", None, "b"],
            "read_at": pd.to_datetime(
                ["2025-01-01T10:00Z", "2025-01-01T09:00Z", "2025-01-01T10:00Z"], utc=True
            ),
            "kwh": [1, 2, 3],
            "fault": [0.0, 1.0, 0.0],
        }
    )
    out = clean_batch(raw, USECASE)
    assert out["reading_id"].tolist() == ["r1", "r2", "r3"]  # by time, then id
    assert out["meter_id"].tolist() == [None, "M1", None]
    assert out["zone"].tolist() == [None, "a", "b"]
    assert out["kwh"].dtype == "float64" and out["fault"].dtype == "int64"
    assert str(out["read_at"].dtype) == "datetime64[us, UTC]"
