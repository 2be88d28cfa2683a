"""What :mod:`closedloop.core.explain` reads from files: the prediction's record in the
log, the offline rows its features came from, and its outcome.

Which features were defaults: the log holds the values after the defaults were filled
in (batch and online fill them alike, after the point-in-time join or the online
lookup). So the entity's aggregate rows stamped at or before the prediction (within
the view's TTL for a batch record, as the batch join applies it; the online store keeps
its last row) are compared with the logged values, newest first: the first row that
gives them is the one the prediction read, and a feature it lacks was defaulted; when
no row gives them and they equal the declared defaults, the entity had no history.
A row is stamped at the end of the interval whose features run wrote it, in the
partition of that interval: that names the run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow.parquet as pq

from closedloop.core import links, offline
from closedloop.core.usecase import AGGREGATE_TS

if TYPE_CHECKING:
    from pathlib import Path

    from closedloop.core.settings import Settings

#: (DAG id, data interval start) -> the run id Airflow has for it, or None
RunFinder = Callable[[str, datetime], "str | None"]


@dataclass(frozen=True)
class FeatureWrite:
    """The offline row a prediction's features came from and the run that wrote it."""

    table: str
    key: str  # the join key
    value: Any
    stamped_at: str | None  # the row's timestamp (None: no row gave the logged values)
    interval: str | None  # the partition (the data interval's key)
    dag_id: str
    run_id: str | None
    #: True: Airflow named the run; False: the id the schedule gives the interval
    resolved: bool = False
    url: str | None = None
    defaulted: dict[str, bool | None] = field(default_factory=dict)
    note: str = ""


def find_prediction(log_dir: Path, prediction_id: str) -> dict[str, Any] | None:
    """The log record of ``prediction_id`` (newest partitions first), or None."""
    sources = ("batch", "online") if "|batch|" in prediction_id else ("online", "batch")
    for source in sources:
        base = log_dir / f"source={source}"
        if not base.is_dir():
            continue
        for day in sorted((p for p in base.iterdir() if p.is_dir()), reverse=True):
            for path in sorted(day.glob("*.parquet"), reverse=True):
                found = pq.read_table(path, filters=[("prediction_id", "==", prediction_id)])
                if found.num_rows:
                    return found.slice(0, 1).to_pylist()[0]
    return None


def utc(value: Any) -> datetime:
    """A logged or stored time as an aware UTC datetime (naive: UTC)."""
    moment = pd.Timestamp(value)
    moment = moment.tz_localize(UTC) if moment.tzinfo is None else moment.tz_convert(UTC)
    return moment.to_pydatetime()


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _equal(a: Any, b: Any) -> bool:
    if _missing(a) or _missing(b):
        return _missing(a) and _missing(b)
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-12)
    except (TypeError, ValueError):
        return a == b


def _run(
    settings: Settings, key: str, find_run: RunFinder | None
) -> tuple[str, str | None, bool, str | None]:
    """(DAG id, run id, resolved, URL) of the features run of the interval ``key``."""
    usecase = settings.usecase
    dag_id = usecase.dag_ids["features"]
    start = usecase.key_start(key)
    run_id = find_run(dag_id, start) if find_run is not None else None
    resolved = run_id is not None
    if run_id is None:  # what Airflow's timetable names a scheduled run: its run_after
        run_id = f"scheduled__{usecase.next_start(start).astimezone(UTC).isoformat()}"
    return dag_id, run_id, resolved, links.airflow_dag_run(settings, dag_id, run_id)


def aggregate_writes(
    settings: Settings, record: dict[str, Any], at: datetime, find_run: RunFinder | None
) -> list[FeatureWrite]:
    """Per entity whose aggregates the model read: the row they came from (see the module)."""
    from closedloop.core.feast_objects import aggregate_ttl

    usecase = settings.usecase
    out = []
    for entity, aggregates in usecase.features.aggregations.items():
        names = [n for n in aggregates if n in record]
        if not names:
            continue
        table = usecase.aggregate_tables[entity]
        join_key = usecase.entities[entity].join_key
        value = record.get(join_key)
        ttl = aggregate_ttl(usecase, entity) if record["source"] == "batch" else None
        found, newest = _matching_row(settings, table, join_key, names, record, at, ttl)
        if found is None:
            out.append(_no_row(settings, table, join_key, value, names, record, newest))
            continue
        key, stamped, filled = found
        dag_id, run_id, resolved, url = _run(settings, key, find_run)
        write = FeatureWrite(table, join_key, value, stamped.isoformat(), key, dag_id, run_id)
        out.append(replace(write, resolved=resolved, url=url, defaulted=filled))
    return out


