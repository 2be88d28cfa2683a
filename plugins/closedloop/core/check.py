"""``closedloop check``: what a declaration generates, and a dry run of its feature step.

The dry run reads a sample file of the user's data, splits it into the declared
intervals and runs the feature pipeline's own functions on them in memory: the
validation suite, the cleaning casts, the derived features and the aggregation engine.
Nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from pathlib import Path

    from closedloop.core.settings import Settings
    from closedloop.core.usecase import UseCase


def describe(usecase: UseCase, settings: Settings) -> list[str]:
    """What closedloop generates from the declaration, as lines of text."""
    from closedloop.core.feast_objects import aggregate_ttl, feature_kind

    schedule = usecase.schedule
    lines = [f"use case {usecase.name}: {usecase.description}".rstrip(": ")]
    lines.append(
        f"DAGs ({usecase.batch.cadence}, from {schedule.start} {schedule.timezone}; "
        f"training also on {schedule.training_cron or 'new features only'}):"
    )
    lines += [f"  {dag_id}" for dag_id in usecase.dag_ids.values()]
    lines.append(
        f"Assets: closedloop://{usecase.name}/features, closedloop://{usecase.name}/predictions"
    )
    lines.append(f"landing: {settings.landing_dir}/<YYYY-MM-DD>.{usecase.batch.format}")
    lines.append(f"offline tables: {', '.join(usecase.offline_tables)}")
    lines.append(f"Feast project {usecase.name}:")
    entities = ", ".join(f"{n} ({e.join_key})" for n, e in usecase.entities.items())
    lines.append(
        f"  entities: event ({usecase.batch.id_column}){', ' if entities else ''}{entities}"
    )
    own = [f for f in usecase.event_features if f not in usecase.entity_keys]
    lines.append(f"  view event_features: {_typed(usecase, own, feature_kind)}")
    for entity, table in usecase.aggregate_tables.items():
        aggs = usecase.features.aggregations[entity]
        lines.append(f"  view {table} (ttl {aggregate_ttl(usecase, entity)}):")
        for name, agg in aggs.items():
            of = f"({agg.column})" if agg.column else ""
            default = usecase.defaults.get(name)
            lines.append(
                f"    {name}: {agg.op}{of} over {agg.window}"
                + (f", default {default}" if default is not None else "")
            )
    lines.append(
        f"  feature service {usecase.feature_service}: {len(usecase.model_features)} features"
    )
    keys = [k for k in usecase.event_features if k in usecase.entity_keys]
    if keys:
        lines.append(f"  (and the entity keys used as features: {', '.join(keys)})")
    lines.append(
        f"model {usecase.model_name}: label {usecase.label.column} = {usecase.label.positive}, "
        f"known at {usecase.label.known_at}; segments {usecase.segments.columns or 'none'} "
        f"(at least {usecase.segments.min_rows} rows)"
    )
    lines.append(f"serving answers under {usecase.response_id!r}")
    return lines


def gx_checks(usecase: UseCase) -> list[str]:
    """The batch suite's checks, one line each (the suite the feature DAG runs)."""
    from datetime import UTC, datetime, timedelta

    from closedloop.core.suites import build_suite

    start = datetime.combine(usecase.schedule.start, datetime.min.time(), UTC)
    suite = build_suite(usecase, start, start + timedelta(days=1), f"{usecase.name}_batch")
    lines = []
    for expectation in suite.expectations:
        column = getattr(expectation, "column", None)
        kind = expectation.meta["closedloop"]["check"]
        lines.append(f"  {kind:<12} {column or '(table)'}")
    return lines


@dataclass
class DryRun:
    """What the feature step made of a sample, interval by interval."""

    intervals: int = 0
    rows: int = 0
    failed: dict[str, list[str]] = field(default_factory=dict)  # interval -> failed checks
    tables: dict[str, int] = field(default_factory=dict)  # offline table -> rows
    preview: dict[str, pd.DataFrame] = field(default_factory=dict)  # table -> last rows

    @property
    def ok(self) -> bool:
        return not self.failed and self.intervals > 0


def dry_run(usecase: UseCase, sample: Path, *, validate_days: int = 7) -> DryRun:
    """Run the feature step on the sample's intervals in memory (see the module); the
    first ``validate_days`` intervals also go through the validation suite."""
    from datetime import UTC, datetime

    from closedloop.core.aggregates import AggregationEngine, AggregationState
    from closedloop.core.batches import read_batch
    from closedloop.core.derive import event_table
    from closedloop.core.transform import clean_batch
    from closedloop.core.validation import validate_batch

    frame = read_batch(sample, usecase)
    ts = usecase.batch.timestamp_column
    missing = sorted(set(usecase.columns) - set(frame.columns))
    if missing:
        raise ValueError(f"{sample} lacks the declared columns {missing}")
    frame = frame[frame[ts].notna()]
    step = usecase.interval
    first = frame[ts].min().floor(pd.Timedelta(step))
    last = frame[ts].max()
    engine, state = AggregationEngine(usecase), AggregationState()
    out = DryRun()
    start = datetime.fromisoformat(first.isoformat()).astimezone(UTC)
    while pd.Timestamp(start) <= last:
        end = start + step
        day = frame[(frame[ts] >= start) & (frame[ts] < end)]
        key = start.isoformat()
        if out.intervals < validate_days and not day.empty:
            result = validate_batch(day, usecase, interval_start=start, interval_end=end)
            if not result.success:
                out.failed[key] = [f.description for f in result.failed]
        events = event_table(clean_batch(day, usecase), usecase)
        tables = {usecase.event_table: events}
        for entity, rows in engine.advance(state, events, start, end).items():
            tables[usecase.aggregate_tables[entity]] = rows
        for name, table in tables.items():
            out.tables[name] = out.tables.get(name, 0) + len(table)
            if len(table):
                out.preview[name] = table.tail(3)
        out.intervals += 1
        out.rows += len(day)
        start = end
    return out


def _typed(usecase: UseCase, names: list[str], kind: Any) -> str:
    return ", ".join(f"{n} ({kind(usecase, n)})" for n in names) or "none"
