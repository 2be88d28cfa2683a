"""The promotion ledger: an append-only history of every alias move.

MLflow keeps only where an alias points *now*; the ledger keeps how it got there — which
version moved from/to which alias, why, with the gate's numbers and the DAG run that did
it, and who moved it (``actor``: a DAG's service account, the person who approved, the
person who rolled back; unknown for a move made outside closedloop, recorded as
``out_of_band`` by :mod:`closedloop.core.alias_watch`). It lives in a SQL table (SQLite
in the embedded profile, PostgreSQL in production), so it survives restarts and is
shared by every process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

#: the action of a move closedloop did not make (an alias set by hand in MLflow's UI)
OUT_OF_BAND = "out_of_band"

_METADATA = sa.MetaData()
PROMOTIONS = sa.Table(
    "closedloop_promotions",
    _METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(256), nullable=False, index=True),
    sa.Column("alias", sa.String(64), nullable=False),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("from_version", sa.String(32), nullable=True),
    # promote | challenger | rollback | rejected | out_of_band
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("numbers", sa.Text, nullable=False),  # JSON: the gate's metrics
    sa.Column("dag_id", sa.String(250), nullable=True),
    sa.Column("run_id", sa.String(250), nullable=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("actor", sa.String(256), nullable=True),  # who or what moved it
    # One entry per (model, alias, version, action, run): a retried task appends nothing.
    sa.UniqueConstraint("model", "alias", "version", "action", "run_id", name="uq_promotion"),
)


@dataclass(frozen=True)
class LedgerEntry:
    model: str
    alias: str
    version: str
    from_version: str | None
    action: str
    reason: str
    numbers: dict[str, Any]
    dag_id: str | None
    run_id: str | None
    at: datetime
    #: who or what moved the alias: ``dag:<dag id>``, ``user:<name>``; None: unknown
    actor: str | None = None

    def line(self) -> str:
        to = f"v{self.version}" if self.version else "(none)"
        moved = f"v{self.from_version} -> {to}" if self.from_version else to
        where = f" [{self.dag_id} {self.run_id}]" if self.dag_id else ""
        unknown = " by unknown" if self.action == OUT_OF_BAND else ""
        by = f" by {self.actor}" if self.actor else unknown
        when = f"{self.at:%Y-%m-%d %H:%M:%S}"
        return f"{when} {self.action:<10} {self.alias:<10} {moved:<14} {self.reason}{where}{by}"


class PromotionLedger:
    """Append and read promotion entries in the database at ``url``."""

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            from pathlib import Path

            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self._engine = sa.create_engine(url, future=True)
        _METADATA.create_all(self._engine, checkfirst=True)
        _add_missing_columns(self._engine)

    def append(self, entry: LedgerEntry) -> bool:
        """Record ``entry``; returns False if the same move of the same run is recorded."""
        row = {
            "model": entry.model,
            "alias": entry.alias,
            "version": entry.version,
            "from_version": entry.from_version,
            "action": entry.action,
            "reason": entry.reason,
            "numbers": json.dumps(entry.numbers, sort_keys=True, default=str),
            "dag_id": entry.dag_id,
            "run_id": entry.run_id,
            "at": entry.at,
            "actor": entry.actor,
        }
        key = [PROMOTIONS.c[k] == row[k] for k in ("model", "alias", "version", "action")]
        key.append(
            PROMOTIONS.c.run_id.is_(None)
            if entry.run_id is None
            else PROMOTIONS.c.run_id == entry.run_id
        )
        try:
            with self._engine.begin() as conn:
                if entry.run_id is not None and conn.scalar(
                    sa.select(sa.func.count()).select_from(PROMOTIONS).where(*key)
                ):
                    return False
                conn.execute(PROMOTIONS.insert().values(**row))
        except sa.exc.IntegrityError:  # another process recorded the same entry meanwhile
            return False
        return True

    def history(self, model: str) -> list[LedgerEntry]:
        """Every entry of ``model``, oldest first."""
        query = sa.select(PROMOTIONS).where(PROMOTIONS.c.model == model).order_by(PROMOTIONS.c.id)
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            LedgerEntry(
                model=r["model"],
                alias=r["alias"],
                version=r["version"],
                from_version=r["from_version"],
                action=r["action"],
                reason=r["reason"],
                numbers=json.loads(r["numbers"]),
                dag_id=r["dag_id"],
                run_id=r["run_id"],
                at=r["at"] if r["at"].tzinfo else r["at"].replace(tzinfo=UTC),
                actor=r["actor"],
            )
            for r in rows
        ]

    def dispose(self) -> None:
        self._engine.dispose()


def read_history(url: str, model: str) -> list[LedgerEntry]:
    """Every entry of ``model`` in the ledger at ``url``, oldest first (one connection,
    closed after)."""
    ledger = PromotionLedger(url)
    try:
        return ledger.history(model)
    finally:
        ledger.dispose()


def _add_missing_columns(engine: sa.Engine) -> None:
    """Columns added since a ledger table was created (``actor``), added to it: a ledger
    is kept, never recreated. Written here: the one table needs no migration tool."""
    have = {c["name"] for c in sa.inspect(engine).get_columns(PROMOTIONS.name)}
    for column in PROMOTIONS.columns:
        if column.name in have or not column.nullable:
            continue
        kind = column.type.compile(dialect=engine.dialect)
        add = f"ALTER TABLE {PROMOTIONS.name} ADD COLUMN {column.name} {kind}"
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(add))
        except sa.exc.DBAPIError:
            # another process starting at the same time may have added it first
            now_have = {c["name"] for c in sa.inspect(engine).get_columns(PROMOTIONS.name)}
            if column.name not in now_have:
                raise


def now() -> datetime:
    """Wall-clock time of a ledger entry (a record of when, not an input to any decision)."""
    return datetime.now(UTC)
