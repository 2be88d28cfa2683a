"""Batch inference on real Feast and MLflow stores: a champion trained by the core
functions (no Airflow) scores an interval's bookings in chunks, with the training set's
features, and writes the predictions and the prediction log idempotently.

Feast's file offline store costs seconds per join call whatever the chunk size, so the
scenario scores one half-day twice (whole, then rerun in chunks; shared by the tests).
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from closedloop.core import offline
from closedloop.core.batch_inference import predictions_dir, score_interval
from closedloop.core.errors import NoChampionError
from closedloop.core.feature_pipeline import backfill
from closedloop.core.lineage import frame_digest
from closedloop.core.prediction_log import CORE_COLUMNS, PredictionLog, prediction_id
from closedloop.core.registry import load_model
from closedloop.core.settings import load_settings
from closedloop.usecases.hotel.generator import write_batches

pytestmark = pytest.mark.integration

FIRST, DAYS = date(2026, 1, 1), 20
TRAIN_END = datetime(2026, 1, 19, tzinfo=UTC)
# Half a day: rows are filtered by booking time inside the day's partition.
START = datetime(2026, 1, 19, 12, tzinfo=UTC)
END = datetime(2026, 1, 20, tzinfo=UTC)
CHUNK = 40  # three chunks, the last one partial


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A home with DAYS of features and a champion trained on the first 18 days."""
    from closedloop.core import training_pipeline as tp

    root = tmp_path_factory.mktemp("batch") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOSEDLOOP_HOME", str(root))
        settings = load_settings()
        write_batches(settings.landing_dir, FIRST, DAYS, rows_per_day=150)
        backfill(settings, FIRST, DAYS)
        decision = tp.run_in_process(
            settings,
            datetime(2026, 1, 1, tzinfo=UTC),
            TRAIN_END,
            "t/1",
            reason="test",
            trials=2,
            validation_days=3,
            holdout_days=3,
        )
        assert decision["action"] == "promoted", decision
        yield settings


def _outputs(settings, out):
    return pd.read_parquet(out["predictions_uri"]), pd.read_parquet(out["log_uri"])


@pytest.fixture(scope="module")
def runs(world):
    """The interval scored whole, then again (a rerun) in chunks of CHUNK rows."""
    runs = {}
    for name, chunk in (("whole", 50_000), ("chunked", CHUNK)):
        out = score_interval(world, START, END, chunk_rows=chunk)
        runs[name] = (out, *_outputs(world, out))
    return runs


@pytest.fixture(scope="module")
def reference(world):
    """The interval's bookings joined exactly as a training set is built, and the
    champion's own predict_proba on them."""
    from closedloop.core.feature_store import feature_refs, historical_features, open_store

    usecase = world.usecase
    bookings = pd.read_parquet(
        offline.partition_path(world.offline_table_dir("events"), "2026-01-19")
    )
    bookings = bookings[(bookings["booking_ts"] >= START) & (bookings["booking_ts"] < END)]
    entities = bookings[[*usecase.entity_keys, "booking_ts", "is_canceled", "arrival_date"]]
    entities = entities.rename(columns={"booking_ts": "event_timestamp"})
    store = open_store(world)
    frame = historical_features(store, entities, feature_refs(store, usecase.feature_service))
    frame = frame.fillna({k: v for k, v in usecase.defaults.items() if k in frame})
    champion = load_model(world)
    return frame, champion.model.predict_proba(frame)[:, 1], champion


def test_scores_equal_the_champions_predict_proba_on_training_set_features(runs, reference):
    frame, expected, champion = reference
    out, predictions, records = runs["whole"]
    assert out["rows"] == len(frame) > CHUNK * 2
    assert predictions["booking_id"].tolist() == frame["booking_id"].tolist()
    np.testing.assert_allclose(predictions["score"], expected, rtol=0, atol=1e-12)
    # The log holds the very feature values the model saw, which are the training set's.
    for column in champion.feature_names:
        got, want = records[column], frame[column]
        if pd.api.types.is_numeric_dtype(want):
            np.testing.assert_array_equal(got.to_numpy(float), want.to_numpy(float), column)
        else:
            assert got.tolist() == want.tolist(), column


