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
