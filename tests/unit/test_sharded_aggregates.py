"""The aggregation state cut into shards by entity (``compute: spark``'s engineer step,
:mod:`closedloop.core.engineer_spark`) against the whole engine, on the random readings
of ``tests/aggregates_world.py`` (late labels, gaps, an empty day, missing keys): every
shard advanced interval by interval through its saved snapshot, the shards' rows
together are the engine's rows, value for value, bit for bit.
"""

from __future__ import annotations

import zlib

import pandas as pd
import pyarrow as pa
import pytest
from aggregates_world import DAY, START, batch, declaration, generate, intervals, run

from closedloop.core import engineer_spark, offline
from closedloop.core.engineer_spark import (
    _SHARD,
    _STEP,
    ShardJob,
    _advance_group,
    advance_shard,
    shard_folder,
)
from closedloop.core.usecase import AGGREGATE_TS, UseCase

DAYS = 16
DAILY = (0.3, 1.5, 4.0, 8.0, 30.0)  # readings per device and day: some long sums
SHARDS = 3


def shard_of(key: str) -> int:
    return zlib.crc32(key.encode()) % SHARDS


def shard_rows(events: pd.DataFrame, key: str, shard: int) -> pd.DataFrame:
    """The rows of ``events`` whose ``key`` falls in ``shard`` (a row without a key in none)."""
    keyed = events[events[key].notna()]
    return keyed[keyed[key].map(shard_of) == shard]


def sharded_run(usecase: UseCase, readings: pd.DataFrame, periods, root) -> dict[str, pd.DataFrame]:
    """Every row the shards emit over ``periods``, per entity; each shard's state is
    saved after each interval and read back before the next."""
    out = {}
    for entity in usecase.features.aggregations:
        key = usecase.entities[entity].join_key
        frames = []
        for step, (start, end) in enumerate(periods):
            events = batch(readings, usecase, start, end)
            events = events[events[key].notna()]
            # the shard sees its rows in another order than the batch's
            events = events.sample(frac=1.0, random_state=step)
            for shard in range(SHARDS):
                mine = events[events[key].map(shard_of) == shard]
                previous = shard_folder(root / f"{step - 1}", entity, shard) if step else None
                rows = advance_shard(
                    usecase, entity, mine, start, end, previous,
                    shard_folder(root / f"{step}", entity, shard),
                )  # fmt: skip
                frames.append(rows)
        out[entity] = pd.concat([f for f in frames if len(f)], ignore_index=True)
    return out


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(declaration(known_at="6h", short="6h"), id="delay-hourly-buckets"),
        pytest.param(declaration(known_at="resolved_ts", short="2d"), id="known-at-daily"),
        pytest.param(declaration(known_at="at_once", short="2d"), id="at-once-daily"),
    ],
)
def test_the_shards_rows_are_the_engines_bit_for_bit(raw, tmp_path):
    usecase = UseCase.from_dict(raw)
    periods = intervals(DAYS, DAY)
    readings = generate(raw, periods, seed=11, per_period=DAILY, empty=(5,))
    whole = run(usecase, readings, periods)
    shards = sharded_run(usecase, readings, periods, tmp_path)

    for entity, expected in whole.items():
        key = usecase.entities[entity].join_key
        assert expected[key].map(shard_of).nunique() >= 2  # the keys were cut
        order = [AGGREGATE_TS, key]
        expected = expected.sort_values(order, ignore_index=True)
        got = shards[entity].sort_values(order, ignore_index=True)
        pd.testing.assert_frame_equal(got, expected, check_exact=True)
    # the sums compared are long enough to depend on the order they are added in
    counts = readings.groupby("device_id").size()
    assert counts.max() > 100


def test_a_replay_job_advances_each_shard_through_many_intervals(tmp_path):
    """A replay job's worker (``_advance_group`` with several intervals, their events
    told apart by ``_STEP``) leaves each shard's state as advancing it interval by
    interval does: the rows the shards emit after it are the engine's, bit for bit."""
    raw = declaration(known_at="resolved_ts", short="2d")
    usecase = UseCase.from_dict(raw)
    periods = intervals(DAYS, DAY)
    readings = generate(raw, periods, seed=5, per_period=DAILY, empty=(5,))
    whole = run(usecase, readings, periods)
    replayed = 9  # the empty day among them
    replay = tmp_path / "replay"
    after = {}
    for entity in usecase.features.aggregations:
        key = usecase.entities[entity].join_key
        frames = []
        for shard in range(SHARDS):
            steps = []
            for step, (start, end) in enumerate(periods[:replayed]):
                mine = shard_rows(batch(readings, usecase, start, end), key, shard)
                steps.append(mine.assign(**{_STEP: step, _SHARD: shard}))
            # the worker gets its shard's rows of every interval, in no order
            events = pd.concat(steps, ignore_index=True).sample(frac=1.0, random_state=shard)
            table = pa.Table.from_pandas(events, preserve_index=False)
            job = ShardJob(usecase, entity, None, str(replay), tuple(periods[:replayed]))
            _advance_group(job, (pa.scalar(shard),), table, None)
            previous = shard_folder(replay, entity, shard)
            for step, (start, end) in enumerate(periods[replayed:]):
                mine = shard_rows(batch(readings, usecase, start, end), key, shard)
                target = shard_folder(tmp_path / f"after-{step}", entity, shard)
                frames.append(advance_shard(usecase, entity, mine, start, end, previous, target))
                previous = target
        after[entity] = pd.concat([f for f in frames if len(f)], ignore_index=True)

    since = periods[replayed][1]
    for entity, expected in whole.items():
        order = [AGGREGATE_TS, usecase.entities[entity].join_key]
        expected = expected[expected[AGGREGATE_TS] >= since]
        expected = expected.sort_values(order, ignore_index=True)
        got = after[entity].sort_values(order, ignore_index=True)
        assert len(expected) > 0
        pd.testing.assert_frame_equal(got, expected, check_exact=True)


def test_a_replay_is_cut_into_runs_of_intervals_of_at_most_replay_rows_a_shard(
    tmp_path, monkeypatch
):
    """Consecutive intervals go in one job until the next would pass ``REPLAY_ROWS``
    events a shard; an interval without a partition (none loaded) is replayed empty."""
    usecase = UseCase.from_dict(declaration(known_at="at_once", short="2d"))
    days = [usecase.key_start(usecase.interval_key(START + i * DAY)) for i in range(6)]
    keys = [usecase.interval_key(d) for d in days]
    for day, rows in ((0, 3), (1, 2), (3, 4)):  # no partition of days 2 and 4
        pd.DataFrame({"n": range(rows)}).to_parquet(offline.partition_path(tmp_path, keys[day]))
    monkeypatch.setattr(engineer_spark, "REPLAY_ROWS", 2)
    loaded = offline.partition_keys(tmp_path)

    jobs = engineer_spark._replay_jobs(usecase, tmp_path, loaded, days[5], shards=2)

    def day(at, key):
        return days.index(at), None if key is None else keys.index(key)

    assert [[day(at, key) for at, _, key in job] for job in jobs] == [
        [(0, 0)],
        [(1, 1), (2, None)],
        [(3, 3), (4, None)],
    ]
    assert all(end == usecase.next_start(at) for job in jobs for at, end, _ in job)
