"""Feature engineering never looks into the future and writes replaceable partitions."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest

from closedloop.core.transform import clean_batch
from closedloop.usecases.hotel.features import customer_history, engineer_features, hotel_stats
from closedloop.usecases.hotel.generator import generate_day

T = datetime(2026, 1, 10, tzinfo=UTC)


def _booking(customer: str, booked: datetime, arrival: datetime, canceled: int, hotel="H01"):
    return {
        "customer_id": customer,
        "hotel": hotel,
        "booking_ts": pd.Timestamp(booked),
        "arrival_date": pd.Timestamp(arrival),
        "is_canceled": canceled,
        "adr": 100.0,
        "lead_time": (arrival - booked).days,
    }


@pytest.fixture
def history() -> pd.DataFrame:
    return pd.DataFrame(
        [
            # settled before T: counts as a booking and as a known outcome
            _booking("C1", T - timedelta(days=9), T - timedelta(days=2), canceled=1),
            # booked before T, arrives after T: a booking, but its outcome is not known yet
            _booking("C1", T - timedelta(days=5), T + timedelta(days=20), canceled=1),
            # booked after T: invisible at T
            _booking("C1", T + timedelta(hours=1), T + timedelta(days=3), canceled=1),
            _booking("C2", T - timedelta(days=3), T - timedelta(days=1), canceled=0, hotel="H02"),
        ]
    )


def test_customer_history_counts_only_what_was_known_before_T(history):
    rows = customer_history(history, pd.Index(["C1", "C2"]), T).set_index("customer_id")
    assert rows.loc[
        "C1", ["cust_bookings", "cust_known_outcomes", "cust_cancellations"]
    ].tolist() == [2, 1, 1]
    assert rows.loc[
        "C2", ["cust_bookings", "cust_known_outcomes", "cust_cancellations"]
    ].tolist() == [1, 1, 0]
    assert rows.loc["C1", "cust_cancel_rate"] == pytest.approx((1 + 1) / (1 + 3))
    assert (rows["event_ts"] == pd.Timestamp(T)).all()


def test_hotel_stats_use_settled_stays_only(history):
    rows = hotel_stats(history, T).set_index("hotel")
    # H01: one settled cancelled stay in the last 30 days; the unsettled one is not counted
    assert rows.loc["H01", "hotel_cancel_rate_30d"] == pytest.approx((1 + 1) / (1 + 3))
    assert rows.loc["H01", "hotel_bookings_7d"] == 1  # the booking at T-9d is outside 7 days
    assert rows.loc["H02", "hotel_cancel_rate_30d"] == pytest.approx((0 + 1) / (1 + 3))


def test_an_outcome_revealed_after_T_does_not_change_rows_stamped_T(history):
    before = customer_history(history, pd.Index(["C1"]), T)
    revealed = history.copy()
    revealed.loc[1, "is_canceled"] = 0  # the future stay's outcome flips
    after = customer_history(revealed, pd.Index(["C1"]), T)
    pd.testing.assert_frame_equal(before, after)


def test_engineer_is_deterministic_and_stamps_the_interval_end(usecase):
    day = date(2026, 1, 5)
    start = datetime(2026, 1, 5, tzinfo=UTC)
    batch = clean_batch(generate_day(day), usecase)
    history = clean_batch(generate_day(day - timedelta(days=1)), usecase)
    from closedloop.usecases.hotel.features import booking_table

    first = engineer_features(
        batch, booking_table(history), interval_start=start, interval_end=start + timedelta(days=1)
    )
    second = engineer_features(
        batch, booking_table(history), interval_start=start, interval_end=start + timedelta(days=1)
    )
    for name in first:
        pd.testing.assert_frame_equal(first[name], second[name])
    assert len(first["bookings"]) == len(batch)
    assert (first["customer_history"]["event_ts"] == start + timedelta(days=1)).all()
    assert set(batch["customer_id"]) <= set(first["customer_history"]["customer_id"])
    assert first["bookings"]["stay_nights"].equals(
        batch["stays_weekend_nights"] + batch["stays_week_nights"]
    )
