"""A landed batch staged in chunks (``batches.stage_batch``, ``compute: spark``) against
the frame a whole read gives (``batches.read_batch``): the same columns, dtypes and
values, bit for bit, when a column's chunks read differently (integers in one, a gap or
a fraction or a word in another, text that looks like numbers, a column empty in the
first chunk), for CSV and Parquet, and for a header without rows or an empty file.
"""

from __future__ import annotations

import pandas as pd
import pytest

from closedloop.core import batches
from closedloop.core.batches import read_batch, stage_batch
from closedloop.core.errors import BatchUnreadableError
from closedloop.core.usecase import UseCase

CHUNK = 4

CSV = """id,n,gappy,frac,word,code,late,ts,day,empty_first
e01,1,1,1,1,007,,2024-05-01T00:00:00Z,2024-05-01,
e02,2,2,2,2,012,,2024-05-01T01:00:00+02:00,2024-05-01,
e03,3,3,3,3,013,,2024-05-01T02:00:00Z,2024-05-01,
e04,4,4,4,4,014,,2024-05-01T03:00:00Z,2024-05-01,
e05,5,,5.5,5,015,x,2024-05-01T04:00:00Z,2024-05-01,a
e06,6,6,6,word,A16,,not a time,2024-05-01,b
e07,7,7,7.125,7,017,,2024-05-01T06:00:00Z,,
e08,8,8,8,8,018,,2024-05-01T07:00:00.5Z,2024-05-02, c
e09,9,9,0.1,9,019,,2024-05-01T08:00:00Z,2024-05-02,d
"""


@pytest.fixture
def usecase() -> UseCase:
    columns = {
        "id": {"type": "string", "unique": True},
        "n": {"type": "int"},
        "gappy": {"type": "int", "required": False},
        "frac": {"type": "float"},
        "word": {"type": "float"},
        "code": {"type": "string"},
        "late": {"type": "string", "required": False},
        "ts": {"type": "timestamp"},
        "day": {"type": "date", "required": False},
        "empty_first": {"type": "string", "required": False},
        "label": {"type": "int", "min": 0, "max": 1},
    }
    return UseCase.from_dict(
        {
            "name": "chunks",
            "batch": {"id_column": "id", "timestamp_column": "ts"},
            "entities": {"thing": {"join_key": "code"}},
            "label": {"column": "label", "known_at": "at_once"},
            "columns": columns,
            "features": {"aggregations": {"thing": {"things": {"op": "count"}}}},
            "schedule": {"start": "2024-05-01"},
        }
    )


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(batches, "CHUNK_ROWS", CHUNK)


def staged(path, usecase, tmp_path) -> pd.DataFrame:
    target = tmp_path / "read.parquet"
    rows, columns = stage_batch(path, usecase, target)
    frame = pd.read_parquet(target)
    assert (rows, columns) == (len(frame), list(frame.columns))
    return frame


def test_a_csv_staged_in_chunks_reads_as_the_whole_file(usecase, tmp_path):
    path = tmp_path / "2024-05-01.csv"
    path.write_text(CSV)
    whole = read_batch(path, usecase)
    # the cases are what they claim: the chunks read otherwise than the whole
    first = pd.read_csv(path, nrows=CHUNK)
    assert first["code"].dtype == "int64" and whole["code"].dtype == object
    assert first["gappy"].dtype == "int64" and whole["gappy"].dtype == "float64"
    assert first["word"].dtype == "int64" and whole["word"].dtype == object
    assert first["empty_first"].dtype == "float64" and whole["empty_first"].dtype == object
    got = staged(path, usecase, tmp_path)
    pd.testing.assert_frame_equal(got, whole, check_exact=True)
    assert got["code"].iloc[0] == "007"


def test_a_parquet_batch_with_gaps_in_a_later_chunk_reads_as_the_whole_file(usecase, tmp_path):
    path = tmp_path / "2024-05-01.parquet"
    source = tmp_path / "source.csv"
    source.write_text(CSV)
    frame = pd.read_csv(source)
    frame["gappy"] = frame["gappy"].astype("Int64")
    frame.to_parquet(path, index=False)
    usecase = usecase.model_copy(
        update={"batch": usecase.batch.model_copy(update={"format": "parquet"})}
    )
    whole = read_batch(path, usecase)
    pd.testing.assert_frame_equal(staged(path, usecase, tmp_path), whole, check_exact=True)


def test_a_header_without_rows_and_an_empty_file(usecase, tmp_path):
    path = tmp_path / "2024-05-01.csv"
    path.write_text(CSV.splitlines()[0] + "\n")
    pd.testing.assert_frame_equal(staged(path, usecase, tmp_path), read_batch(path, usecase))
    path.write_bytes(b"")
    assert stage_batch(path, usecase, tmp_path / "empty.parquet") == (0, [])


def test_a_malformed_line_in_a_later_chunk_is_unreadable(usecase, tmp_path):
    path = tmp_path / "2024-05-01.csv"
    lines = CSV.splitlines()
    lines[7] += ",one too many"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BatchUnreadableError):
        read_batch(path, usecase)
    with pytest.raises(BatchUnreadableError, match="ParserError"):
        stage_batch(path, usecase, tmp_path / "read.parquet")
    assert not (tmp_path / "read.parquet").exists()
