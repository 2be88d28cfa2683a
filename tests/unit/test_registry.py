"""Alias moves on a real MLflow registry (SQLite) and the promotion ledger."""

from __future__ import annotations

import pytest

from closedloop.core.gate import GatePolicy, decide
from closedloop.core.ledger import LedgerEntry, PromotionLedger, now
from closedloop.core.registry import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    RollbackError,
    alias_version,
    apply_decision,
    client_for,
    register_version,
    rollback,
)
from closedloop.core.settings import load_settings

MODEL = "m"
POLICY = GatePolicy(floors={"roc_auc": 0.6})


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    settings = load_settings(home=tmp_path_factory.mktemp("registry"))
    client = client_for(settings)
    ledger = PromotionLedger(settings.closedloop_db)
    versions = [
        register_version(
            client, MODEL, f"file:///nowhere/{i}", run_id=None, dag_run_key=f"run{i}", tags={}
        )
        for i in range(1, 5)
    ]
    return client, ledger, versions


def _aliases(client):
    return {a: alias_version(client, MODEL, a) for a in (CHAMPION, CHALLENGER, PREVIOUS)}


def test_registration_is_idempotent_per_dag_run(registry):
    client, _, versions = registry
    assert versions == ["1", "2", "3", "4"]
    again = register_version(
        client, MODEL, "file:///nowhere/1", run_id=None, dag_run_key="run1", tags={}
    )
    assert again == "1"


def test_only_blessed_versions_become_champion_and_rollback_walks_back(registry):
    client, ledger, _ = registry
    first = decide({"roc_auc": 0.7}, None, POLICY)
    assert apply_decision(client, ledger, MODEL, "1", first, dag_id="d", run_id="r1") == "promoted"
    better = decide({"roc_auc": 0.8}, {"roc_auc": 0.7}, POLICY, "1")
    apply_decision(client, ledger, MODEL, "2", better, dag_id="d", run_id="r2")
    worse = decide({"roc_auc": 0.75}, {"roc_auc": 0.8}, POLICY, "2")
    assert (
        apply_decision(client, ledger, MODEL, "3", worse, dag_id="d", run_id="r3") == "challenger"
    )
    # A retried gate task changes nothing and records nothing twice.
    apply_decision(client, ledger, MODEL, "3", worse, dag_id="d", run_id="r3")
    assert _aliases(client) == {CHAMPION: "2", CHALLENGER: "3", PREVIOUS: "1"}
    assert [(e.action, e.version) for e in ledger.history(MODEL)] == [
        ("promote", "1"),
        ("promote", "2"),
        ("challenger", "3"),
    ]
    assert client.get_model_version(MODEL, "3").tags["closedloop.blessed"] == "false"

    assert rollback(client, ledger, MODEL, "test") == ("2", "1")
    assert _aliases(client)[CHAMPION] == "1"
    assert _aliases(client)[PREVIOUS] is None
    with pytest.raises(RollbackError, match="replaced no earlier version"):
        rollback(client, ledger, MODEL, "again")


def test_rollback_without_a_champion_is_a_clear_error(tmp_path):
    settings = load_settings(home=tmp_path)
    with pytest.raises(RollbackError, match="no champion"):
        rollback(client_for(settings), PromotionLedger(settings.closedloop_db), "nothing")


