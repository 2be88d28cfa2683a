"""The batch path's key lookup without Python strings, and its outputs' Parquet layout:
each must agree with the plain pandas/Arrow answer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from closedloop.core import offline
from closedloop.core.batch_inference import _StringKeys

WORDS = ["", "a", "a ", "ab", "CS00000001", "hôtel-été", "ключ", "🏨-7", "x" * 40, "abcdefgh"]


def _random_keys(rng: np.random.Generator, n: int) -> list[str]:
    alphabet = list("abcXYZ019-_ é")
    return ["".join(rng.choice(alphabet, rng.integers(0, 24))) for _ in range(n)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_string_keys_find_what_pandas_finds(seed):
    rng = np.random.default_rng(seed)
    uniques = sorted(set(_random_keys(rng, 3000) + WORDS))
    lookup = _StringKeys.of(pa.array(uniques))
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
    lookup = _StringKeys.of(pa.array(uniques))
    asked = [f"CS{i:08d}" for i in range(0, 50_000, 3)]
    want = pd.Index(uniques).get_indexer(asked)
    assert (want >= 0).any() and (want == -1).any()
    np.testing.assert_array_equal(lookup.codes(pa.array(asked)), want)


def test_string_keys_decline_what_they_cannot_do():
    assert _StringKeys.of(pa.array([], pa.string())) is None
    assert _StringKeys.of(pa.array(["a", None])) is None
    assert _StringKeys.of(pa.array(["a", "b" * 257])) is None


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
