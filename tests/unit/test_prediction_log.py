"""The prediction log (idempotent writes, windowed reads) and the ground-truth join."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from closedloop.core.prediction_log import PredictionLog, join_ground_truth, prediction_id

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _records(n=4, source="batch", version="1", start=T0):
    ids = [f"BK-{i}" for i in range(n)]
    return pd.DataFrame(
        {
            "prediction_id": [prediction_id("m", version, source, k) for k in ids],
            "source": source,
            "predicted_at": [start + timedelta(hours=i) for i in range(n)],
            "model_name": "m",
            "model_version": version,
            "arm": "champion",
            "score": [0.1 * i for i in range(n)],
            "decision": [int(i > 1) for i in range(n)],
            "booking_id": ids,
            "lead_time": list(range(n)),
        }
    )


def test_batch_rerun_replaces_its_day(tmp_path):
    log = PredictionLog(tmp_path)
    log.write_batch(_records(), "2026-03-01")
    log.write_batch(_records(), "2026-03-01")  # the rerun
    read = log.read(T0, T0 + timedelta(days=1))
    assert len(read) == 4 and read["prediction_id"].is_unique


def test_a_killed_writers_temporary_file_goes_with_the_next_write(tmp_path):
    """A batch run killed mid-write leaves its temporary file; the retry's write of the
    same day removes it, and the day holds exactly one partition file."""
    log = PredictionLog(tmp_path)
    day = log.batch_partition("2026-03-01").parent
    day.mkdir(parents=True)
    (day / ".batch.k1ll3d_x.tmp").write_bytes(b"PAR1 half a file")
    other = day / ".online-abc.k1ll3d_x.tmp"  # another partition's: not ours to delete
    other.write_bytes(b"")
    with log.batch_writer("2026-03-01") as out:  # the streamed path batch inference takes
        out.write(_records())
    assert sorted(p.name for p in day.iterdir()) == [".online-abc.k1ll3d_x.tmp", "batch.parquet"]
    (day / ".batch.k1ll3d_y.tmp").write_bytes(b"")
    log.write_batch(_records(), "2026-03-01")  # the whole-frame path too
    assert sorted(p.name for p in day.iterdir()) == [".online-abc.k1ll3d_x.tmp", "batch.parquet"]
    assert len(log.read(T0, T0 + timedelta(days=1))) == 4


def test_online_flush_retried_is_one_file_and_sources_are_separate(tmp_path):
    log = PredictionLog(tmp_path)
    log.write_batch(_records(), "2026-03-01")
    flush = _records(2, source="online")
    log.append_online(flush, "2026-03-01")
    log.append_online(flush, "2026-03-01")
    assert len(log.read(T0, T0 + timedelta(days=1))) == 6
    assert len(log.read(T0, T0 + timedelta(days=1), sources=("online",))) == 2


def test_read_is_a_half_open_window(tmp_path):
    log = PredictionLog(tmp_path)
    log.write_batch(_records(4), "2026-03-01")
    assert len(log.read(T0 + timedelta(hours=1), T0 + timedelta(hours=3))) == 2


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        pytest.param(_records().drop(columns=["score"]), "lack columns", id="missing-column"),
        pytest.param(_records().head(0), "no prediction records", id="empty"),
        pytest.param(pd.concat([_records(), _records().head(1)]), "unique", id="duplicate-ids"),
    ],
)
def test_bad_records_are_refused(tmp_path, frame, message):
    with pytest.raises(ValueError, match=message):
        PredictionLog(tmp_path).write_batch(frame, "2026-03-01")


def test_prediction_ids_are_deterministic_and_distinct():
    assert prediction_id("m", "1", "batch", "BK-1") == prediction_id("m", "1", "batch", "BK-1")
    assert prediction_id("m", "1", "batch", "BK-1") != prediction_id("m", "2", "batch", "BK-1")


def test_ground_truth_join_only_uses_outcomes_known_by_as_of():
    predictions = _records(3)
    outcomes = pd.DataFrame(
        {
            "booking_id": ["BK-0", "BK-1", "BK-9"],
            "is_canceled": [1, 0, 1],
            "arrival_date": [T0 + timedelta(days=2), T0 + timedelta(days=10), T0],
        }
    )
    joined = join_ground_truth(
        predictions,
        outcomes,
        key="booking_id",
        label="is_canceled",
        known_at="arrival_date",
        as_of=T0 + timedelta(days=5),
    )
    assert len(joined) == 3  # nothing dropped, nothing duplicated
    assert joined["label_known"].tolist() == [True, False, False]
    assert joined.loc[0, "label"] == 1
    assert joined["label"].isna().tolist() == [False, True, True]


def test_ground_truth_refuses_ambiguous_outcomes():
    outcomes = pd.DataFrame({"booking_id": ["BK-0", "BK-0"], "is_canceled": [1, 0]})
    with pytest.raises(ValueError, match="one row per booking_id"):
        join_ground_truth(
            _records(1), outcomes, key="booking_id", label="is_canceled", known_at=None, as_of=T0
        )
