"""Operators map core outcomes onto Airflow's retry semantics (execute() with a fake TI)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from closedloop.operators.features import (
    DataQualityGateFailed,
    ExtractBatchOperator,
    ValidateBatchOperator,
)
from closedloop.usecases.hotel.generator import write_batches

START = datetime(2026, 1, 1, tzinfo=UTC)
END = datetime(2026, 1, 2, tzinfo=UTC)


class FakeTI:
    def __init__(self) -> None:
        self.xcom: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcom[key] = value


def _context(start=START, end=END) -> dict:
    return {
        "data_interval_start": start,
        "data_interval_end": end,
        "ti": FakeTI(),
        "run_id": "manual__test",
    }


def test_missing_batch_is_retryable(home):
    with pytest.raises(AirflowException, match="no batch has landed") as info:
        ExtractBatchOperator(task_id="extract").execute(_context())
    assert not isinstance(info.value, AirflowFailException)


def test_unreadable_batch_fails_for_good_and_is_quarantined(home):
    home.landing_dir.mkdir(parents=True)
    (home.landing_dir / "2026-01-01.csv").write_bytes(b"\x00\xff\xfe" * 100 + b'"\n\x00')
    with pytest.raises(DataQualityGateFailed, match=r"unreadable|file_is_readable"):
        ExtractBatchOperator(task_id="extract").execute(_context())
    assert (home.quarantine_dir / "2026-01-01" / "report.json").exists()
    assert not (home.landing_dir / "2026-01-01.csv").exists()


def test_failed_validation_pushes_the_report_and_fails_for_good(home):
    [path] = write_batches(home.landing_dir, START.date(), 1, rows_per_day=30)
    path.write_text(path.read_text().replace(",Direct,", ",Walk-in,"))
    context = _context()
    with pytest.raises(DataQualityGateFailed, match="market_segment") as info:
        ValidateBatchOperator(task_id="validate").execute(context)
    assert isinstance(info.value, AirflowFailException)
    report = context["ti"].xcom["validation"]
    assert report["success"] is False
    assert any(f["column"] == "market_segment" for f in report["failed"])


@pytest.mark.parametrize(
    ("start", "end"),
    [pytest.param(START, START, id="empty-interval"), pytest.param(None, None, id="no-interval")],
)
def test_an_interval_is_required(home, start, end):
    with pytest.raises(AirflowFailException, match="non-empty data interval"):
        ExtractBatchOperator(task_id="extract").execute(_context(start, end))


class _Run:
    def __init__(self, conf=None, run_after=END):
        self.conf, self.run_after = conf or {}, run_after


class _Event:
    def __init__(self, extra):
        self.extra = extra


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        pytest.param(
            {"dag_run": _Run({"as_of": "2026-02-01T00:00:00+00:00"})},
            datetime(2026, 2, 1, tzinfo=UTC),
            id="conf-wins",
        ),
        pytest.param(
            {
                "dag_run": _Run(),
                "triggering_asset_events": {
                    "hotel_bookings_features": [
                        _Event({"interval_end": "2026-01-05T00:00:00+00:00"}),
                        _Event({"interval_end": "2026-01-07T00:00:00+00:00"}),
                    ]
                },
            },
            datetime(2026, 1, 7, tzinfo=UTC),
            id="newest-features-interval",
        ),
        pytest.param(
            {"dag_run": _Run(), "data_interval_end": datetime(2026, 3, 2, tzinfo=UTC)},
            datetime(2026, 3, 2, tzinfo=UTC),
            id="data-interval",
        ),
        pytest.param(
            {"dag_run": _Run(run_after=datetime(2026, 4, 1, tzinfo=UTC))},
            datetime(2026, 4, 1, tzinfo=UTC),
            id="run-after",
        ),
    ],
)
def test_training_window_end(context, expected):
    from closedloop.operators.training import as_of

    assert as_of(context) == expected
