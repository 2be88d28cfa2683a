"""Alias moves made outside closedloop: found, recorded, alerted.

closedloop moves ``champion`` and ``challenger`` only through
:func:`closedloop.core.registry.apply_decision` and :func:`~closedloop.core.registry.rollback`,
and records every move in the promotion ledger. MLflow lets anyone with EDIT on the
registered model move an alias by hand (its UI, its client); MLflow does not say who.
:func:`expected_aliases` replays the ledger into the versions the aliases should point
at; :func:`check_aliases` compares them with the registry and records a difference as an
``out_of_band`` ledger entry (actor unknown), then alerts it (``out_of_band``). The
serving follower runs it on each poll that sees an alias move, the training gate before
it decides.

A move closedloop is making is not out of band: the version carries
:data:`~closedloop.core.tags.ALIAS_MOVE`, set just before the move, newer than the
ledger's last entry about the alias until that move's entry follows; a mark older than
:data:`IN_FLIGHT_SECONDS` is a move whose task died, and is reported like any other.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from closedloop.core import tags as tag
from closedloop.core.ledger import OUT_OF_BAND, LedgerEntry, PromotionLedger, now
from closedloop.core.registry import CHALLENGER, CHAMPION, alias_version, client_for

if TYPE_CHECKING:
    from collections.abc import Mapping

    from mlflow import MlflowClient

    from closedloop.core.settings import Settings

log = logging.getLogger(__name__)

#: the aliases whose moves the ledger records
WATCHED = (CHAMPION, CHALLENGER)
#: how long a move closedloop started may take to reach the ledger
IN_FLIGHT_SECONDS = 600


def expected_aliases(history: list[LedgerEntry]) -> dict[str, str | None]:
    """The version each watched alias points at, by the ledger's moves (oldest first)."""
    state: dict[str, str | None] = dict.fromkeys(WATCHED)
    for entry in history:
        if entry.action in ("promote", "rollback") and entry.alias == CHAMPION:
            state[CHAMPION] = entry.version
            if entry.action == "promote" and state[CHALLENGER] == entry.version:
                state[CHALLENGER] = None  # the gate drops the alias of a promoted challenger
        elif entry.action == "challenger":
            state[CHALLENGER] = entry.version
        elif entry.action == OUT_OF_BAND and entry.alias in state:
            state[entry.alias] = entry.version or None
    return state


@dataclass(frozen=True)
class AliasCheck:
    """What :func:`check_aliases` found: the entries it recorded (none when another
    process recorded the same move first) and the aliases closedloop is moving now."""

    recorded: list[LedgerEntry] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)


def check_aliases(
    settings: Settings,
    *,
    observed: Mapping[str, str | None] | None = None,
    client: MlflowClient | None = None,
) -> AliasCheck:
    """Record and alert each watched alias whose registry version is not the ledger's.

    ``observed`` (alias -> version, None: no such alias) is what the caller just read
    from the registry; without it the watched aliases are read here."""
    client = client or client_for(settings)
    model = settings.model_name
    if observed is None:
        observed = {alias: alias_version(client, model, alias) for alias in WATCHED}
    ledger = PromotionLedger(settings.closedloop_db)
    recorded, in_flight = [], []
    try:
        history = ledger.history(model)
        want = expected_aliases(history)
        for alias, have in observed.items():
            if alias not in want or have == want[alias]:
                continue
            last = max((e.at for e in history if e.alias == alias), default=None)
            if have is not None and _in_flight(client, model, have, alias, last):
                in_flight.append(alias)
                continue
            was, to = want[alias], have
            entry = LedgerEntry(
                model,
                alias,
                to or "",
                was,
                OUT_OF_BAND,
                f"{alias} points at {_v(to)} in the registry, the ledger's last move put it at "
                f"{_v(was)}: moved outside closedloop",
                {},
                None,
                # one entry per move, whichever process sees it first: the ledger's length
                # then names the state the move was made from
                f"out-of-band after entry {len(history)}",
                now(),
                None,
            )
            if ledger.append(entry):
                log.warning("%s", entry.reason)
                recorded.append(entry)
    finally:
        ledger.dispose()
    if recorded:
        from closedloop.core.alert_delivery import deliver
        from closedloop.core.alerts import out_of_band

        for entry in recorded:
            deliver(out_of_band(settings, entry), settings)
    return AliasCheck(recorded, in_flight)


def _in_flight(
    client: MlflowClient, model: str, version: str, alias: str, last: datetime | None
) -> bool:
    """Whether closedloop marked ``version`` as being moved to ``alias`` after the
    ledger's last entry about that alias, and lately."""
    mark = client.get_model_version(model, version).tags.get(tag.ALIAS_MOVE)
    if not mark:
        return False
    moving = json.loads(mark)
    if moving.get("alias") != alias:
        return False
    started = datetime.fromisoformat(moving["at"])
    if last is not None and started <= last:  # that move is in the ledger already
        return False
    return now() - started < timedelta(seconds=IN_FLIGHT_SECONDS)


def _v(version: str | None) -> str:
    return f"v{version}" if version else "no version"
