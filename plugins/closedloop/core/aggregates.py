"""The aggregation engine: the declared windowed aggregates per entity, point in time
and incremental.

Rule: a row stamped ``T`` (the end of an interval) uses only facts known before ``T``:

* an event counts once its timestamp is before ``T``; a window ``w`` holds the events of
  ``[T - w, T)``;
* a label counts once it is known (its known-at time, never before the event itself, is
  before ``T``); a window over labels holds the labels that became known in
  ``[T - w, T)``.

Feast's point-in-time join then gives an event at time ``t`` the newest row stamped at
or before ``t``, so no feature carries information from after the event.

Incremental: :class:`AggregationState` holds, per entity, partial aggregates in time
buckets (an hour or a day) for as long as the longest finite window needs them, the
running totals of ``all`` windows, and the events whose label is not known yet. A run
adds its interval's facts, emits a row for every entity whose value changed (new
events, newly known labels, or a bucket leaving a window) and drops expired buckets, so
its cost depends on the interval and the windows, not on how long the use case has run.
The state is saved per interval: a rerun of an interval starts from the state its
predecessor saved and leaves exactly what one clean run leaves.

Written on pandas groupby rather than Feast's ``BatchFeatureView`` aggregations: Feast
0.67 computes those from the whole source on every materialization (no carried state)
and has no notion of a label known later than its event.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from closedloop.core.usecase import AGGREGATE_TS, EVENT_OPS, LABEL_OPS, parse_duration

if TYPE_CHECKING:
    from pathlib import Path

    from closedloop.core.usecase import AggregateSpec, UseCase

_BUCKET = "__bucket"
_KNOWN = "__known"
_POSITIVE = "__positive"
#: state snapshots kept per use case (older ones are removed): a rerun of one of the
#: latest intervals needs its predecessor's; an older one rebuilds from the event table
KEEP_SNAPSHOTS = 7


def bucket_width(usecase: UseCase) -> timedelta:
    """An hour when a window or the cadence is counted in hours, else a day; finer when
    the schedule's time zone puts interval ends off whole UTC days or hours.

    Buckets are floored in UTC, so every interval end ``T`` and window start ``T - w``
    must fall on a bucket boundary: Berlin's midnights (23:00 or 22:00 UTC) need hourly
    buckets, Kolkata's (18:30 UTC) half-hourly ones.
    """
    hours = usecase.batch.cadence == "hourly" or any(
        (a.window_length or timedelta(days=1)) % timedelta(days=1)
        for a in usecase.aggregate_features.values()
    )
    minutes = 60 if hours else 24 * 60
    for offset in _utc_offsets(usecase.schedule.timezone, usecase.schedule.start):
        minutes = math.gcd(minutes, int(offset / timedelta(minutes=1)))
    return timedelta(minutes=minutes)


@lru_cache
def _utc_offsets(timezone: str, start: date) -> frozenset[timedelta]:
    """The zone's UTC offsets over a year from ``start`` (both sides of daylight saving)."""
    zone, noon = ZoneInfo(timezone), datetime(start.year, start.month, start.day, 12, tzinfo=UTC)
    return frozenset(
        (noon + timedelta(days=d)).astimezone(zone).utcoffset() or timedelta(0) for d in range(366)
    )


@dataclass
class EntityState:
    """One entity's partial aggregates (see the module docstring)."""

    buckets: pd.DataFrame | None = None  # key, bucket, n, s__c, c__c, mn__c, mx__c
    totals: pd.DataFrame | None = None  # the same per key (window "all"), indexed by key
    label_buckets: pd.DataFrame | None = None  # key, bucket, ln, lp
    label_totals: pd.DataFrame | None = None  # key -> ln, lp
    distinct_buckets: dict[str, pd.DataFrame] = field(default_factory=dict)  # key, bucket, v
    distinct_totals: dict[str, pd.DataFrame] = field(default_factory=dict)  # key, v


