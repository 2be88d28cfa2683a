"""hotel_bookings_training through Airflow (dag.test) on generated data: the champion/challenger
gate on MLflow aliases, the promotion ledger, rollback, reproducibility, lineage and the
absence of feature leakage.

The scenario is one story, so it runs in order on one home: 40 stable days, then 20 days
of concept drift (the label mechanism changes).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest

from closedloop.core import offline
from closedloop.core.feature_pipeline import backfill
from closedloop.core.ledger import PromotionLedger
from closedloop.core.registry import CHALLENGER, CHAMPION, alias_version, client_for, rollback
from closedloop.core.settings import load_settings
from closedloop.usecases.hotel.generator import DriftSpec, write_batches

pytestmark = pytest.mark.integration

FIRST = date(2026, 1, 1)
STABLE_DAYS, DRIFT_DAYS = 40, 20
DRIFT_START = FIRST + timedelta(days=STABLE_DAYS)
BEFORE_DRIFT = datetime.combine(DRIFT_START, datetime.min.time(), UTC)
AFTER_DRIFT = BEFORE_DRIFT + timedelta(days=DRIFT_DAYS)
MODEL = "hotel_cancellation"


@pytest.fixture(scope="module")
def world(tmp_path_factory, airflow_db):
    """A home with 60 days of features (the last 20 concept-drifted), shared in order."""
    root = tmp_path_factory.mktemp("training") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOSEDLOOP_HOME", str(root))
        settings = load_settings()
        drift = DriftSpec(start=DRIFT_START, concept=1.0)
        write_batches(
            settings.landing_dir, FIRST, STABLE_DAYS + DRIFT_DAYS, rows_per_day=250, drift=drift
        )
        backfill(settings, FIRST, STABLE_DAYS + DRIFT_DAYS)
        yield settings


@pytest.fixture(scope="module")
def training_dag(airflow_db):
    from closedloop.platform.airflow_runs import load_dag

    return load_dag("hotel_bookings_training")


def _train(dag, *, as_of: datetime, reason: str, **conf):
    from closedloop.platform.airflow_runs import run_dag

    conf = {"as_of": as_of.isoformat(), "reason": reason, **conf}
    # Each run gets its own logical date so its run id (and MLflow run) is its own.
    logical = as_of + timedelta(minutes=len(_RUNS))
    _RUNS.append(logical)
    return run_dag(dag, logical, conf)


_RUNS: list[datetime] = []


def _aliases(settings):
    client = client_for(settings)
    return {a: alias_version(client, MODEL, a) for a in (CHAMPION, CHALLENGER, "previous")}


def _xcom(outcome, task_id):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == outcome.dag_id,
                XComModel.run_id == outcome.run_id,
                XComModel.task_id == task_id,
                XComModel.key == "return_value",
            )
        ).first()
        return (
            None
            if row is None
            else (json.loads(row.value) if isinstance(row.value, str) else row.value)
        )


@pytest.fixture(scope="module")
def story(world, training_dag):
    """Runs the scenario once; the tests below check its chapters."""
    from closedloop.core.lineage import git_commit

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOSEDLOOP_HOME", str(world.home))
        # The code version of this checkout, pinned for the story: editing files while
        # the tests run must not look like a code change between two of its runs.
        mp.setenv("CLOSEDLOOP_GIT_COMMIT", git_commit())
        chapters = {}
        chapters["first"] = _train(training_dag, as_of=BEFORE_DRIFT, reason="manual")
        chapters["after_first"] = _aliases(world)
        chapters["rerun"] = _train(training_dag, as_of=BEFORE_DRIFT, reason="manual")
        chapters["after_rerun"] = _aliases(world)
        chapters["drift"] = _train(
            training_dag, as_of=AFTER_DRIFT, reason="drift", window_days=DRIFT_DAYS
        )
        chapters["after_drift"] = _aliases(world)
        chapters["weak"] = _train(
            training_dag,
            as_of=AFTER_DRIFT,
            reason="manual",
            window_days=DRIFT_DAYS,
            drop_features=[
                "deposit_type",
                "total_of_special_requests",
                "lead_time",
                "stay_nights",
                "stays_week_nights",
                "stays_weekend_nights",
            ],
        )
        chapters["after_weak"] = _aliases(world)
        yield chapters


def test_first_run_registers_version_1_as_champion(story):
    first = story["first"]
    assert first.succeeded, first.task_states
    assert story["after_first"][CHAMPION] == "1"
    assert _xcom(first, "gate")["action"] == "promoted"


def test_rerun_on_the_same_data_is_skipped_and_promotes_nothing(story):
    rerun = story["rerun"]
    assert rerun.task_states["skip_if_unchanged"] == "skipped"
    for task in ("train", "register", "gate"):
        assert rerun.task_states[task] == "skipped"
    assert story["after_rerun"] == story["after_first"]


def test_after_concept_drift_a_retrained_model_beats_the_champion_and_is_promoted(story):
    drift = story["drift"]
    assert drift.succeeded, drift.task_states
    decision = _xcom(drift, "gate")
    assert decision["action"] == "promoted", decision["reasons"]
    assert decision["candidate"]["roc_auc"] > decision["champion"]["roc_auc"] + 0.05
    assert story["after_drift"][CHAMPION] == "2"
    assert story["after_drift"]["previous"] == "1"


def test_a_gate_retried_after_it_moved_the_alias_decides_as_its_first_attempt(story, world):
    """A gate task killed after ``champion`` moved to its version is retried: it must
    judge the version against the champion it replaced (now ``previous``), not against
    itself, and record nothing twice."""
    from closedloop.core.payloads import GateOutcome, TrainedModel, TrainingSetRef
    from closedloop.core.training_pipeline import gate

    drift = story["drift"]
    moves = PromotionLedger(world.closedloop_db).history(MODEL)
    assert _aliases(world)[CHAMPION] == "2"
    again = gate(
        world,
        TrainingSetRef.from_dict(_xcom(drift, "build_training_set")),
        TrainedModel.from_dict(_xcom(drift, "train")),
        "2",
        dag_id="hotel_bookings_training",
        run_id=drift.run_id,
    )
    assert again.to_dict() == _xcom(drift, "gate")
    assert again == GateOutcome.from_dict(_xcom(drift, "gate"))
    assert PromotionLedger(world.closedloop_db).history(MODEL) == moves
    assert _aliases(world)[CHAMPION] == "2"


def test_a_weakened_model_is_rejected_and_never_champion(story, world):
    weak = story["weak"]
    assert weak.succeeded, weak.task_states
    decision = _xcom(weak, "gate")
    assert decision["action"] == "challenger"
    assert decision["blessed"] is False
    assert story["after_weak"][CHAMPION] == "2"
    assert story["after_weak"][CHALLENGER] == "3"
    ledger = PromotionLedger(world.closedloop_db).history(MODEL)
    assert not [e for e in ledger if e.version == "3" and e.alias == CHAMPION]
    tags = client_for(world).get_model_version(MODEL, "3").tags
    assert tags["closedloop.blessed"] == "false"
    assert "does not beat champion" in tags["closedloop.rejection_reason"]


def test_ledger_explains_every_move_and_rollback_restores_the_previous_champion(story, world):
    ledger = PromotionLedger(world.closedloop_db)
    moves = [(e.action, e.alias, e.from_version, e.version) for e in ledger.history(MODEL)]
    assert moves == [
        ("promote", CHAMPION, None, "1"),
        ("promote", CHAMPION, "1", "2"),
        ("challenger", CHALLENGER, None, "3"),
    ]
    assert all(e.dag_id == "hotel_bookings_training" for e in ledger.history(MODEL))

    was, now = rollback(client_for(world), ledger, MODEL, "test: v2 misbehaves")

    assert (was, now) == ("2", "1")
    assert _aliases(world)[CHAMPION] == "1"
    assert ledger.history(MODEL)[-1].action == "rollback"
    assert client_for(world).get_model_version(MODEL, "2").tags["closedloop.rolled_back"] == "true"


def _customer_rows_as_of(frame, history, *, direction, exact):
    """For each training row, the customer_aggregates row an as-of join in ``direction`` picks."""
    rows = frame[["customer_id", "event_timestamp"]].reset_index().sort_values("event_timestamp")
    joined = pd.merge_asof(
        rows,
        history.sort_values("event_ts"),
        left_on="event_timestamp",
        right_on="event_ts",
        by="customer_id",
        direction=direction,
        allow_exact_matches=exact,
    )
    return joined.set_index("index").sort_index()


def test_training_rows_never_get_feature_values_from_after_their_event_time(story, world):
    built = _xcom(story["drift"], "build_training_set")
    frame = pd.read_parquet(built["uri"])
    history = offline.read_partitions(world.offline_table_dir("customer_aggregates"))
    expected = _customer_rows_as_of(frame, history, direction="backward", exact=True)
    stamped = expected["event_ts"].notna()
    assert (expected.loc[stamped, "event_ts"] <= expected.loc[stamped, "event_timestamp"]).all()
    defaults = world.usecase.defaults
    for column in ("cust_bookings", "cust_cancellations", "cust_cancel_rate"):
        want = expected[column].fillna(defaults[column])
        assert frame[column].tolist() == pytest.approx(want.tolist()), column
    # The strongest possible leak — a value stamped after the row — would differ somewhere:
    leaky = _customer_rows_as_of(frame, history, direction="forward", exact=False)
    assert frame["cust_bookings"].tolist() != leaky["cust_bookings"].fillna(0).tolist()


def test_reproduce_gives_identical_holdout_metrics(story, world):
    run_id = _xcom(story["drift"], "train")["run_id"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOSEDLOOP_HOME", str(world.home))
        out = subprocess.run(
            [os.path.join(os.path.dirname(sys.executable), "closedloop"), "reproduce", run_id],
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "identical" in out.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(world):
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [
            os.path.join(os.path.dirname(sys.executable), "mlflow"),
            "server",
            "--backend-store-uri",
            world.mlflow_tracking_uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{base}/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("mlflow server did not come up") from None
            time.sleep(0.5)
    yield base
    proc.terminate()
    proc.wait(timeout=30)


def _get(base: str, path: str) -> dict:
    with urllib.request.urlopen(f"{base}{path}", timeout=30) as response:
        return json.loads(response.read())


def test_lineage_of_the_champion_is_visible_through_the_mlflow_rest_api(story, mlflow_server):
    version = _get(
        mlflow_server, f"/api/2.0/mlflow/registered-models/alias?name={MODEL}&alias={CHAMPION}"
    )["model_version"]
    run = _get(mlflow_server, f"/api/2.0/mlflow/runs/get?run_id={version['run_id']}")["run"]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["closedloop.feature_service"] == "hotel_cancellation_v1"
    assert tags["closedloop.feast_project"] == "hotel_bookings"
    assert set(tags["closedloop.feature_views"].split(",")) == {
        "event_features",
        "customer_aggregates",
        "hotel_aggregates",
    }
    assert len(tags["closedloop.data_digest"]) == 64
    assert tags["closedloop.gx_verdict"] == "passed"
    assert tags["mlflow.source.git.commit"] == tags["closedloop.git_commit"] != "unknown"
    assert tags["closedloop.dag_id"] == "hotel_bookings_training"
    assert tags["closedloop.dag_run_id"].startswith("hotel_bookings_training/")
    datasets = run["inputs"]["dataset_inputs"]
    assert datasets and datasets[0]["dataset"]["name"] == "training_set"
    assert datasets[0]["dataset"]["digest"] == tags["closedloop.data_digest"][:36]
    metrics = {m["key"] for m in run["data"]["metrics"]}
    assert {"roc_auc", "pr_auc", "f1", "brier"} <= metrics

    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    # uncapped (the use case sets no sample sizes): the search and refit saw every row
    assert params["sample.refit_fraction"] == params["sample.search_fraction"] == "1.0"
    assert "search_rows" not in json.loads(tags["closedloop.config"])


def test_a_capped_search_and_refit_record_their_sample_sizes_in_mlflow(story, world):
    """The sample sizes are settings of the training config; the MLflow run records
    them with the rows there were and the fractions used. The snapshot is read in
    chunks (``closedloop.core.training_set``); the gate scores the champion on the
    candidate's whole holdout. Runs last: it may move the aliases."""
    from closedloop.core.training_pipeline import (
        build_training_set,
        gate,
        lineage_for,
        register,
        train,
        training_config,
        training_window,
        validate_training,
    )

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOSEDLOOP_HOME", str(world.home))
        versions_before = client_for(world).search_model_versions(f"name='{MODEL}'")
        start, end = training_window(world, BEFORE_DRIFT)
        built = build_training_set(world, start, end, "capped/1")
        gx = validate_training(world, built, run_name="capped_1")
        lineage = lineage_for(world, built, gx, dag_id="test", dag_run_id="capped/1", reason="test")
        config = training_config(world, trials=2, search_rows=800, refit_rows=2000)
        trained = train(world, built, lineage, config)
        run = client_for(world).get_run(trained.run_id)
        versions_after = client_for(world).search_model_versions(f"name='{MODEL}'")
        version = register(world, trained, "capped/1")
        outcome = gate(
            world, built, trained, version, dag_id="test", run_id="capped/1", config=config
        )
    params = run.data.params
    available = int(params["sample.rows_available"])
    assert available > 2000
    assert (params["sample.refit_rows"], params["sample.search_rows"]) == ("2000", "800")
    assert float(params["sample.refit_fraction"]) == pytest.approx(2000 / available)
    assert float(params["sample.search_fraction"]) == pytest.approx(800 / available)
    assert (params["search_rows"], params["refit_rows"]) == ("800", "2000")
    recorded = json.loads(run.data.tags["closedloop.config"])
    assert (recorded["search_rows"], recorded["refit_rows"]) == (800, 2000)
    assert trained.holdout_rows == run.data.metrics["rows"]  # the holdout is scored whole
    assert len(versions_after) == len(versions_before)  # train alone registers nothing
    (dataset,) = run.inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest) == ("training_set", built.digest[:36])
    champion = outcome.decision.champion
    assert champion is not None and champion["rows"] == trained.holdout_rows
