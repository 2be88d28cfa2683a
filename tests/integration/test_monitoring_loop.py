"""Batch inference and monitoring through Airflow (dag.test): predictions are logged, the
stable period raises no alarm, drift is detected in the drift period, and the verdict
queues exactly one retraining run of hotel_bookings_training (dag.test has no scheduler to start
it: the real-scheduler end-to-end test covers that)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
import yaml

from closedloop.core.feature_pipeline import backfill
from closedloop.core.monitoring import DecisionLog
from closedloop.core.prediction_log import PredictionLog
from closedloop.core.settings import load_settings
from closedloop.usecases.hotel.generator import DriftSpec, write_batches

pytestmark = pytest.mark.integration

FIRST = date(2026, 1, 1)
HISTORY, WATCHED = 35, 12  # train on 35 days, then watch 12: 6 stable, 6 drifted
DRIFT_START = FIRST + timedelta(days=HISTORY + 6)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), UTC)


@pytest.fixture(scope="module")
def watched(tmp_path_factory, airflow_db):
    from closedloop.platform.airflow_runs import load_dag, run_dag, run_day

    root = tmp_path_factory.mktemp("monitoring") / "home"
    # Six drift days are too few for outcomes of the new regime to arrive, so the
    # deferral is switched off here: this test is about detection and the trigger's
    # deduplication; the real-scheduler end-to-end test runs the configured policy.
    usecase = yaml.safe_load(load_settings().usecase_path.read_text())
    usecase["model"]["monitoring"]["drift_min_new_labels"] = 0
    folder = root.parent / "usecases"
    folder.mkdir()
    (folder / "hotel_bookings.yaml").write_text(yaml.safe_dump(usecase))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOSEDLOOP_HOME", str(root))
        # the DAG factory builds the DAGs from this folder's declaration
        mp.setenv("CLOSEDLOOP_USECASES_DIR", str(folder))
        settings = load_settings()
        drift = DriftSpec(start=DRIFT_START, covariate=1.0, concept=1.0)
        write_batches(settings.landing_dir, FIRST, HISTORY + WATCHED, rows_per_day=200, drift=drift)
        backfill(settings, FIRST, HISTORY)
        as_of = _midnight(FIRST + timedelta(days=HISTORY))
        training = load_dag("hotel_bookings_training")
        assert run_dag(training, as_of, {"as_of": as_of.isoformat(), "reason": "initial"}).succeeded
        inference, monitoring = (
            load_dag("hotel_bookings_batch_inference"),
            load_dag("hotel_bookings_monitoring"),
        )
        days = {}
        for i in range(WATCHED):
            day = FIRST + timedelta(days=HISTORY + i)
            backfill(settings, day, 1)
            scored = run_day(inference, day)
            watched_day = run_day(monitoring, day)
            days[day] = (scored, watched_day)
        yield settings, days


def test_every_day_is_scored_and_logged_once(watched):
    settings, days = watched
    assert all(scored.succeeded for scored, _ in days.values())
    log = PredictionLog(settings.prediction_log_dir).read(
        _midnight(min(days)), _midnight(max(days) + timedelta(days=1))
    )
    assert log["prediction_id"].is_unique
    assert set(log["model_version"]) == {"1"}
    assert log["booking_id"].is_unique


def test_no_false_alarm_before_the_drift_and_detection_after_it(watched):
    settings, days = watched
    verdicts = {v.day: v for v in DecisionLog(settings.closedloop_db).verdicts(settings.model_name)}
    assert len(verdicts) == len(days)
    stable = [v for d, v in verdicts.items() if date.fromisoformat(d) < DRIFT_START]
    drifted = [v for d, v in verdicts.items() if date.fromisoformat(d) >= DRIFT_START]
    assert not any(v.retrain for v in stable), [v.reasons for v in stable]
    assert any(v.retrain for v in drifted), [v.reasons for v in drifted]
    first = min(d for d, v in verdicts.items() if v.retrain)
    assert date.fromisoformat(first) >= DRIFT_START
    # The cooldown holds back further drift retrains after the first one.
    later = [v for d, v in verdicts.items() if d > first]
    assert not any(v.retrain for v in later)
    assert all(v.cooldown_until for v in later if "data drift" in " ".join(v.reasons))


def test_exactly_one_retraining_run_was_queued_with_the_reason(watched):
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    settings, _ = watched
    with create_session() as session:
        runs = session.scalars(
            select(DagRun).where(
                DagRun.dag_id == "hotel_bookings_training", DagRun.run_id.like("retrain__%")
            )
        ).all()
        queued = [(r.run_id, dict(r.conf or {})) for r in runs]
    [(run_id, conf)] = [q for q in queued if settings.model_name in q[0]]
    assert conf["reason"] == "drift"
    assert conf["report"].endswith("drift.html")
    assert run_id.startswith(f"retrain__{settings.model_name}__")