@dataclass
class AggregationState:
    """Everything the next interval needs; ``as_of`` is the end of the last interval."""

    as_of: datetime | None = None
    entities: dict[str, EntityState] = field(default_factory=dict)
    pending: pd.DataFrame | None = None  # events whose label is not known at as_of

    # -- persistence -----------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Write the state to ``folder`` (replaced whole, through a temporary folder)."""
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        frames = {"pending": self.pending}
        for name, entity in self.entities.items():
            frames[f"{name}.buckets"] = entity.buckets
            frames[f"{name}.totals"] = _reset(entity.totals)
            frames[f"{name}.label_buckets"] = entity.label_buckets
            frames[f"{name}.label_totals"] = _reset(entity.label_totals)
            for column, frame in entity.distinct_buckets.items():
                frames[f"{name}.distinct_buckets.{column}"] = frame
            for column, frame in entity.distinct_totals.items():
                frames[f"{name}.distinct_totals.{column}"] = frame
        written = []
        for name, frame in frames.items():
            if frame is not None:
                frame.to_parquet(tmp / f"{name}.parquet", index=False)
                written.append(name)
        meta = {"as_of": self.as_of.isoformat() if self.as_of else None, "frames": written}
        (tmp / "state.json").write_text(json.dumps(meta, sort_keys=True))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)

    @classmethod
    def load(cls, folder: Path) -> AggregationState:
        meta = json.loads((folder / "state.json").read_text())
        state = cls(as_of=datetime.fromisoformat(meta["as_of"]) if meta["as_of"] else None)
        for name in meta["frames"]:
            frame = pd.read_parquet(folder / f"{name}.parquet")
            if name == "pending":
                state.pending = frame
                continue
            entity_name, kind, *column = name.split(".", 2)
            entity = state.entities.setdefault(entity_name, EntityState())
            if kind in ("totals", "label_totals"):
                setattr(entity, kind, frame.set_index(frame.columns[0]))
            elif column:
                getattr(entity, kind)[column[0]] = frame
            else:
                setattr(entity, kind, frame)
        return state


def _reset(frame: pd.DataFrame | None) -> pd.DataFrame | None:
    return None if frame is None else frame.reset_index()


