"""The aggregation state cut into shards by entity (``compute: spark``'s engineer step,
:mod:`closedloop.core.engineer_spark`) against the whole engine, on the random readings
of ``tests/aggregates_world.py`` (late labels, gaps, an empty day, missing keys): every
shard advanced interval by interval through its saved snapshot, the shards' rows
together are the engine's rows, value for value, bit for bit.
"""

from __future__ import annotations

import zlib

import pandas as pd
import pytest
from aggregates_world import DAY, batch, declaration, generate, intervals, run

from closedloop.core.engineer_spark import advance_shard, shard_folder
from closedloop.core.usecase import AGGREGATE_TS, UseCase

DAYS = 16
DAILY = (0.3, 1.5, 4.0, 8.0, 30.0)  # readings per device and day: some long sums
SHARDS = 3


def shard_of(key: str) -> int:
    return zlib.crc32(key.encode()) % SHARDS


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
