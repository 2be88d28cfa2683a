"""Alerts through a real Airflow run of the shipped ``hotel_bookings`` features DAG: a bad
batch blocked by the validation gate sends exactly one ``quarantined`` message, linking
its quarantine report, to a local webhook receiver; with the receiver down the run ends
the same way and the alert waits in the outbox."""

from __future__ import annotations

import json
from datetime import date

import pandas as pd
import pytest

from closedloop.core.alert_delivery import Outbox, outbox_dir
from closedloop.platform.airflow_runs import run_day
from closedloop.usecases.hotel.generator import write_batches

pytestmark = pytest.mark.integration

BAD_DAY = date(2026, 1, 2)
DOWNSTREAM = ("clean", "engineer", "load_offline_store", "feast_apply", "materialize")


def _land_a_bad_batch(settings) -> None:
    write_batches(settings.landing_dir, BAD_DAY, 1, rows_per_day=200)
    path = settings.landing_dir / f"{BAD_DAY}.csv"
    df = pd.read_csv(path)
    df.loc[df.index[:3], "adr"] = -20.0  # a negative rate: the suite rejects the batch
    path.write_text(df.to_csv(index=False))


def _report_url(settings) -> str:
    return (
        f"{settings.airflow_public_url}/closedloop/files/hotel_bookings/quarantine/"
        f"{BAD_DAY}/report.json"
    )


def _assert_blocked(outcome) -> None:
    assert outcome.state == "failed"
    assert outcome.failed_tasks() == ["validate"]
    assert outcome.task_tries["validate"] == 1
    for task in DOWNSTREAM:
        assert outcome.task_states[task] == "upstream_failed"


def test_a_quarantined_batch_sends_one_alert_with_its_report(
    features_dag, home, alert_receiver, monkeypatch
):
    receiver = alert_receiver()
    monkeypatch.setenv("CLOSEDLOOP_ALERTS__WEBHOOKS", json.dumps([receiver.url]))
    _land_a_bad_batch(home)

    outcome = run_day(features_dag, BAD_DAY)

    _assert_blocked(outcome)
    assert (home.quarantine_dir / str(BAD_DAY) / "report.json").is_file()
    [message] = receiver.messages  # one alert: no task_failed beside it
    assert message["event"] == "quarantined"
    assert message["link"] == _report_url(home)
    assert message["usecase"] == "hotel_bookings"
    assert message["dag_id"] == "hotel_bookings_features"
    assert message["task_id"] == "validate"
    assert message["run_id"] == outcome.run_id
    assert "adr" in message["reason"]
    assert str(BAD_DAY) in message["text"] and _report_url(home) in message["text"]
    assert Outbox(outbox_dir(home)).count() == 0


def test_the_run_ends_the_same_when_the_receiver_is_down(
    features_dag, home, closed_port, monkeypatch
):
    url = f"http://127.0.0.1:{closed_port}/hooks/down"
    monkeypatch.setenv("CLOSEDLOOP_ALERTS__WEBHOOKS", json.dumps([url]))
    monkeypatch.setenv("CLOSEDLOOP_ALERTS__RETRIES", "1")
    monkeypatch.setenv("CLOSEDLOOP_ALERTS__BACKOFF_SECONDS", "0")
    _land_a_bad_batch(home)

    outcome = run_day(features_dag, BAD_DAY)

    _assert_blocked(outcome)
    [queued] = Outbox(outbox_dir(home)).messages()
    assert queued["event"] == "quarantined" and queued["link"] == _report_url(home)