class AggregationEngine:
    """Computes a use case's aggregate tables interval by interval (module docstring)."""

    def __init__(self, usecase: UseCase) -> None:
        self.usecase = usecase
        self.width = bucket_width(usecase)
        self.ts = usecase.batch.timestamp_column
        self.known_at = usecase.known_at_column
        self.by_entity = {
            entity: aggregates
            for entity, aggregates in usecase.features.aggregations.items()
            if aggregates
        }

    def advance(
        self, state: AggregationState, events: pd.DataFrame, start: datetime, end: datetime
    ) -> dict[str, pd.DataFrame]:
        """Add the events of ``[start, end)`` to ``state`` (in place) and return, per
        entity, the rows stamped ``end`` of every entity whose aggregates changed."""
        if state.as_of is not None and pd.Timestamp(state.as_of) != pd.Timestamp(start):
            raise ValueError(
                f"the aggregation state is as of {state.as_of}; it cannot advance from {start}"
            )
        start_ts, end_ts = pd.Timestamp(start), pd.Timestamp(end)
        matured = self._matured_labels(state, events, end_ts)
        out = {}
        for entity, aggregates in self.by_entity.items():
            key = self.usecase.entities[entity].join_key
            entity_state = state.entities.setdefault(entity, EntityState())
            out[entity] = self._advance_entity(
                entity_state, key, aggregates, events, matured, start_ts, end_ts
            )
        state.as_of = end
        return out

    # -- facts -------------------------------------------------------------------------
    def _matured_labels(
        self, state: AggregationState, events: pd.DataFrame, end: pd.Timestamp
    ) -> pd.DataFrame:
        """Labels that became known before ``end``; the rest wait in ``state.pending``."""
        if not any(a.op in LABEL_OPS for aggs in self.by_entity.values() for a in aggs.values()):
            return pd.DataFrame()
        label = self.usecase.label
        keys = sorted({self.usecase.entities[e].join_key for e in self.by_entity})
        fresh = pd.DataFrame(
            {
                # never before the event (a column may say earlier); `where` keeps the
                # zone, where np.maximum on zoned times takes an object-dtype detour
                _KNOWN: events[self.known_at].where(
                    events[self.known_at] >= events[self.ts], events[self.ts]
                ),
                _POSITIVE: (events[label.column].astype(str) == str(label.positive)),
                **{k: events[k] for k in keys},
            }
        )
        waiting = fresh if state.pending is None else pd.concat([state.pending, fresh])
        waiting = waiting.reset_index(drop=True)
        known = waiting[_KNOWN] < end
        state.pending = waiting[~known].reset_index(drop=True)
        return waiting[known]

    def _bucket(self, times: pd.Series) -> pd.Series:
        return times.dt.floor(self.width)

    def _advance_entity(
        self,
        st: EntityState,
        key: str,
        aggregates: dict[str, AggregateSpec],
        events: pd.DataFrame,
        matured: pd.DataFrame,
        start: pd.Timestamp,
        end: pd.Timestamp,
    ) -> pd.DataFrame:
        event_aggs = {n: a for n, a in aggregates.items() if a.op in EVENT_OPS}
        label_aggs = {n: a for n, a in aggregates.items() if a.op in LABEL_OPS}
        changed: list[pd.Index] = []

        if event_aggs:
            rows = events[events[key].notna()]
            partial = self._event_partials(rows, key, event_aggs)
            changed.append(pd.Index(partial[key].unique()))
            windows = _windows(event_aggs)
            if windows:
                changed += _expiring(st.buckets, key, windows, start, end)
                st.buckets = _append(st.buckets, partial, end - max(windows))
            if "all" in {a.window for a in event_aggs.values()}:
                st.totals = _add_totals(st.totals, partial.drop(columns=_BUCKET), key)
            for column in {a.column for a in event_aggs.values() if a.op == "distinct_count"}:
                self._advance_distinct(st, key, rows, column, event_aggs, start, end, changed)
        if label_aggs and not matured.empty:
            facts = matured[matured[key].notna()]
            partial = (
                facts.assign(**{_BUCKET: self._bucket(facts[_KNOWN]), "lp": facts[_POSITIVE]})
                .groupby([key, _BUCKET], sort=True)
                .agg(ln=(_POSITIVE, "size"), lp=("lp", "sum"))
                .reset_index()
            )
            changed.append(pd.Index(partial[key].unique()))
        elif label_aggs:
            partial = pd.DataFrame(columns=[key, _BUCKET, "ln", "lp"])
        if label_aggs:
            windows = _windows(label_aggs)
            if windows:
                changed += _expiring(st.label_buckets, key, windows, start, end)
                st.label_buckets = _append(st.label_buckets, partial, end - max(windows))
            if "all" in {a.window for a in label_aggs.values()}:
                st.label_totals = _add_totals(st.label_totals, partial.drop(columns=_BUCKET), key)

        keys = _union(changed)
        return self._rows(st, key, aggregates, keys, end)

    def _event_partials(
        self, rows: pd.DataFrame, key: str, aggregates: dict[str, AggregateSpec]
    ) -> pd.DataFrame:
        frame = rows.assign(**{_BUCKET: self._bucket(rows[self.ts])})
        spec: dict[str, tuple[str, str]] = {"n": (self.ts, "size")}
        for agg in aggregates.values():
            c = agg.column
            if c is None or agg.op == "distinct_count":
                continue
            spec[f"c__{c}"] = (c, "count")
            if agg.op in ("sum", "mean"):
                spec[f"s__{c}"] = (c, "sum")
            elif agg.op == "min":
                spec[f"mn__{c}"] = (c, "min")
            elif agg.op == "max":
                spec[f"mx__{c}"] = (c, "max")
        grouped = frame.groupby([key, _BUCKET], sort=True).agg(**spec).reset_index()
        for name in grouped.columns:
            if name.startswith(("s__", "mn__", "mx__")):
                grouped[name] = grouped[name].astype("float64")
        return grouped

    def _advance_distinct(
        self,
        st: EntityState,
        key: str,
        rows: pd.DataFrame,
        column: str,
        aggregates: dict[str, AggregateSpec],
        start: pd.Timestamp,
        end: pd.Timestamp,
        changed: list[pd.Index],
    ) -> None:
        seen = rows[rows[column].notna()]
        pairs = pd.DataFrame(
            {key: seen[key], _BUCKET: self._bucket(seen[self.ts]), "v": seen[column]}
        ).drop_duplicates()
        mine = {
            a.window for a in aggregates.values() if a.op == "distinct_count" and a.column == column
        }
        windows = sorted(parse_duration(w) for w in mine if w != "all")
        if windows:
            old = st.distinct_buckets.get(column)
            changed += _expiring(old, key, windows, start, end)
            st.distinct_buckets[column] = _append(old, pairs, end - max(windows))
        if "all" in mine:
            old = st.distinct_totals.get(column)
            new = pairs[[key, "v"]].drop_duplicates()
            merged = new if old is None else pd.concat([old, new]).drop_duplicates()
            st.distinct_totals[column] = merged.reset_index(drop=True)

    # -- values ------------------------------------------------------------------------
    def _rows(
        self,
        st: EntityState,
        key: str,
        aggregates: dict[str, AggregateSpec],
        keys: pd.Index,
        end: pd.Timestamp,
    ) -> pd.DataFrame:
        out = pd.DataFrame(index=keys.sort_values())
        out.index.name = key
        sums: dict[tuple[str, timedelta | None], pd.DataFrame | None] = {}  # one per window
        for name, agg in aggregates.items():
            out[name] = self._values(st, key, agg, out.index, end, sums)
            fill = agg.fill_value
            if fill is not None:
                out[name] = out[name].fillna(fill)
            out[name] = out[name].astype("int64" if agg.dtype == "int" else "float64")
        out[AGGREGATE_TS] = end
        return out.reset_index()

    def _values(
        self,
        st: EntityState,
        key: str,
        agg: AggregateSpec,
        keys: pd.Index,
        end: pd.Timestamp,
        sums: dict[tuple[str, timedelta | None], pd.DataFrame | None],
    ) -> pd.Series:
        window = agg.window_length

        def window_sums(kind: str, buckets: Any, totals: Any) -> pd.DataFrame | None:
            # the aggregates over one window share its sums (a pass over the buckets each)
            if (kind, window) not in sums:
                sums[(kind, window)] = _window_sums(buckets, totals, key, window, keys, end)
            return sums[(kind, window)]

        if agg.op == "distinct_count":
            if window is None:
                pairs = st.distinct_totals.get(agg.column)
            else:
                pairs = st.distinct_buckets.get(agg.column)
                pairs = None if pairs is None else pairs[pairs[_BUCKET] >= end - window]
            if pairs is None:
                return pd.Series(0, index=keys)
            pairs = pairs[pairs[key].isin(keys)]
            return pairs.groupby(key)["v"].nunique().reindex(keys)
        if agg.op in LABEL_OPS:
            source = window_sums("labels", st.label_buckets, st.label_totals)
            if source is None:
                return pd.Series(np.nan, index=keys)
            ln, lp = source["ln"].fillna(0), source["lp"].fillna(0)
            if agg.op == "label_count":
                return ln
            if agg.op == "positive_count":
                return lp
            if agg.prior is not None:
                return (lp + agg.prior.rate * agg.prior.weight) / (ln + agg.prior.weight)
            return (lp / ln).where(ln > 0)
        source = window_sums("events", st.buckets, st.totals)
        if source is None:
            return pd.Series(np.nan, index=keys)
        c = agg.column
        if agg.op == "count":
            return source["n" if c is None else f"c__{c}"].fillna(0)
        if agg.op == "sum":
            return source[f"s__{c}"].fillna(0)
        if agg.op == "mean":
            counted = source[f"c__{c}"].fillna(0)
            return (source[f"s__{c}"] / counted).where(counted > 0)
        return source[f"mn__{c}" if agg.op == "min" else f"mx__{c}"]