def test_decisions_use_the_threshold_recorded_by_the_champions_training_run(world, runs):
    from closedloop.core.registry import client_for

    out, predictions, records = runs["whole"]
    client = client_for(world)
    version = client.get_model_version(world.model_name, out["model_version"])
    threshold = float(client.get_run(version.run_id).data.tags["closedloop.threshold"])
    assert out["model_version"] == load_model(world).version == "1"
    assert (predictions["decision"] == (predictions["score"] >= threshold)).all()
    assert 0 < predictions["decision"].sum() < len(predictions)
    assert out["positive_rate"] == pytest.approx(predictions["decision"].mean())
    assert (records["decision"] == predictions["decision"]).all()
    assert set(predictions["model_version"]) == {"1"}


def test_chunked_scoring_writes_exactly_what_unchunked_scoring_writes(runs):
    whole, chunked = runs["whole"], runs["chunked"]
    assert chunked[0]["chunks"] == math.ceil(whole[0]["rows"] / CHUNK) >= 3
    assert whole[0]["chunks"] == 1
    pd.testing.assert_frame_equal(chunked[1], whole[1], check_exact=True)
    pd.testing.assert_frame_equal(chunked[2], whole[2], check_exact=True)


def test_a_rerun_replaces_both_outputs(world, runs):
    first, rerun = runs["whole"], runs["chunked"]
    assert rerun[0]["rows"] == first[0]["rows"]
    assert frame_digest(rerun[1]) == frame_digest(first[1])
    assert frame_digest(rerun[2]) == frame_digest(first[2])
    assert offline.partition_keys(predictions_dir(world)) == ["2026-01-19"]
    day_dir = world.prediction_log_dir / "source=batch" / "2026-01-19"
    assert sorted(p.name for p in day_dir.iterdir()) == ["batch.parquet"]  # no temp files
    assert not [p for p in predictions_dir(world).iterdir() if p.suffix != ".parquet"]


def test_the_prediction_log_has_one_record_per_booking(world, runs):
    out, predictions, _ = runs["chunked"]
    logged = PredictionLog(world.prediction_log_dir).read(START - timedelta(days=1), END)
    assert len(logged) == out["rows"] == len(predictions)
    assert set(CORE_COLUMNS) <= set(logged.columns)
    by_booking = logged.set_index("booking_id").loc[predictions["booking_id"]]
    want_ids = [prediction_id(world.model_name, "1", "batch", b) for b in predictions["booking_id"]]
    assert by_booking["prediction_id"].tolist() == want_ids
    assert logged["prediction_id"].is_unique
    assert set(logged["source"]) == {"batch"} and set(logged["arm"]) == {"champion"}
    assert set(logged["model_version"]) == {"1"}
    assert (
        by_booking["predicted_at"].to_numpy() == predictions["event_timestamp"].to_numpy()
    ).all()
    assert by_booking["score"].tolist() == predictions["score"].tolist()


def test_an_interval_whose_features_have_not_landed_is_retryable_and_writes_nothing(world):
    from closedloop.core.errors import BatchNotFoundError

    before = sorted(p.name for p in predictions_dir(world).glob("*"))
    after_data = datetime(2026, 3, 1, tzinfo=UTC)
    with pytest.raises(BatchNotFoundError, match="no events partition for 2026-03-01"):
        score_interval(world, after_data, after_data + timedelta(days=1))
    assert sorted(p.name for p in predictions_dir(world).glob("*")) == before


def test_without_a_champion_scoring_fails_with_a_clear_error(home):
    with pytest.raises(NoChampionError, match="no version under the alias 'champion'"):
        score_interval(home, START, END)
    assert not predictions_dir(home).exists()


def test_an_alias_that_is_not_set_is_a_clear_error(world):
    with pytest.raises(NoChampionError, match="'challenger'"):
        load_model(world, alias="challenger")
