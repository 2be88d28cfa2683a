"""The aggregation engine: the declared windowed aggregates per entity, point in time
and incremental.

A row stamped ``T`` (the end of an interval) uses only facts known before ``T``: events
with a timestamp in ``[T - w, T)`` for a window ``w``, labels that became known (never
before their event) in ``[T - w, T)``. Feast's point-in-time join then gives an event at
``t`` the newest row stamped at or before ``t``. :meth:`AggregationEngine.advance` moves
an :class:`~closedloop.core.aggregation_state.AggregationState` by one interval: it adds
the interval's buckets to the running window sums, subtracts those leaving a window, and
emits a row for every entity whose values changed; its cost follows the interval, not the
windows or the history. A rerun of an interval from its predecessor's state leaves what
one clean run leaves. Written on numpy: Feast 0.67's engines aggregate only the rows of
the range they materialize (no history before it, one tumbling window size) and know no
label that arrives after its event.

One module of this size: sums, extremes and distinct pairs share the bucket arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from closedloop.core.aggregation_state import (
    KEEP_SNAPSHOTS,
    KNOWN,
    MAX_CHUNKS,
    POSITIVE,
    VALUE_BITS,
    AggregationState,
    Distinct,
    EntityState,
    Part,
    Side,
    StateFormatError,
    Stats,
    numbered,
    runs,
    to_ns,
)
from closedloop.core.usecase import AGGREGATE_TS, EVENT_OPS, LABEL_OPS

__all__ = [
    "KEEP_SNAPSHOTS",
    "AggregationEngine",
    "AggregationState",
    "StateFormatError",
    "bucket_width",
]

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from closedloop.core.usecase import AggregateSpec, UseCase


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


# -- the engine ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """What one entity's aggregates need: statistics, windows (ns), distinct columns."""

    key: str
    aggregates: dict[str, AggregateSpec]
    additive: tuple[str, ...]  # event statistics that add up: n, c__col, s__col
    extremal: tuple[str, ...]  # mn__col, mx__col
    event_windows: tuple[int, ...]
    label_windows: tuple[int, ...]
    distinct: dict[str, tuple[tuple[int, ...], bool]]  # column -> (windows, "all" too)
    columns: tuple[str, ...]  # the event columns the statistics read

    @property
    def events(self) -> bool:
        return any(a.op in EVENT_OPS for a in self.aggregates.values())

    @property
    def labels(self) -> bool:
        return any(a.op in LABEL_OPS for a in self.aggregates.values())

    @property
    def summed(self) -> bool:
        """Whether any event aggregate but ``distinct_count`` is declared."""
        return any(a.op in EVENT_OPS and a.op != "distinct_count" for a in self.aggregates.values())


def _plan(key: str, aggregates: dict[str, AggregateSpec]) -> _Plan:
    additive, extremal = ["n"], []
    distinct: dict[str, tuple[set[int], bool]] = {}
    event_windows, label_windows = set(), set()
    for agg in aggregates.values():
        window = None if agg.window_length is None else to_ns(agg.window_length)
        if agg.op == "distinct_count":
            windows, every = distinct.get(agg.column, (set(), False))
            distinct[agg.column] = (windows | ({window} - {None}), every or window is None)
            continue
        if window is not None:
            (label_windows if agg.op in LABEL_OPS else event_windows).add(window)
        c = agg.column
        if c is None:
            continue
        additive.append(f"c__{c}")
        if agg.op in ("sum", "mean"):
            additive.append(f"s__{c}")
        elif agg.op in ("min", "max"):
            extremal.append(f"{'mn' if agg.op == 'min' else 'mx'}__{c}")
    return _Plan(
        key=key,
        aggregates=aggregates,
        additive=tuple(dict.fromkeys(additive)),
        extremal=tuple(dict.fromkeys(extremal)),
        event_windows=tuple(sorted(event_windows)),
        label_windows=tuple(sorted(label_windows)),
        distinct={c: (tuple(sorted(w)), every) for c, (w, every) in sorted(distinct.items())},
        columns=tuple(dict.fromkeys(s.split("__", 1)[1] for s in additive[1:])),
    )