def _matching_row(
    settings: Settings,
    table: str,
    join_key: str,
    names: list[str],
    record: dict[str, Any],
    at: datetime,
    ttl: Any,
) -> tuple[tuple[str, datetime, dict[str, bool | None]] | None, datetime | None]:
    """((partition, stamp, defaulted per feature) of the newest row of the entity stamped
    by ``at`` (within ``ttl``) that gives the logged values, or None; the newest stamp)."""
    usecase = settings.usecase
    defaults = usecase.defaults
    table_dir = settings.offline_table_dir(table)
    last = usecase.interval_key(at)
    newest = None
    for key in reversed([k for k in offline.partition_keys(table_dir) if k <= last]):
        if ttl is not None and usecase.next_start(usecase.key_start(key)) < at - ttl:
            break
        rows = pq.read_table(
            offline.partition_path(table_dir, key),
            columns=[join_key, AGGREGATE_TS, *names],
            filters=[(join_key, "==", record.get(join_key))],
        ).to_pylist()
        for row in sorted(rows, key=lambda r: utc(r[AGGREGATE_TS]), reverse=True):
            stamped = utc(row[AGGREGATE_TS])
            if stamped > at or (ttl is not None and stamped < at - ttl):
                continue
            newest = newest or stamped
            filled = {n: _missing(row[n]) and n in defaults for n in names}
            given = {n: defaults[n] if filled[n] else row[n] for n in names}
            if all(_equal(record[n], given[n]) for n in names):
                return (key, stamped, dict(filled)), newest
    return None, newest


def _no_row(
    settings: Settings,
    table: str,
    join_key: str,
    value: Any,
    names: list[str],
    record: dict[str, Any],
    newest: datetime | None,
) -> FeatureWrite:
    defaults = settings.usecase.defaults
    dag_id = settings.usecase.dag_ids["features"]
    if all(n in defaults and _equal(record[n], defaults[n]) for n in names):
        note = (
            f"no {table} row for {join_key}={value!r} stamped by the prediction's time"
            + (" gives the logged values" if newest else "")
            + ": the entity had no history, the declared defaults were used"
        )
        return FeatureWrite(table, join_key, value, None, None, dag_id, None,
                            defaulted=dict.fromkeys(names, True), note=note)  # fmt: skip
    note = (
        f"no {table} row for {join_key}={value!r} gives the logged values (the offline "
        "store was rewritten since, or the online store had not been materialized)"
    )
    return FeatureWrite(table, join_key, value, None, None, dag_id, None,
                        defaulted=dict.fromkeys(names), note=note)  # fmt: skip


def _event_row(
    settings: Settings, event_id: Any, at: datetime, columns: list[str]
) -> tuple[str, dict[str, Any]] | None:
    """The event table's row of ``event_id`` and its partition: the partition of the
    prediction's time first, then earlier ones, then later ones."""
    usecase = settings.usecase
    table_dir = settings.offline_table_dir(usecase.event_table)
    keys = offline.partition_keys(table_dir)
    near = usecase.interval_key(at)
    ordered = [k for k in reversed(keys) if k <= near] + [k for k in keys if k > near]
    id_column = usecase.batch.id_column
    for key in ordered:
        found = pq.read_table(
            offline.partition_path(table_dir, key),
            columns=list(dict.fromkeys([id_column, *columns])),
            filters=[(id_column, "==", event_id)],
        )
        if found.num_rows:
            return key, found.slice(0, 1).to_pylist()[0]
    return None


def event_write(
    settings: Settings, record: dict[str, Any], at: datetime, find_run: RunFinder | None
) -> FeatureWrite:
    """Where a batch record's own event features came from: the event table's partition
    of its interval, written by that interval's features run."""
    usecase = settings.usecase
    id_column = usecase.batch.id_column
    found = _event_row(settings, record[id_column], at, [])
    if found is None:
        return FeatureWrite(usecase.event_table, id_column, record[id_column], None, None,
                            usecase.dag_ids["features"], None,
                            note="the event is no longer in the offline store")  # fmt: skip
    dag_id, run_id, resolved, url = _run(settings, found[0], find_run)
    return FeatureWrite(usecase.event_table, id_column, record[id_column], at.isoformat(),
                        found[0], dag_id, run_id, resolved, url)  # fmt: skip


def ground_truth(settings: Settings, record: dict[str, Any], as_of: datetime) -> dict[str, Any]:
    """The event's label once known by ``as_of`` (as monitoring joins outcomes: the event
    table's label, known from its known-at time on)."""
    usecase = settings.usecase
    label, known_at = usecase.label.column, usecase.known_at_column
    at = utc(record["predicted_at"])
    found = _event_row(settings, record[usecase.batch.id_column], at, [label, known_at])
    if found is None:
        return {"known": False, "label": None, "known_at": None,
                "note": "the event has not landed in the offline store yet"}  # fmt: skip
    row = found[1]
    when = None if _missing(row.get(known_at)) else utc(row[known_at])
    known = not _missing(row.get(label)) and when is not None and when < as_of
    return {
        "known": known,
        "label": int(row[label]) if known else None,
        "known_at": when.isoformat() if when else None,
        "note": "" if known else f"not known by {as_of.isoformat()}",
    }
