"""The batch path's key lookup without Python strings, and its outputs' Parquet layout:
each must agree with the plain pandas/Arrow answer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from closedloop.core import offline
from closedloop.core.asof import StringKeys

WORDS = ["", "a", "a ", "ab", "CS00000001", "hôtel-été", "ключ", "🏨-7", "x" * 40, "abcdefgh"]


def _random_keys(rng: np.random.Generator, n: int) -> list[str]:
    alphabet = list("abcXYZ019-_ é")
    return ["".join(rng.choice(alphabet, rng.integers(0, 24))) for _ in range(n)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_string_keys_find_what_pandas_finds(seed):
    rng = np.random.default_rng(seed)
    uniques = sorted(set(_random_keys(rng, 3000) + WORDS))
    lookup = StringKeys.of(pa.array(uniques))
    assert lookup is not None
    asked = [*rng.choice(uniques, 4000).tolist(), *_random_keys(rng, 1000), "a\x00", "x" * 300]
    rng.shuffle(asked)
    asked[5] = None  # a null key matches nothing
    want = pd.Index(uniques).get_indexer(pd.Index(asked, dtype=object))
    want[5] = -1
    array = pa.array(asked, pa.string())
    np.testing.assert_array_equal(lookup.codes(array), want)
    # a slice (an offset into the buffers) and a chunked column answer the same
    np.testing.assert_array_equal(lookup.codes(array[1000:2500]), want[1000:2500])
    chunked = pa.chunked_array([array[:1234], array[1234:]])
    np.testing.assert_array_equal(lookup.codes(chunked), want)


def test_equal_length_keys_take_the_reshape_path_and_agree():
    uniques = [f"CS{i:08d}" for i in range(0, 50_000, 7)]
    lookup = StringKeys.of(pa.array(uniques))
    asked = [f"CS{i:08d}" for i in range(0, 50_000, 3)]
    want = pd.Index(uniques).get_indexer(asked)
    assert (want >= 0).any() and (want == -1).any()
    np.testing.assert_array_equal(lookup.codes(pa.array(asked)), want)


def test_string_keys_decline_what_they_cannot_do():
    assert StringKeys.of(pa.array([], pa.string())) is None
    assert StringKeys.of(pa.array(["a", None])) is None
    assert StringKeys.of(pa.array(["a", "b" * 257])) is None


def test_mostly_distinct_columns_are_written_without_a_dictionary(tmp_path):
    n = 5000
    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "id": [f"BK-{i:06d}" for i in range(n)],
            "score": rng.random(n),
            "hotel": rng.choice(["H01", "H02"], n),
            "count": rng.integers(0, 5, n),
        }
    )
    assert offline.dictionary_columns(table) == ["hotel", "count"]
    assert offline.dictionary_columns(table.slice(0, 10)) is True  # too few rows to judge
    with offline.PartitionWriter(tmp_path, "2026-01-01") as out:
        out.write(table)
    metadata = pq.ParquetFile(out.path).metadata.row_group(0)
    dictionaries = {
        metadata.column(i).path_in_schema: metadata.column(i).has_dictionary_page
        for i in range(metadata.num_columns)
    }
    assert dictionaries == {"id": False, "score": False, "hotel": True, "count": True}
    assert pq.read_table(out.path).equals(table)


def test_dictionary_columns_are_read_back_as_their_values(tmp_path):
    values = pa.array(["Direct", "Groups", None, "Direct"] * 500)
    when = pa.array(pd.date_range("2026-01-01", periods=2000, freq="min", tz="UTC"))
    table = pa.table({"segment": values.dictionary_encode(), "at": when})
    with offline.PartitionWriter(tmp_path, "2026-01-01") as out:
        out.write(table)
    back = pq.read_table(out.path)
    assert back.schema == pa.schema([("segment", pa.string()), ("at", when.type)])
    assert back.column("segment").to_pylist() == values.to_pylist()
    assert pd.read_parquet(out.path)["segment"].dtype == object  # not a Categorical


# -- the point-in-time rule ----------------------------------------------------------------

START = pd.Timestamp("2026-03-10", tz="UTC")
END = START + pd.Timedelta(days=1)


def _view(folder, *, keys, ttl):
    from closedloop.core.asof import FeatureViewPlan

    return FeatureViewPlan(
        name="v", features=["value", "label"], join_keys=keys, timestamp="ts", ttl=ttl,
        folder=folder, own=False,
    )  # fmt: skip


def _brute_force(rows: pd.DataFrame, keys: list[str], at: pd.Timestamp, key, ttl) -> dict:
    """Feast's rule by hand: the newest row of the key stamped at or before ``at`` (and
    not before ``at - ttl``); of equal stamps, the one read last."""
    mine = rows[(rows[keys] == pd.Series(dict(zip(keys, key, strict=True)))).all(axis=1)]
    mine = mine[mine["ts"] <= at]
    if ttl is not None:
        mine = mine[mine["ts"] >= at - ttl]
    if mine.empty:
        return {"value": None, "label": None}
    last = mine[mine["ts"] == mine["ts"].max()].iloc[-1]
    return {"value": last["value"], "label": last["label"]}


@pytest.mark.parametrize(
    ("keys", "ttl"),
    [
        pytest.param(["device"], None, id="one-key-no-ttl"),
        pytest.param(["device"], pd.Timedelta(hours=6), id="one-key-ttl"),
        pytest.param(["device", "site"], pd.Timedelta(days=2), id="two-keys-ttl"),
    ],
)
def test_each_entity_row_gets_the_newest_row_of_its_key_at_or_before_its_time(tmp_path, keys, ttl):
    """Random rows over three days in two partition files, stamped on a coarse grid so
    that entity times fall exactly on row stamps, TTL edges and equal stamps; entity
    rows inside ``[start, end)``, some of unknown keys: every answer equals the brute
    force's."""
    from closedloop.core.asof import AsOfIndex
    from closedloop.core.training_pipeline import EVENT_TIMESTAMP

    rng = np.random.default_rng(len(keys) + (0 if ttl is None else 1))
    grid = pd.Timedelta(minutes=30)
    n = 600
    rows = pd.DataFrame(
        {
            "device": rng.choice(["d1", "d2", "d3", "d4", "ключ"], n),
            "site": rng.choice(["s1", "s2"], n),
            "ts": START - pd.Timedelta(days=2) + rng.integers(0, 3 * 48, n) * grid,
            "value": rng.normal(size=n).round(3),
            "label": rng.choice(["a", "b", None], n),
        }
    )
    # the rule's edges, on a key of their own: a row exactly one TTL (or a day) before
    # the interval's start, one exactly at an entity's time, two with the same stamp
    old = START - (ttl if ttl is not None else pd.Timedelta(days=1))
    edges = [
        (old, 1.0),
        (START + 6 * grid, 2.0),
        (START + 12 * grid, 3.0),
        (START + 12 * grid, 4.0),
    ]
    rows = pd.concat(
        [rows, pd.DataFrame({"device": "edge", "site": "s1", "ts": [t for t, _ in edges],
                             "value": [v for _, v in edges], "label": "e"})],
        ignore_index=True,
    )  # fmt: skip
    rows["ts"] = rows["ts"].astype("datetime64[us, UTC]")
    for i, part in enumerate((rows.iloc[: n // 2], rows.iloc[n // 2 :])):  # edges: 2nd
        part.to_parquet(tmp_path / f"part-{i}.parquet", index=False)
    index = AsOfIndex(_view(tmp_path, keys=keys, ttl=ttl), START.to_pydatetime(),
                      END.to_pydatetime())  # fmt: skip

    m = 300
    entities = pd.DataFrame(
        {
            "device": rng.choice(["d1", "d2", "d3", "d4", "ключ", "unknown"], m),
            "site": rng.choice(["s1", "s2"], m),
            EVENT_TIMESTAMP: START + rng.integers(0, 48, m) * grid,
        }
    )
    edge_times = [START, START + 6 * grid - pd.Timedelta(seconds=1), START + 6 * grid,
                  START + 12 * grid, END - pd.Timedelta(microseconds=1)]  # fmt: skip
    entities = pd.concat(
        [entities, pd.DataFrame({"device": "edge", "site": "s1", EVENT_TIMESTAMP: edge_times})],
        ignore_index=True,
    )
    m = len(entities)
    got = index.features(entities)
    edge = got.iloc[-len(edge_times) :]["value"].tolist()
    assert edge[0] == 1.0 and edge[2:4] == [2.0, 4.0], edge  # at the TTL, at a stamp, read last
    read = pd.concat([pd.read_parquet(tmp_path / f"part-{i}.parquet") for i in range(2)])
    matched = 0
    for i, entity in entities.iterrows():
        key = tuple(entity[k] for k in keys)
        want = _brute_force(read, keys, entity[EVENT_TIMESTAMP], key, ttl)
        value, label = got.loc[i, "value"], got.loc[i, "label"]
        if want["value"] is None:
            assert pd.isna(value) and pd.isna(label), (i, key, value, label)
            continue
        assert value == want["value"], (i, key, value, want)
        assert label == want["label"] or (pd.isna(label) and want["label"] is None), (i, key)
        matched += 1
    assert 50 < matched < m, "the data should give matches and misses"