def test_ledger_survives_a_new_connection(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    entry = LedgerEntry(
        "m", CHAMPION, "1", None, "promote", "why", {"roc_auc": 0.8}, "d", "r", now()
    )
    assert PromotionLedger(url).append(entry) is True
    assert PromotionLedger(url).append(entry) is False  # the same move of the same run
    [read] = PromotionLedger(url).history("m")
    assert (read.version, read.reason, read.numbers) == ("1", "why", {"roc_auc": 0.8})


def test_a_gate_killed_between_the_alias_move_and_the_ledger_records_the_move_on_retry(
    tmp_path,
):
    """kill -9 after ``champion`` moved but before the ledger append: the retry must
    record what the first attempt did (v1 -> v2), or rollback has nothing to go back to."""
    settings = load_settings(home=tmp_path)
    client = client_for(settings)
    ledger = PromotionLedger(settings.closedloop_db)
    for i in (1, 2):
        register_version(
            client, MODEL, f"file:///nowhere/{i}", run_id=None, dag_run_key=f"run{i}", tags={}
        )
    first = decide({"roc_auc": 0.7}, None, POLICY)
    apply_decision(client, ledger, MODEL, "1", first, dag_id="d", run_id="r1")
    better = decide({"roc_auc": 0.8}, {"roc_auc": 0.7}, POLICY, "1")

    class Killed(BaseException):
        pass

    class KilledBeforeAppend:
        def append(self, entry):
            raise Killed

    with pytest.raises(Killed):
        apply_decision(client, KilledBeforeAppend(), MODEL, "2", better, dag_id="d", run_id="r2")
    assert _aliases(client) == {CHAMPION: "2", CHALLENGER: None, PREVIOUS: "1"}

    apply_decision(client, ledger, MODEL, "2", better, dag_id="d", run_id="r2")  # the retry
    promotions = [(e.version, e.from_version) for e in ledger.history(MODEL)]
    assert promotions == [("1", None), ("2", "1")]
    assert rollback(client, ledger, MODEL, "test") == ("2", "1")


def test_a_ledger_made_before_actors_were_recorded_gains_the_column_and_keeps_its_rows(
    tmp_path,
):
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # the table as it was created before the actor column
        conn.execute(sa.text(
            "CREATE TABLE closedloop_promotions (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "model VARCHAR(256) NOT NULL, alias VARCHAR(64) NOT NULL, version VARCHAR(32) "
            "NOT NULL, from_version VARCHAR(32), action VARCHAR(32) NOT NULL, reason TEXT "
            "NOT NULL, numbers TEXT NOT NULL, dag_id VARCHAR(250), run_id VARCHAR(250), "
            "at DATETIME NOT NULL, CONSTRAINT uq_promotion UNIQUE (model, alias, version, "
            "action, run_id))"
        ))  # fmt: skip
        conn.execute(sa.text(
            "INSERT INTO closedloop_promotions (model, alias, version, action, reason, "
            "numbers, dag_id, run_id, at) VALUES ('m', 'champion', '1', 'promote', 'old', "
            "'{}', 'd', 'r1', '2026-01-01 00:00:00')"
        ))  # fmt: skip
    engine.dispose()
    ledger = PromotionLedger(url)
    entry = LedgerEntry("m", CHAMPION, "2", "1", "promote", "new", {}, "d", "r2", now(), "dag:d")
    assert ledger.append(entry)
    old, new = ledger.history("m")
    assert (old.reason, old.actor) == ("old", None) and (new.reason, new.actor) == ("new", "dag:d")
    assert "by dag:d" in new.line() and " by " not in old.line()
    PromotionLedger(url).dispose()  # a second open finds nothing to add


def test_the_ledger_replays_into_the_versions_the_aliases_should_point_at():
    from closedloop.core.alias_watch import expected_aliases
    from closedloop.core.ledger import OUT_OF_BAND
    from closedloop.core.registry import CHALLENGER

    def entry(alias, version, action, was=None):
        return LedgerEntry("m", alias, version, was, action, "", {}, None, None, now())

    history = [
        entry(CHAMPION, "1", "promote"),
        entry(CHALLENGER, "2", "challenger"),
        entry(CHAMPION, "3", "rejected", "1"),  # a person said no: nothing moved
        entry(CHAMPION, "2", "promote", "1"),  # the challenger promoted: no challenger
    ]
    assert expected_aliases(history) == {CHAMPION: "2", CHALLENGER: None}
    history.append(entry(CHALLENGER, "1", OUT_OF_BAND))
    history.append(entry(CHAMPION, "1", "rollback", "2"))  # a rollback leaves the challenger
    assert expected_aliases(history) == {CHAMPION: "1", CHALLENGER: "1"}
    history.append(entry(CHALLENGER, "4", OUT_OF_BAND, "1"))
    assert expected_aliases(history) == {CHAMPION: "1", CHALLENGER: "4"}
    history.append(entry(CHALLENGER, "", OUT_OF_BAND, "4"))  # removed by hand
    assert expected_aliases(history) == {CHAMPION: "1", CHALLENGER: None}
