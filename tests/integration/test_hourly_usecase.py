"""An hourly use case in a timezone other than UTC, through the feature pipeline.

Its days are those of ``schedule.timezone`` (Berlin, whose clocks go forward on
2025-03-30: a day of 23 hours), its intervals their hours: each lands as
``<YYYY-MM-DDTHHZ>.csv`` (the hour in UTC) and gets a partition of that key in every
offline table, and its own aggregation snapshot. A rerun of one hour leaves what one run
left.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import yaml

from closedloop.core import offline
from closedloop.core.feature_pipeline import backfill, clean, engineer, extract, load_offline
from closedloop.core.settings import load_settings
from closedloop.core.usecase import UseCase

pytestmark = pytest.mark.integration

NAME = "meter_readings"
DAY = date(2025, 3, 30)  # Europe/Berlin: 02:00 becomes 03:00
DECLARATION = {
    "name": NAME,
    "batch": {"cadence": "hourly", "id_column": "reading_id", "timestamp_column": "read_at"},
    "entities": {"meter": {"join_key": "meter_id"}},
    "label": {"column": "fault", "positive": 1, "known_at": "3h"},
    "columns": {
        "reading_id": {"type": "string", "unique": True},
        "meter_id": {"type": "string"},
        "read_at": {"type": "timestamp"},
        "kwh": {"type": "float", "min": 0, "max": 100},
        "fault": {"type": "int", "min": 0, "max": 1},
    },
    "features": {
        "passthrough": ["kwh"],
        "aggregations": {
            "meter": {
                "meter_readings_6h": {"op": "count", "window": "6h"},
                "meter_kwh_mean_1d": {
                    "op": "mean",
                    "column": "kwh",
                    "window": "1d",
                    "default": 0.0,
                },
                "meter_fault_rate": {"op": "label_rate", "prior": {"rate": 0.1, "weight": 2}},
            }
        },
    },
    "schedule": {"start": "2025-03-29", "timezone": "Europe/Berlin"},
}


def _hours(usecase: UseCase) -> list[datetime]:
    start, end = usecase.day_start(DAY), usecase.day_start(DAY + timedelta(days=1))
    out, at = [], start
    while at < end:
        out.append(at)
        at = (at.astimezone(UTC) + timedelta(hours=1)).astimezone(usecase.tz)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("hourly")
    usecases = root / "usecases"
    usecases.mkdir()
    (usecases / f"{NAME}.yaml").write_text(yaml.safe_dump(DECLARATION))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOSEDLOOP_HOME", str(root / "home"))
        mp.setenv("CLOSEDLOOP_USECASES_DIR", str(usecases))
        mp.setenv("CLOSEDLOOP_USECASE_NAME", NAME)
        settings = load_settings()
        usecase = settings.usecase
        landing = settings.landing_dir
        landing.mkdir(parents=True)
        rng = np.random.default_rng(5)
        hours = _hours(usecase)
        for start in hours:
            n = 12
            seconds = np.sort(rng.integers(0, 3600, n))
            times = [start.astimezone(UTC) + timedelta(seconds=int(s)) for s in seconds]
            key = usecase.interval_key(start)
            pd.DataFrame(
                {
                    "reading_id": [f"{key}-{i:02d}" for i in range(n)],
                    "meter_id": [f"M{m}" for m in rng.integers(0, 4, n)],
                    "read_at": [t.isoformat() for t in times],
                    "kwh": rng.uniform(0, 10, n).round(3),
                    "fault": (rng.random(n) < 0.2).astype(int),
                }
            ).to_csv(landing / f"{key}.csv", index=False)
        result = backfill(settings, DAY, 1)
        yield settings, hours, result


def test_the_day_of_the_clock_change_is_23_local_hours_each_its_own_partition(world):
    settings, hours, result = world
    usecase = settings.usecase
    keys = [usecase.interval_key(h) for h in hours]
    assert len(hours) == 23  # 00:00 CET is 23:00 UTC; 02:00 CET became 03:00 CEST
    assert keys[:3] == ["2025-03-29T23Z", "2025-03-30T00Z", "2025-03-30T01Z"]
    assert keys[-1] == "2025-03-30T21Z"
    assert result["rows"] == 23 * 12
    for table in usecase.offline_tables:
        assert offline.partition_keys(settings.offline_table_dir(table)) == keys, table
    events = offline.read_partitions(settings.offline_table_dir(usecase.event_table))
    for key, frame in events.groupby(events["reading_id"].str[:14]):
        start = usecase.key_start(key)
        assert (frame["read_at"] >= start).all() and (
            frame["read_at"] < start + timedelta(hours=1)
        ).all()


def test_aggregates_are_stamped_at_each_hours_end_and_see_only_earlier_hours(world):
    settings, hours, _ = world
    usecase = settings.usecase
    aggregates = offline.read_partitions(settings.offline_table_dir("meter_aggregates"))
    events = offline.read_partitions(settings.offline_table_dir(usecase.event_table))
    noon = hours[11]  # 12:00 local, after the change
    stamp = noon.astimezone(UTC)
    rows = aggregates[aggregates["event_ts"] == stamp].set_index("meter_id")
    assert len(rows), aggregates["event_ts"].unique()
    for meter, row in rows.iterrows():
        mine = events[events["meter_id"] == meter]
        recent = mine[(mine["read_at"] < stamp) & (mine["read_at"] >= stamp - timedelta(hours=6))]
        assert row["meter_readings_6h"] == len(recent)
        known = mine[mine["read_at"] + timedelta(hours=3) < stamp]
        rate = (known["fault"].sum() + 0.1 * 2) / (len(known) + 2)
        assert row["meter_fault_rate"] == pytest.approx(rate)


def test_a_rerun_of_one_hour_leaves_what_one_run_left(world):
    settings, hours, _ = world
    usecase = settings.usecase
    start = hours[5]
    end = start + usecase.interval
    key = usecase.interval_key(start)
    tables = {
        t: pd.read_parquet(offline.partition_path(settings.offline_table_dir(t), key))
        for t in usecase.offline_tables
    }
    snapshots = sorted(p.name for p in settings.aggregation_state_dir.iterdir())
    extract(settings, start, end)
    load_offline(settings, start, engineer(settings, start, end, clean(settings, start)))
    for table, before in tables.items():
        after = pd.read_parquet(offline.partition_path(settings.offline_table_dir(table), key))
        pd.testing.assert_frame_equal(after, before)
    assert sorted(p.name for p in settings.aggregation_state_dir.iterdir()) == snapshots


def test_a_snapshot_in_a_layout_this_version_cannot_read_is_rebuilt_from_the_event_table(
    world, caplog
):
    """A snapshot saved by another closedloop (its ``format`` differs) is not read: the
    interval's state is replayed from the event table, and the rerun leaves the same rows."""
    import json

    settings, hours, _ = world
    usecase = settings.usecase
    start = hours[-1]
    key = usecase.interval_key(start)
    tables = {
        t: pd.read_parquet(offline.partition_path(settings.offline_table_dir(t), key))
        for t in usecase.offline_tables
    }
    meta_path = settings.aggregation_state_dir / usecase.interval_key(hours[-2]) / "state.json"
    meta = json.loads(meta_path.read_text())
    meta["format"] = 1
    meta_path.write_text(json.dumps(meta))

    with caplog.at_level("WARNING"):
        staged = engineer(settings, start, start + usecase.interval, clean(settings, start))
    assert "format 1" in caplog.text and "replaying 22 intervals" in caplog.text, caplog.text
    load_offline(settings, start, staged)
    for table, before in tables.items():
        after = pd.read_parquet(offline.partition_path(settings.offline_table_dir(table), key))
        pd.testing.assert_frame_equal(after, before)
