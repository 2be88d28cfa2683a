"""Alerts: one JSON message per event with the right link and sentence, delivered to a
real HTTP receiver with retries; what cannot be delivered waits in the outbox (logged),
and the next delivery sends it first — once, even from two processes at a time."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest

from closedloop.core import alert_delivery, alerts
from closedloop.core.alert_delivery import Outbox, deliver, outbox_dir
from closedloop.core.alerts import Alert
from closedloop.core.settings import load_settings

AIRFLOW = "http://127.0.0.1:8080"
MLFLOW = "http://127.0.0.1:5000"


def _settings(*urls: str, **alert_settings):
    config = {"webhooks": list(urls), "backoff_seconds": 0, "timeout_seconds": 2}
    return load_settings(alerts={**config, **alert_settings})


def _alert(settings, event: str = "task_failed", **kwargs) -> Alert:
    fields = {
        "usecase": settings.usecase.name,
        "event": event,
        "title": f"a {event} test",
        "reason": "because",
        "link": f"{AIRFLOW}/x",
    }
    return Alert(**{**fields, **kwargs})


# -- one message per event -----------------------------------------------------------


def _quarantined(settings):
    report = settings.quarantine_dir / "2026-01-02" / "report.json"
    report.parent.mkdir(parents=True)
    report.write_text("{}")
    alert = alerts.quarantined(
        settings, "2026-01-02", report, "adr: 3 values below 0", dag_id="d", run_id="r"
    )
    return [alert], [f"{AIRFLOW}/closedloop/files/hotel_bookings/quarantine/2026-01-02/report.json"]


def _verdict(cause: str):
    def build(settings):
        report = settings.reports_dir / "2026-03-05" / "drift.html"
        verdict = {
            "retrain": True,
            "cause": cause,
            "day": "2026-03-05",
            "reasons": [f"{cause}: it moved"],
            "report": str(report),
            "trigger_run_id": "retrain__hotel_cancellation__2026-03-05",
        }
        return alerts.verdict_alerts(settings, verdict), [
            f"{AIRFLOW}/closedloop/files/hotel_bookings/reports/2026-03-05/drift.html",
            f"{AIRFLOW}/dags/hotel_bookings_training/runs/retrain__hotel_cancellation__2026-03-05",
        ]

    return build


def _gate(action: str):
    def build(settings):
        outcome = {"action": action, "version": "3", "reasons": ["auc up"], "champion_version": "2"}
        return [alerts.gate_alert(settings, outcome)], [
            f"{MLFLOW}/#/models/hotel_cancellation/versions/3"
        ]

    return build


def _approval(settings):
    link = f"{AIRFLOW}/dags/d/runs/r/tasks/approve/required_actions?map_index=-1"
    return [alerts.approval_waiting(settings, "Promote v3?", "auc up", link)], [link]


def _task_failed(settings):
    alert = alerts.task_failed(
        settings, "hotel_bookings_features", "manual__2026-01-02T00:00:00+00:00", "clean", "boom"
    )
    return [alert], [
        f"{AIRFLOW}/dags/hotel_bookings_features/runs/"
        "manual__2026-01-02T00%3A00%3A00%2B00%3A00/tasks/clean"
    ]


def _out_of_band(settings):
    from closedloop.core.ledger import OUT_OF_BAND, LedgerEntry, now

    entry = LedgerEntry(
        "hotel_cancellation", "champion", "4", "3", OUT_OF_BAND, "moved by hand", {}, None,
        "out-of-band after entry 7", now(),
    )  # fmt: skip
    return [alerts.out_of_band(settings, entry)], [
        f"{MLFLOW}/#/models/hotel_cancellation/versions/4"
    ]


EVENTS = {
    "quarantined": (_quarantined, ["quarantined"]),
    "out_of_band": (_out_of_band, ["out_of_band"]),
    "drift": (_verdict("drift"), ["drift", "retraining"]),
    "performance": (_verdict("performance"), ["performance", "retraining"]),
    "promoted": (_gate("promoted"), ["promoted"]),
    "rejected": (_gate("challenger"), ["rejected"]),
    "approval_waiting": (_approval, ["approval_waiting"]),
    "task_failed": (_task_failed, ["task_failed"]),
}


def test_every_event_kind_has_a_case():
    covered = {event for _, events in EVENTS.values() for event in events}
    assert covered == set(alerts.ALERT_EVENTS)


@pytest.mark.parametrize("case", list(EVENTS))
def test_one_message_per_event_with_its_link_and_sentence(home, alert_receiver, case):
    receiver = alert_receiver()
    settings = _settings(receiver.url)
    build, events = EVENTS[case]
    made, expected_links = build(settings)

    for alert in made:
        done = deliver(alert, settings)
        assert done.sent == [f"http://127.0.0.1:{receiver.port}/…"], done

    assert receiver.events() == events
    for message, link in zip(receiver.messages, expected_links, strict=True):
        assert message["link"] == link
        assert message["usecase"] == "hotel_bookings"
        text = message["text"]
        assert text.startswith("[closedloop] hotel_bookings: ")
        assert alerts.EVENT_LABELS[message["event"]] in text
        assert message["reason"] in text and text.endswith(f"Evidence: {link}")
        assert "\n" not in message["title"]
        assert {"id", "time", "dag_id", "run_id", "task_id", "title"} <= set(message)
    assert Outbox(outbox_dir(settings)).count() == 0


def test_a_verdict_without_retrain_and_a_held_candidate_alert_nothing(home):
    settings = _settings()
    assert alerts.verdict_alerts(settings, {"retrain": False, "reasons": ["calm"]}) == []
    assert alerts.gate_alert(settings, {"action": "awaiting_approval", "version": "3"}) is None


def test_an_unknown_event_is_refused(home):
    with pytest.raises(ValueError, match="unknown alert event"):
        _alert(load_settings(), event="mood")


# -- a receiver that is down, then back ----------------------------------------------


def test_undelivered_alert_is_logged_kept_and_sent_first_when_the_receiver_is_back(
    home, alert_receiver, closed_port, caplog
):
    url = f"http://127.0.0.1:{closed_port}/hooks/T000/secret-token"
    settings = _settings(url, retries=1)
    first = _alert(settings, "quarantined")

    with caplog.at_level(logging.WARNING, logger="closedloop.core.alerts"):
        done = deliver(first, settings)  # returns normally

    assert done.sent == [] and done.queued == [f"http://127.0.0.1:{closed_port}/…"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        f"127.0.0.1:{closed_port}" in w and "refused" in w.lower() and first.id in w
        for w in warnings
    ), warnings
    outbox = Outbox(outbox_dir(settings))
    assert outbox.messages() == [first.message()]
    stored = "".join(p.read_text() for p in outbox_dir(settings).iterdir())
    assert "secret-token" not in stored, "a webhook URL is a secret: never on disk"

    receiver = alert_receiver(port=closed_port)  # back up, same URL
    second = _alert(settings, "promoted")
    done = deliver(second, settings)

    assert done.flushed == 1 and done.sent == [f"http://127.0.0.1:{closed_port}/…"]
    assert [m["id"] for m in receiver.messages] == [first.id, second.id]
    assert receiver.messages[0] == first.message()
    assert outbox.count() == 0 and list(outbox_dir(settings).iterdir()) == []


def test_retries_until_the_receiver_answers(home, alert_receiver):
    receiver = alert_receiver(statuses=[500, 500])
    settings = _settings(receiver.url, retries=2)
    alert = _alert(settings)

    done = deliver(alert, settings)

    assert done.sent and not done.queued
    assert receiver.requests == 3
    assert [m["id"] for m in receiver.messages] == [alert.id]
    assert Outbox(outbox_dir(settings)).count() == 0


def test_retries_spent_leave_the_alert_in_the_outbox(home, alert_receiver):
    receiver = alert_receiver(statuses=[503, 503, 503])
    settings = _settings(receiver.url, retries=1)

    done = deliver(_alert(settings), settings)

    assert done.queued and receiver.requests == 2 and receiver.messages == []
    assert Outbox(outbox_dir(settings)).count() == 1


def test_a_client_error_is_not_retried_but_kept(home, alert_receiver):
    receiver = alert_receiver(statuses=[400])
    settings = _settings(receiver.url, retries=3)

    done = deliver(_alert(settings), settings)

    assert done.queued and receiver.requests == 1
    assert Outbox(outbox_dir(settings)).count() == 1


def test_a_target_failing_in_the_outbox_is_not_tried_again_in_the_same_delivery(
    home, alert_receiver, closed_port
):
    settings = _settings(f"http://127.0.0.1:{closed_port}/h", retries=0)
    for _ in range(3):
        deliver(_alert(settings), settings)
    started = time.monotonic()
    done = deliver(_alert(settings), settings)
    assert done.flushed == 0 and done.queued
    assert Outbox(outbox_dir(settings)).count() == 4
    assert time.monotonic() - started < 5


def test_each_target_gets_each_alert(home, alert_receiver, closed_port):
    up = alert_receiver()
    settings = _settings(up.url, f"http://127.0.0.1:{closed_port}/h", retries=0)
    alert = _alert(settings)

    done = deliver(alert, settings)

    assert len(done.sent) == 1 and len(done.queued) == 1
    assert [m["id"] for m in up.messages] == [alert.id]
    # the entry waits for the target that was down only
    receiver = alert_receiver(port=closed_port)
    deliver(_alert(settings, "drift"), settings)
    assert receiver.messages[0]["id"] == alert.id
    assert [m["id"] for m in up.messages].count(alert.id) == 1


# -- configuration -------------------------------------------------------------------


def test_events_filter(home, alert_receiver):
    receiver = alert_receiver()
    settings = _settings(receiver.url, events=["promoted", "rejected"])

    skipped = deliver(_alert(settings, "quarantined"), settings)
    sent = deliver(_alert(settings, "promoted"), settings)

    assert skipped.skipped and not skipped.sent
    assert sent.sent and receiver.events() == ["promoted"]


def test_no_webhook_sends_nothing_and_queues_nothing(home):
    settings = _settings()
    done = deliver(_alert(settings), settings)
    assert done.skipped == "no webhooks configured"
    assert not outbox_dir(settings).exists()


def test_webhooks_and_events_from_the_environment(home, monkeypatch):
    assert load_settings().alerts.events == list(alerts.ALERT_EVENTS)  # default: all
    assert load_settings().alerts.webhooks == []
    monkeypatch.setenv("CLOSEDLOOP_ALERTS__WEBHOOKS", '["https://hooks.example/T0/B0/tok"]')
    monkeypatch.setenv("CLOSEDLOOP_ALERTS__EVENTS", '["drift", "task_failed"]')
    settings = load_settings()
    assert [w.get_secret_value() for w in settings.alerts.webhooks] == [
        "https://hooks.example/T0/B0/tok"
    ]
    assert "tok" not in repr(settings.alerts)
    assert settings.alerts.events == ["drift", "task_failed"]
    with pytest.raises(ValueError, match="mood"):
        load_settings(alerts={"events": ["mood"]})


# -- the outbox across processes -----------------------------------------------------


def test_a_claim_left_by_a_dead_process_is_released(home, alert_receiver, closed_port):
    settings = _settings(f"http://127.0.0.1:{closed_port}/h", retries=0)
    stuck = _alert(settings)
    deliver(stuck, settings)
    outbox = Outbox(outbox_dir(settings))
    claimed = outbox.claim(outbox.entries()[0])  # ... and the process dies
    old = time.time() - alert_delivery.STALE_CLAIM_SECONDS - 60
    os.utime(claimed, (old, old))

    receiver = alert_receiver(port=closed_port)
    done = deliver(_alert(settings), settings)

    assert done.flushed == 1 and receiver.messages[0]["id"] == stuck.id
    assert list(outbox_dir(settings).iterdir()) == []


_DELIVER_FROM_A_PROCESS = textwrap.dedent(
    """
    import sys, time
    from closedloop.core.alert_delivery import deliver
    from closedloop.core.alerts import Alert
    from closedloop.core.settings import load_settings

    settings = load_settings()
    time.sleep(max(0.0, float(sys.argv[1]) - time.time()))
    alert = Alert(usecase="hotel_bookings", event="task_failed", title=sys.argv[2],
                  reason="r", link=None)
    done = deliver(alert, settings)
    print(done.flushed, len(done.sent), len(done.queued))
    """
)


def test_two_processes_never_deliver_an_outbox_entry_twice(home, alert_receiver, closed_port):
    settings = _settings(f"http://127.0.0.1:{closed_port}/h", retries=0)
    queued = [_alert(settings, title=f"queued {i}") for i in range(16)]
    for alert in queued:
        deliver(alert, settings)
    assert Outbox(outbox_dir(settings)).count() == 16
    receiver = alert_receiver(port=closed_port, delay=0.05)  # slow: the two overlap

    env = {
        **os.environ,
        "CLOSEDLOOP_HOME": str(settings.home),
        "CLOSEDLOOP_ALERTS__WEBHOOKS": json.dumps([f"http://127.0.0.1:{closed_port}/h"]),
        "CLOSEDLOOP_ALERTS__RETRIES": "0",
    }
    start_at = str(time.time() + 4)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _DELIVER_FROM_A_PROCESS, start_at, f"new {n}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs

    flushed = [int(out.split()[0]) for out, _ in outputs]
    assert sum(flushed) == 16, outputs
    assert all(n > 0 for n in flushed), f"the processes did not overlap: {outputs}"
    ids = [m["id"] for m in receiver.messages]
    assert len(ids) == len(set(ids)) == 18, "an outbox entry was delivered twice"
    assert {a.id for a in queued} <= set(ids)
    assert list(outbox_dir(settings).iterdir()) == []


# -- the Airflow notifier ------------------------------------------------------------


def test_the_notifier_never_fails_the_task_it_reports_on(home, alert_receiver, capsys):
    from closedloop.notifiers import ClosedLoopNotifier

    receiver = alert_receiver()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOSEDLOOP_ALERTS__WEBHOOKS", json.dumps([receiver.url]))
        notifier = ClosedLoopNotifier(on="failure")
        # a context without a task instance: the alert cannot even be made; called as
        # Airflow calls a callback (BaseNotifier.__call__ re-raises what notify raises)
        notifier({"exception": RuntimeError("boom")})
    # Airflow's LoggingMixin logs through structlog, to the task log (here: stdout)
    logged = capsys.readouterr().out
    assert "could not be made" in logged and "Traceback" in logged, logged
    assert receiver.messages == []


def test_an_approval_task_alerts_with_its_required_actions_page(home, alert_receiver):
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    from closedloop.notifiers import approval_notifier

    receiver = alert_receiver()
    task = ApprovalOperator(task_id="approve", subject="Promote v3?", body="AUC 0.81 > 0.79")
    ti = SimpleNamespace(
        dag_id="hotel_bookings_training", run_id="manual__1", task_id="approve", map_index=-1
    )
    context = {"task": task, "task_instance": ti, "ti": ti, "run_id": "manual__1"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOSEDLOOP_ALERTS__WEBHOOKS", json.dumps([receiver.url]))
        approval_notifier()(context)  # as HITLOperator.execute calls its notifiers

    [message] = receiver.messages
    assert message["event"] == "approval_waiting"
    assert message["link"] == (
        f"{AIRFLOW}/dags/hotel_bookings_training/runs/manual__1/tasks/approve/"
        "required_actions?map_index=-1"
    )
    assert "Promote v3?" in message["text"] and "AUC 0.81" in message["text"]