class AggregationEngine:
    """Computes a use case's aggregate tables interval by interval (module docstring)."""

    def __init__(self, usecase: UseCase, entities: Iterable[str] | None = None) -> None:
        """``entities`` limits the engine to those entities' aggregates (one shard of a
        sharded state holds one entity's: :mod:`closedloop.core.engineer_spark`)."""
        self.usecase = usecase
        only = None if entities is None else set(entities)
        self.width = bucket_width(usecase)
        self.ts = usecase.batch.timestamp_column
        self.known_at = usecase.known_at_column
        self.plans = {
            entity: _plan(usecase.entities[entity].join_key, aggregates)
            for entity, aggregates in usecase.features.aggregations.items()
            if aggregates and (only is None or entity in only)
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
        end_ts = pd.Timestamp(end)
        span = (to_ns(pd.Timestamp(start)), to_ns(end_ts))
        timed = events[self.ts].notna().to_numpy()
        when = to_ns(events[self.ts])
        keyed = {}  # entity -> (its events, their numbers)
        for entity, plan in self.plans.items():
            st = state.entities.setdefault(entity, EntityState())
            keep = timed & events[plan.key].notna().to_numpy()
            keyed[entity] = (keep, st.encode(events[plan.key][keep]))
        matured = self._matured_labels(state, events, keyed, when, timed, span[1])
        out = {}
        for entity, plan in self.plans.items():
            st = state.entities[entity]
            keep, codes = keyed[entity]
            rows = _where(events, keep)
            out[entity] = self._advance_entity(
                st, plan, rows, codes, when[keep], matured, entity, span, end_ts
            )
        state.as_of = end
        return out

    # -- facts -------------------------------------------------------------------------
    def _matured_labels(
        self,
        state: AggregationState,
        events: pd.DataFrame,
        keyed: dict[str, tuple[np.ndarray, np.ndarray]],
        when: np.ndarray,
        timed: np.ndarray,
        end: int,
    ) -> pd.DataFrame:
        """Labels that became known before ``end``, with the number of their entity per
        entity (-1: none); the rest wait in ``state.chunks``."""
        if not any(plan.labels for plan in self.plans.values()):
            return pd.DataFrame()
        label = self.usecase.label
        # never before the event (a column may say earlier)
        known = to_ns(events[self.known_at])
        known = np.where(known >= when, known, when)
        fresh = {KNOWN: known, POSITIVE: _matches(events[label.column], label.positive)}
        for entity, plan in self.plans.items():
            if plan.labels:
                keep, codes = keyed[entity]
                fresh[entity] = np.full(len(events), -1, np.int64)
                fresh[entity][keep] = codes
        if not timed.all():
            fresh = {name: values[timed] for name, values in fresh.items()}
        if len(fresh[KNOWN]) > 1 and (np.diff(fresh[KNOWN]) < 0).any():
            order = np.argsort(fresh[KNOWN], kind="stable")
            fresh = {name: values[order] for name, values in fresh.items()}
        chunks = [*state.chunks, pd.DataFrame(fresh)] if len(fresh[KNOWN]) else state.chunks
        matured, waiting = [], []
        for chunk in chunks:
            cut = int(np.searchsorted(chunk[KNOWN].to_numpy(), end, side="left"))
            if cut:
                matured.append(chunk.iloc[:cut])
            if cut < len(chunk):
                waiting.append(chunk.iloc[cut:])
        if len(waiting) > MAX_CHUNKS:
            merged = pd.concat(waiting, ignore_index=True)
            waiting = [merged.sort_values(KNOWN, kind="stable", ignore_index=True)]
        state.chunks = waiting
        if not matured:
            return pd.DataFrame(fresh).iloc[:0]
        return pd.concat(matured, ignore_index=True) if len(matured) > 1 else matured[0]

    def _advance_entity(
        self,
        st: EntityState,
        plan: _Plan,
        rows: pd.DataFrame,
        codes: np.ndarray,
        when: np.ndarray,
        matured: pd.DataFrame,
        entity: str,
        span: tuple[int, int],
        end: pd.Timestamp,
    ) -> pd.DataFrame:
        """Advance one entity's state by its ``rows`` (numbered ``codes``, at ``when``)
        and the labels that ``matured``; its rows that changed."""
        changed: list[np.ndarray] = [codes] if plan.events else []
        label_codes = positive = known = None
        if plan.labels and len(matured):
            label_codes = matured[entity].to_numpy()
            mine = label_codes >= 0
            label_codes = label_codes[mine]
            positive = matured[POSITIVE].to_numpy(dtype=np.float64)[mine]
            known = matured[KNOWN].to_numpy()[mine]
            changed.append(label_codes)
        n = 0 if st.keys is None else len(st.keys)
        if plan.events:
            _prepare(st.events, plan.event_windows, plan.additive, plan.extremal, n)
            buckets = self._bucket(when)
            if plan.summed:
                values = {
                    column: rows[column].to_numpy(dtype=np.float64, na_value=np.nan)
                    for column in plan.columns
                }
                parts = _partials(codes, buckets, values, plan.additive, plan.extremal)
                changed += _advance_side(st.events, parts, plan.event_windows, span)
            for column, declared in plan.distinct.items():
                d = st.distinct.setdefault(column, Distinct())
                changed += _advance_distinct(d, rows[column], codes, buckets, declared, span, n)
        if plan.labels:
            _prepare(st.labels, plan.label_windows, ("ln", "lp"), (), n)
            parts = {}
            if label_codes is not None and positive is not None and known is not None:
                parts = _partials(
                    label_codes, self._bucket(known), {"": positive}, ("ln", "lp"), ()
                )
            changed += _advance_side(st.labels, parts, plan.label_windows, span)
        return self._rows(st, plan, _present(changed, n), span[1], end)

    def _bucket(self, ns: np.ndarray) -> np.ndarray:
        width = to_ns(self.width)
        return ns - ns % width

    # -- values ------------------------------------------------------------------------
    def _rows(
        self, st: EntityState, plan: _Plan, codes: np.ndarray, end: int, stamp: pd.Timestamp
    ) -> pd.DataFrame:
        keys = st.keys if st.keys is not None else pd.Index([])
        names = keys[codes]
        order = names.argsort(kind="stable")
        codes, names = codes[order], names[order]
        out: dict[str, Any] = {plan.key: names}
        for name, agg in plan.aggregates.items():
            value = pd.Series(self._value(st, agg, codes, end))
            fill = agg.fill_value
            if fill is not None:
                value = value.fillna(fill)
            out[name] = value.astype("int64" if agg.dtype == "int" else "float64").to_numpy()
        frame = pd.DataFrame(out)
        frame[AGGREGATE_TS] = stamp
        return frame

    def _value(
        self, st: EntityState, agg: AggregateSpec, codes: np.ndarray, end: int
    ) -> np.ndarray:
        window = None if agg.window_length is None else to_ns(agg.window_length)
        if agg.op == "distinct_count":
            d = st.distinct.get(agg.column)
            if d is None:
                return np.zeros(len(codes))
            return _sizes(d, window, len(st.keys) if st.keys is not None else 0)[codes]
        if agg.op in LABEL_OPS:
            sums = st.labels.totals if window is None else st.labels.windows[window]
            ln, lp = sums["ln"][codes], sums["lp"][codes]
            if agg.op == "label_count":
                return ln
            if agg.op == "positive_count":
                return lp
            if agg.prior is not None:
                return (lp + agg.prior.rate * agg.prior.weight) / (ln + agg.prior.weight)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(ln > 0, lp / ln, np.nan)
        c = agg.column
        if agg.op in ("min", "max"):
            stat = f"{'mn' if agg.op == 'min' else 'mx'}__{c}"
            if window is None:
                return st.events.totals[stat][codes]
            return _extreme(st.events, stat, codes, end - window)
        sums = st.events.totals if window is None else st.events.windows[window]
        if agg.op == "count":
            return sums["n" if c is None else f"c__{c}"][codes]
        counted = sums[f"c__{c}"][codes]
        if agg.op == "sum":  # exactly 0 once every value has left the window
            return np.where(counted > 0, sums[f"s__{c}"][codes], 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counted > 0, sums[f"s__{c}"][codes] / counted, np.nan)


# -- partial aggregates ------------------------------------------------------------------


def _reduce(stat: str) -> Callable[..., np.ndarray]:
    return (
        np.fmin.reduceat
        if stat.startswith("mn__")
        else (np.fmax.reduceat if stat.startswith("mx__") else np.add.reduceat)
    )


def _partials(
    codes: np.ndarray,
    buckets: np.ndarray,
    values: dict[str, np.ndarray],
    additive: Iterable[str],
    extremal: Iterable[str],
) -> dict[int, Part]:
    """Facts folded per bucket and code. ``n`` (or ``ln``) counts facts; ``c__col``
    counts a column's non-null values, ``s__col`` sums them, ``mn__``/``mx__`` bound
    them; ``lp`` sums ``values[""]`` (the positives)."""
    if not len(codes):
        return {}
    # one bucket is the common case (a day's facts in a daily bucket): one sort key.
    # Stable, so a code's values are summed in the events' order whatever other codes
    # there are: a shard of the entities sums them bit for bit as the whole does.
    one = bool((buckets == buckets[0]).all())
    order = np.argsort(codes, kind="stable") if one else np.lexsort((codes, buckets))
    c, b = codes[order], buckets[order]
    starts = np.flatnonzero(np.r_[True, (c[1:] != c[:-1]) | (b[1:] != b[:-1])])
    stats: Stats = {}
    for stat in [*additive, *extremal]:
        if stat in ("n", "ln"):
            stats[stat] = np.diff(np.r_[starts, len(c)]).astype(np.float64)
            continue
        column = "" if stat == "lp" else stat.split("__", 1)[1]
        x = values[column][order]
        present = ~np.isnan(x)
        if stat.startswith("c__"):
            stats[stat] = np.add.reduceat(present.astype(np.float64), starts)
        elif stat.startswith("s__") or stat == "lp":
            stats[stat] = np.add.reduceat(np.where(present, x, 0.0), starts)
        else:
            stats[stat] = _reduce(stat)(x, starts)
    firsts, groups = c[starts], b[starts]
    return {
        int(groups[lo]): Part(firsts[lo:hi], {s: v[lo:hi] for s, v in stats.items()})
        for lo, hi in runs(groups)
    }


def _merge(old: Part | None, new: Part) -> Part:
    """Two parts of one bucket as one (a late fact reaching a bucket already kept)."""
    if old is None:
        return new
    codes = np.concatenate([old.codes, new.codes])
    order = np.argsort(codes, kind="stable")
    codes = codes[order]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    return Part(
        codes[starts],
        {
            s: _reduce(s)(np.concatenate([old.stats[s], new.stats[s]])[order], starts)
            for s in new.stats
        },
    )


def _grow(values: np.ndarray | None, n: int, fill: float) -> np.ndarray:
    if values is None:
        return np.full(n, fill)
    if len(values) >= n:
        return values
    return np.concatenate([values, np.full(n - len(values), fill)])


def _prepare(
    side: Side, windows: tuple[int, ...], additive: Iterable[str], extremal: Iterable[str], n: int
) -> None:
    """Every array of ``side`` with a place for each of the ``n`` keys."""
    additive = tuple(additive)
    for window in windows:
        sums = side.windows.setdefault(window, {})
        for stat in additive:
            sums[stat] = _grow(sums.get(stat), n, 0.0)
    for stat in additive:
        side.totals[stat] = _grow(side.totals.get(stat), n, 0.0)
    for stat in extremal:
        side.totals[stat] = _grow(side.totals.get(stat), n, np.nan)


def _advance_side(
    side: Side, parts: dict[int, Part], windows: tuple[int, ...], span: tuple[int, int]
) -> list[np.ndarray]:
    """Move the window sums from ``start`` to ``end``: subtract the kept buckets that
    leave a window, add the new parts inside it; fold the parts into the totals and
    the kept buckets. Returns the codes of the buckets that left a window.

    A bucket ``b`` is inside window ``w`` at ``T`` when ``T - w <= b``: at ``start`` the
    sums hold the kept buckets with ``b >= start - w``."""
    start, end = span
    left = []
    for window, sums in side.windows.items():
        for bucket, part in side.buckets.items():
            if start - window <= bucket < end - window:
                for stat, total in sums.items():
                    total[part.codes] -= part.stats[stat]
                left.append(part.codes)
        for bucket, part in parts.items():
            if bucket >= end - window:
                for stat, total in sums.items():
                    total[part.codes] += part.stats[stat]
    for part in parts.values():
        for stat, total in side.totals.items():
            if stat.startswith("mn__"):
                total[part.codes] = np.fmin(total[part.codes], part.stats[stat])
            elif stat.startswith("mx__"):
                total[part.codes] = np.fmax(total[part.codes], part.stats[stat])
            else:
                total[part.codes] += part.stats[stat]
    if windows:
        for bucket, part in parts.items():
            side.buckets[bucket] = _merge(side.buckets.get(bucket), part)
        keep_from = end - max(windows)
        for bucket in [b for b in side.buckets if b < keep_from]:
            del side.buckets[bucket]
    return left


def _extreme(side: Side, stat: str, codes: np.ndarray, since: int) -> np.ndarray:
    """``min``/``max`` over the kept buckets from ``since`` for ``codes`` (not
    subtractable, so read from the window's buckets)."""
    out = np.full(len(codes), np.nan)
    reduce = np.fmin if stat.startswith("mn__") else np.fmax
    for bucket, part in side.buckets.items():
        if bucket < since or not len(part.codes):
            continue
        at = np.minimum(np.searchsorted(part.codes, codes), len(part.codes) - 1)
        hit = part.codes[at] == codes
        out[hit] = reduce(out[hit], part.stats[stat][at[hit]])
    return out


# -- distinct values ---------------------------------------------------------------------


def _advance_distinct(
    d: Distinct,
    column: pd.Series,
    codes: np.ndarray,
    buckets: np.ndarray,
    declared: tuple[tuple[int, ...], bool],
    span: tuple[int, int],
    n: int,
) -> list[np.ndarray]:
    """The pairs of ``column``'s values with their entities, counted into each
    ``declared`` window (how many of its buckets hold the pair) and, when ``all`` is
    declared too, the set over all time."""
    windows, every = declared
    start, end = span
    present = column.notna().to_numpy()
    values = column[present]
    d.values, number = numbered(d.values, values)
    if len(d.values) >= 1 << VALUE_BITS:
        raise ValueError(f"{column.name}: more than 2**{VALUE_BITS} distinct values")
    pairs = (codes[present] << VALUE_BITS) | number
    parts: dict[int, np.ndarray] = {}
    when = buckets[present]
    if len(pairs) and (when == when[0]).all():  # the common case: one bucket
        parts = {int(when[0]): np.unique(pairs)}
    elif len(pairs):
        order = np.lexsort((pairs, when))
        pairs, when = pairs[order], when[order]
        head = np.r_[True, (pairs[1:] != pairs[:-1]) | (when[1:] != when[:-1])]
        pairs, when = pairs[head], when[head]
        parts = {int(when[lo]): pairs[lo:hi] for lo, hi in runs(when)}

    for window in windows:
        d.windows.setdefault(window, (np.empty(0, np.int64), np.empty(0, np.int64)))
    left = []
    for window, (ids, counts) in d.windows.items():
        sizes = _sizes(d, window, n)
        leaving = [p.codes for b, p in d.buckets.items() if start - window <= b < end - window]
        if leaving:
            gone, times = np.unique(np.concatenate(leaving), return_counts=True)
            at = np.searchsorted(ids, gone)
            counts = counts.copy()
            counts[at] -= times
            np.subtract.at(sizes, ids[at[counts[at] == 0]] >> VALUE_BITS, 1)
            ids, counts = ids[counts > 0], counts[counts > 0]
            left.append(gone >> VALUE_BITS)
        arriving = [p for b, p in parts.items() if b >= end - window]
        if arriving:
            new, times = np.unique(np.concatenate(arriving), return_counts=True)
            ids, counts, added = _count_in(ids, counts, new, times)
            np.add.at(sizes, added >> VALUE_BITS, 1)
        d.windows[window] = (ids, counts)
    if every:
        sizes = _sizes(d, None, n)
        if len(pairs):
            fresh = np.unique(pairs)
            zeros = np.zeros(len(d.total), np.int64)
            d.total, _, added = _count_in(d.total, zeros, fresh, 0 * fresh)
            np.add.at(sizes, added >> VALUE_BITS, 1)
    if windows:
        for bucket, ids in parts.items():
            kept = d.buckets.get(bucket)
            d.buckets[bucket] = Part(ids if kept is None else np.union1d(kept.codes, ids), {})
        keep_from = end - max(windows)
        for bucket in [b for b in d.buckets if b < keep_from]:
            del d.buckets[bucket]
    return left


def _sizes(d: Distinct, window: int | None, n: int) -> np.ndarray:
    """The distinct values per entity number in ``window`` (None: all time), for ``n``."""
    sizes = d.sizes.get(window)
    if sizes is None:
        ids = d.total if window is None else d.windows[window][0]
        sizes = np.bincount(ids >> VALUE_BITS, minlength=n).astype(np.int64)
    d.sizes[window] = sizes = _grow(sizes, n, 0).astype(np.int64, copy=False)
    return sizes


def _count_in(
    ids: np.ndarray, counts: np.ndarray, new: np.ndarray, times: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted ``ids`` with ``counts``, plus the sorted unique ``new`` ``times`` each; and
    the ids that were not there before."""
    at = np.searchsorted(ids, new)
    found = at < len(ids)
    found[found] = ids[at[found]] == new[found]
    counts = counts.copy()
    counts[at[found]] += times[found]
    missing = ~found
    return (
        np.insert(ids, at[missing], new[missing]),
        np.insert(counts, at[missing], times[missing]),
        new[missing],
    )


def _where(frame: pd.DataFrame, keep: np.ndarray) -> pd.DataFrame:
    """The rows of ``frame`` to ``keep`` (the frame itself when that is all of them)."""
    return frame if keep.all() else frame[keep]


def _matches(column: pd.Series, value: Any) -> np.ndarray:
    """Where ``column`` reads as ``value`` (compared as text, as a batch's CSV reads it);
    decided once per distinct value, not per row."""
    codes, uniques = pd.factorize(column)
    hit = np.array([str(u) == str(value) for u in uniques] + [False], dtype=bool)
    return hit[codes]  # a null (code -1) takes the trailing False


def _present(arrays: list[np.ndarray], n: int) -> np.ndarray:
    """The codes (of ``n``) found in any of ``arrays``, sorted."""
    mask = np.zeros(n, dtype=bool)
    for codes in arrays:
        mask[codes] = True
    return np.flatnonzero(mask)
