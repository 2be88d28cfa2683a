"""Who moved an alias: the promotion ledger names the actor of each move closedloop makes
(the training DAG, the person who rolled back), and a move made outside closedloop (by
hand, with MLflow's own client, as its UI would) is found by the next comparison — the
serving follower's next poll, the next training run's gate — recorded once as
``out_of_band`` and alerted. On a home built by the feature pipeline with two trained
versions, the real MLflow registry (SQLite) and the ledger."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import yaml
from click.testing import CliRunner

from closedloop.core import alias_watch
from closedloop.core.ledger import OUT_OF_BAND, read_history
from closedloop.core.registry import CHALLENGER, CHAMPION, alias_version, client_for
from closedloop.core.settings import load_settings
from closedloop.usecases.hotel.generator import write_batches

pytestmark = pytest.mark.integration

TRAINING = "hotel_bookings_training"
QUICK = {"trials": 2, "validation_days": 3, "holdout_days": 3}


def _ledger(settings):
    return read_history(settings.closedloop_db, settings.model_name)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from datetime import date

    from closedloop.core import training_pipeline as tp
    from closedloop.core.feature_pipeline import backfill

    root = tmp_path_factory.mktemp("aliases") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOSEDLOOP_HOME", str(root))
        settings = load_settings()
        write_batches(settings.landing_dir, date(2026, 1, 1), 20, rows_per_day=120)
        backfill(settings, date(2026, 1, 1), 20)
        # a gate that blesses anything: every run promotes, the history is known
        declared = yaml.safe_load(settings.usecase_path.read_text())
        declared["model"]["gate"] = {"min_improvement": -1.0, "floors": {},
                                     "max_segment_regression": 1.0}  # fmt: skip
        path = root.parent / "hotel_bookings.yaml"
        path.write_text(yaml.safe_dump(declared))
        settings = settings.for_usecase(file=path)
        for n, end in ((1, 16), (2, 20)):
            out = tp.run_in_process(settings, datetime(2026, 1, 1, tzinfo=UTC),
                                    datetime(2026, 1, end, tzinfo=UTC), f"aliases/{n}",
                                    reason="test", dag_id=TRAINING, **QUICK)  # fmt: skip
            assert out["action"] == "promoted", out
        yield settings


def test_each_move_the_gate_made_names_the_training_dag_and_none_is_out_of_band(world):
    settings = world
    history = _ledger(settings)
    assert [(e.action, e.version, e.from_version) for e in history] == [
        ("promote", "1", None), ("promote", "2", "1"),
    ]  # fmt: skip
    assert {e.actor for e in history} == {f"dag:{TRAINING}"}
    assert all(f"by dag:{TRAINING}" in e.line() for e in history)
    assert alias_watch.check_aliases(settings).recorded == []
    state = alias_watch.expected_aliases(history)
    client = client_for(settings)
    assert state == {a: alias_version(client, settings.model_name, a) for a in state}


def test_the_follower_records_a_move_by_hand_within_one_poll_and_alerts_it(
    world, monkeypatch, alert_receiver
):
    from closedloop.serving.follower import ModelFollower

    settings = world
    receiver = alert_receiver()
    monkeypatch.setenv("CLOSEDLOOP_ALERTS__WEBHOOKS", json.dumps([receiver.url]))
    settings = load_settings()
    client, model = client_for(settings), settings.model_name
    events = []
    follower = ModelFollower(settings, shadow=True, on_event=lambda k, d: events.append((k, d)))
    follower.load_initial()
    assert not follower.check()  # the first poll: the registry agrees with the ledger
    before = len(_ledger(settings))
    champion = alias_version(client, model, CHAMPION)
    other = "1" if champion == "2" else "2"
    client.set_registered_model_alias(model, CHAMPION, other)  # by hand, as in MLflow's UI

    assert follower.check()  # one poll: swapped, and recorded
    assert follower.deployment.champion.version == other
    history = _ledger(settings)
    (entry,) = history[before:]
    assert (entry.action, entry.alias, entry.version, entry.from_version) == (
        OUT_OF_BAND, CHAMPION, other, champion,
    )  # fmt: skip
    assert entry.actor is None and "moved outside closedloop" in entry.reason
    assert "by unknown" in entry.line()
    assert ("out_of_band", CHAMPION) in events
    [message] = receiver.messages
    assert message["event"] == "out_of_band" and f"v{champion} -> v{other}" in message["text"]

    # the next poll, and another process's comparison, record nothing more
    assert not follower.check()
    assert alias_watch.check_aliases(settings).recorded == []
    assert len(_ledger(settings)) == before + 1

    client.set_registered_model_alias(model, CHAMPION, champion)  # and back, by hand
    assert follower.check()
    last = _ledger(settings)[-1]
    assert (last.action, last.version, last.from_version) == (OUT_OF_BAND, champion, other)


def test_a_move_closedloop_is_making_is_not_out_of_band_until_it_is_stale(world, monkeypatch):
    from closedloop.core.registry import mark_move

    settings = world
    client, model = client_for(settings), settings.model_name
    challenger = alias_version(client, model, CHALLENGER)
    target = "1" if challenger != "1" else "2"
    before = len(_ledger(settings))
    # the gate's order: mark, move, then the ledger entry (not written yet here)
    mark_move(client, model, target, CHALLENGER)
    client.set_registered_model_alias(model, CHALLENGER, target)
    found = alias_watch.check_aliases(settings)
    assert found.recorded == [] and found.in_flight == [CHALLENGER]
    # the task died: once the mark is older than a move may take, it is out of band
    monkeypatch.setattr(alias_watch, "IN_FLIGHT_SECONDS", 0)
    (entry,) = alias_watch.check_aliases(settings).recorded
    assert (entry.alias, entry.version) == (CHALLENGER, target)
    assert len(_ledger(settings)) == before + 1


def test_the_next_training_run_records_a_move_by_hand_before_its_gate(world):
    from closedloop.core import training_pipeline as tp

    settings = world
    client, model = client_for(settings), settings.model_name
    champion = alias_version(client, model, CHAMPION)
    other = "1" if champion != "1" else "2"
    client.set_registered_model_alias(model, CHAMPION, other)
    before = len(_ledger(settings))
    out = tp.run_in_process(settings, datetime(2026, 1, 1, tzinfo=UTC),
                            datetime(2026, 1, 18, tzinfo=UTC), "aliases/3", reason="test",
                            dag_id=TRAINING, **QUICK)  # fmt: skip
    new = _ledger(settings)[before:]
    assert (new[0].action, new[0].version, new[0].from_version) == (OUT_OF_BAND, other, champion)
    assert (new[1].action, new[1].version, new[1].from_version) == ("promote", out["version"],
                                                                    other)  # fmt: skip
    assert new[1].run_id == "aliases/3" and new[1].actor == f"dag:{TRAINING}"


def test_a_rollback_names_who_asked(world, monkeypatch):
    from closedloop.cli import main

    settings = world
    monkeypatch.setenv("CLOSEDLOOP_HOME", str(settings.home))
    client, model = client_for(settings), settings.model_name
    promoted = _ledger(settings)[-1]  # the last run's promotion (the test before)
    assert promoted.action == "promote"
    result = CliRunner().invoke(main, ["rollback", "--by", "alice", "--reason", "test"])
    assert result.exit_code == 0, result.output
    last = _ledger(settings)[-1]
    assert (last.action, last.actor, last.reason) == ("rollback", "user:alice", "test")
    assert (last.version, last.from_version) == (promoted.from_version, promoted.version)
    assert alias_version(client, model, CHAMPION) == promoted.from_version
    assert alias_watch.check_aliases(settings).recorded == []


def test_a_woken_follower_looks_at_once_and_wakes_the_other_workers(world, tmp_path):
    """What an MLflow webhook does in ``serve --webhook-url --workers 2``: the worker that
    receives it wakes its follower, and the shared file wakes the other worker's; both
    swap at once, though their polls are ten minutes away."""
    import time

    from closedloop.serving.follower import ModelFollower

    settings = world
    client, model = client_for(settings), settings.model_name
    wake_file = str(tmp_path / "registry-moved")
    workers = [ModelFollower(settings, poll_seconds=600, wake_file=wake_file) for _ in range(2)]
    for follower in workers:
        follower.load_initial()
        follower.start()
    try:
        champion = alias_version(client, model, CHAMPION)
        other = "1" if champion != "1" else "2"
        client.set_registered_model_alias(model, CHAMPION, other)
        time.sleep(1.0)  # no poll is due: nothing moves by itself
        assert {f.deployment.champion.version for f in workers} == {champion}
        workers[0].wake()  # the webhook reached the first worker
        deadline = time.monotonic() + 10
        while {f.deployment.champion.version for f in workers} != {other}:
            assert time.monotonic() < deadline, [f.deployment.versions() for f in workers]
            time.sleep(0.05)
    finally:
        for follower in workers:
            follower.stop()
