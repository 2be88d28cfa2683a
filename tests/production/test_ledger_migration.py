"""The promotion ledger of an earlier release, on PostgreSQL, gains the ``actor`` column
in place when processes open it at the same time (the scheduler, the workers and
``closedloop serve`` all do after an upgrade), and keeps its entries."""

from __future__ import annotations

import secrets
import threading

import pytest
import sqlalchemy as sa

from closedloop.core.ledger import LedgerEntry, PromotionLedger, now

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

#: the table as releases before the actor column created it
OLD_TABLE = """
CREATE TABLE closedloop_promotions (
    id SERIAL PRIMARY KEY, model VARCHAR(256) NOT NULL, alias VARCHAR(64) NOT NULL,
    version VARCHAR(32) NOT NULL, from_version VARCHAR(32), action VARCHAR(32) NOT NULL,
    reason TEXT NOT NULL, numbers TEXT NOT NULL, dag_id VARCHAR(250), run_id VARCHAR(250),
    at TIMESTAMPTZ NOT NULL,
    CONSTRAINT uq_promotion UNIQUE (model, alias, version, action, run_id))
"""


@pytest.fixture
def old_ledger(postgres_url):
    base = postgres_url.replace("postgresql://", "postgresql+psycopg://", 1).rstrip("/")
    name = f"cltest_{secrets.token_hex(4)}_ledger"
    admin = sa.create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    url = f"{base}/{name}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(OLD_TABLE))
        conn.execute(sa.text(
            "INSERT INTO closedloop_promotions (model, alias, version, action, reason, "
            "numbers, dag_id, run_id, at) VALUES ('m', 'champion', '1', 'promote', 'old', "
            "'{}', 'd', 'r1', now())"
        ))  # fmt: skip
    engine.dispose()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()


def test_processes_opening_an_old_ledger_at_once_add_the_column_once(old_ledger):
    errors: list[BaseException] = []

    def open_ledger() -> None:
        try:
            PromotionLedger(old_ledger).dispose()
        except BaseException as exc:  # collected: the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=open_ledger) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    ledger = PromotionLedger(old_ledger)
    try:
        entry = LedgerEntry("m", "champion", "2", "1", "promote", "new", {}, "d", "r2", now(),
                            "dag:d")  # fmt: skip
        assert ledger.append(entry)
        old, new = ledger.history("m")
        assert (old.reason, old.actor) == ("old", None)
        assert (new.reason, new.actor) == ("new", "dag:d")
    finally:
        ledger.dispose()