# -- frame helpers ---------------------------------------------------------------------
def _windows(aggregates: dict[str, AggregateSpec]) -> list[timedelta]:
    return sorted({a.window_length for a in aggregates.values() if a.window_length is not None})


def _expiring(
    buckets: pd.DataFrame | None,
    key: str,
    windows: list[timedelta],
    start: pd.Timestamp,
    end: pd.Timestamp,
) -> list[pd.Index]:
    """Keys with a bucket that was inside a window at ``start`` and is outside at ``end``."""
    if buckets is None or buckets.empty:
        return []
    leaving = np.zeros(len(buckets), dtype=bool)
    when = buckets[_BUCKET]
    for window in windows:
        leaving |= ((when >= start - window) & (when < end - window)).to_numpy()
    return [pd.Index(buckets.loc[leaving, key].unique())]


def _append(
    buckets: pd.DataFrame | None, partial: pd.DataFrame, keep_from: pd.Timestamp
) -> pd.DataFrame:
    """``buckets`` plus the interval's ``partial``, without buckets before ``keep_from``."""
    frames = [f for f in (buckets, partial) if f is not None and not f.empty]
    if not frames:
        return partial
    merged = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return merged[merged[_BUCKET] >= keep_from].reset_index(drop=True)


def _add_totals(totals: pd.DataFrame | None, partial: pd.DataFrame, key: str) -> pd.DataFrame:
    """Running totals per key (indexed by key) with the interval's partials added."""
    if partial.empty:
        return totals if totals is not None else partial.set_index(key)
    new = _combine(partial, key)
    if totals is None or totals.empty:
        return new
    old = totals.reindex(new.index)
    merged = pd.DataFrame(index=new.index)
    for column in new.columns:
        if column.startswith("mn__"):
            merged[column] = np.fmin(old[column], new[column])
        elif column.startswith("mx__"):
            merged[column] = np.fmax(old[column], new[column])
        else:
            merged[column] = old[column].fillna(0) + new[column]
    fresh = ~new.index.isin(totals.index)
    updated = totals.copy()
    updated.loc[new.index[~fresh], merged.columns] = merged[~fresh].to_numpy()
    if fresh.any():
        updated = pd.concat([updated, merged[fresh]])
    return updated


def _combine(partial: pd.DataFrame, key: str) -> pd.DataFrame:
    """Buckets of one key folded into one row (sums, mins, maxes)."""
    how = {
        c: "min" if c.startswith("mn__") else "max" if c.startswith("mx__") else "sum"
        for c in partial.columns
        if c != key
    }
    return partial.groupby(key, sort=True).agg(how)


def _window_sums(
    buckets: pd.DataFrame | None,
    totals: pd.DataFrame | None,
    key: str,
    window: timedelta | None,
    keys: pd.Index,
    end: pd.Timestamp,
) -> pd.DataFrame | None:
    if window is None:
        return None if totals is None else totals.reindex(keys)
    if buckets is None:
        return None
    inside = buckets[(buckets[_BUCKET] >= end - window) & buckets[key].isin(keys)]
    return _combine(inside.drop(columns=_BUCKET), key).reindex(keys)


def _union(indexes: list[pd.Index]) -> pd.Index:
    indexes = [i for i in indexes if len(i)]
    if not indexes:
        return pd.Index([])
    out = indexes[0]
    for other in indexes[1:]:
        out = out.union(other)
    return out.unique()
