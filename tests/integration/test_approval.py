"""Human approval before promotion (``model.gate.approval: required``) through a real
Airflow: the API server, the scheduler, and answers given over Airflow's REST API.

One home, one story: a first candidate is approved and becomes champion (a rerun of its
DAG run asks nobody and moves nothing); a second is rejected with a reason; a third is
left unanswered and expires rejected. The gate is told to bless every candidate that
passes the floors, so each run reaches the approval task.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from closedloop.core import tags as tag
from closedloop.core.ledger import read_history
from closedloop.core.registry import CHAMPION, alias_version, client_for
from closedloop.core.settings import PACKAGE_USECASES, load_settings

pytestmark = pytest.mark.integration

FIRST = date(2026, 1, 1)
DAYS = 30
TRAINING = "hotel_bookings_training"
#: long enough to answer the first two requests, short enough to see the third expire
TIMEOUT_HOURS = 0.02  # 72 s


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    from closedloop.core.feature_pipeline import backfill
    from closedloop.platform.local_airflow import LocalAirflow
    from closedloop.usecases.hotel.generator import write_batches

    root = tmp_path_factory.mktemp("approval")
    usecases = root / "usecases"
    usecases.mkdir()
    declaration = yaml.safe_load((PACKAGE_USECASES / "hotel_bookings.yaml").read_text())
    declaration["model"]["gate"] = {
        **declaration["model"].get("gate", {}),
        "approval": "required",
        "approval_timeout_hours": TIMEOUT_HOURS,
        "min_improvement": -1.0,
        "max_segment_regression": 1.0,
    }
    (usecases / "hotel_bookings.yaml").write_text(yaml.safe_dump(declaration, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOSEDLOOP_HOME", str(root / "home"))
        mp.setenv("CLOSEDLOOP_USECASES_DIR", str(usecases))
        mp.setenv("CLOSEDLOOP_USECASE_NAME", "hotel_bookings")
        settings = load_settings()
        write_batches(settings.landing_dir, FIRST, DAYS, rows_per_day=250)
        backfill(settings, FIRST, DAYS)
        running = LocalAirflow(settings)
        # this process's Airflow is the test session's; the servers get a database of
        # their own, migrated by Airflow's CLI in their environment
        migrate = [str(Path(sys.executable).with_name("airflow")), "db", "migrate"]
        subprocess.run(migrate, env=running.environ(), check=True, capture_output=True)
        with running:
            running.wait_for_dags([TRAINING])
            running.set_paused(TRAINING, False)
            yield settings, running


def _start(airflow, day: int) -> str:
    as_of = datetime.combine(FIRST + timedelta(days=day), datetime.min.time(), UTC)
    conf = {"as_of": as_of.isoformat(), "reason": "manual"}
    return airflow.trigger(TRAINING, as_of, conf, run_id=f"approval_{day}")


def _awaiting(airflow, run_id: str) -> dict:
    return airflow.wait_for_input(TRAINING, run_id, "approve")


def _answer(airflow, run_id: str, option: str, reason: str = "") -> None:
    # A person answers seconds after the request at the earliest. An answer within the
    # scheduler's next loop can overtake the executor's report that the asking process
    # ended: Airflow 3.3.2 then sees a "success" event for a task that is running again
    # and fails it (docs/pipelines.md, "Approval before promotion"). Answer as a person
    # would.
    time.sleep(5)
    airflow.answer(TRAINING, run_id, "approve", option, {"reason": reason})


def _ledger(settings):
    return read_history(settings.closedloop_db, settings.model_name)


def _version_of(airflow, run_id: str) -> str:
    xcom = airflow._request(
        "GET",
        f"/api/v2/dags/{TRAINING}/dagRuns/{run_id}/taskInstances/register/xcomEntries/return_value",
    )
    return str(xcom["value"]).strip('"')


def test_an_approved_candidate_becomes_champion_once(airflow):
    settings, running = airflow
    run_id = _start(running, 24)
    request = _awaiting(running, run_id)
    version = _version_of(running, run_id)
    client = client_for(settings)
    # held: no alias yet, the evidence is what the person reads
    assert alias_version(client, settings.model_name, CHAMPION) is None
    assert f"{settings.model_name} v{version}" in request["subject"]
    assert "| roc_auc |" in request["body"] and "#/models/" in request["body"]
    mv = client.get_model_version(settings.model_name, version)
    assert mv.tags[tag.APPROVAL] == "pending"

    _answer(running, run_id, "Approve", "looks right")
    assert running.wait(TRAINING, run_id) == "success"
    assert alias_version(client, settings.model_name, CHAMPION) == version
    (entry,) = [e for e in _ledger(settings) if e.version == version]
    assert entry.action == "promote" and entry.run_id == run_id
    assert "approved by admin: looks right" in entry.reason
    assert entry.actor == "user:admin"  # who approved moved it
    mv = client.get_model_version(settings.model_name, version)
    assert mv.tags[tag.APPROVAL].startswith("approved by admin")

    # a rerun of the whole run: the gate finds the answer, nobody is asked again
    before = _ledger(settings)
    running._request(
        "POST",
        f"/api/v2/dags/{TRAINING}/clearTaskInstances",
        {"dag_run_id": run_id, "dry_run": False, "only_failed": False, "reset_dag_runs": True},
    )
    deadline = time.monotonic() + 600
    while running.run(TRAINING, run_id)["state"] not in ("success", "failed"):
        state = running.task_states(TRAINING, run_id).get("approve")
        assert state != "awaiting_input", "a rerun of an approved run asked again"
        assert time.monotonic() < deadline
        time.sleep(0.5)
    # the gate found the answer in the ledger: nothing left to approve
    assert running.task_states(TRAINING, run_id)["approve"] == "skipped"
    assert running.wait(TRAINING, run_id) == "success"
    assert alias_version(client, settings.model_name, CHAMPION) == version
    assert _ledger(settings) == before


def test_a_rejected_candidate_leaves_the_champion(airflow):
    settings, running = airflow
    client = client_for(settings)
    champion = alias_version(client, settings.model_name, CHAMPION)
    assert champion is not None, "runs after the approval test"
    run_id = _start(running, 26)
    _awaiting(running, run_id)
    version = _version_of(running, run_id)
    _answer(running, run_id, "Reject", "segment too small to trust")
    assert running.wait(TRAINING, run_id) == "success"
    assert alias_version(client, settings.model_name, CHAMPION) == champion
    (entry,) = [e for e in _ledger(settings) if e.version == version]
    assert entry.action == "rejected"
    assert entry.reason == "rejected by admin: segment too small to trust"
    assert entry.actor == "user:admin"
    mv = client.get_model_version(settings.model_name, version)
    assert mv.tags[tag.BLESSED] == "false"
    assert mv.tags[tag.REJECTION_REASON] == entry.reason


def test_an_unanswered_candidate_expires_rejected(airflow):
    settings, running = airflow
    client = client_for(settings)
    champion = alias_version(client, settings.model_name, CHAMPION)
    run_id = _start(running, 28)
    _awaiting(running, run_id)
    version = _version_of(running, run_id)
    assert running.wait(TRAINING, run_id, timeout=TIMEOUT_HOURS * 3600 + 300) == "success"
    assert running.task_states(TRAINING, run_id)["approve"] == "success"
    assert alias_version(client, settings.model_name, CHAMPION) == champion
    (entry,) = [e for e in _ledger(settings) if e.version == version]
    assert entry.action == "rejected"
    assert entry.reason.startswith("expired")
