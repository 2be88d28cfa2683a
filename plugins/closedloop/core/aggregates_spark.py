"""The declared aggregates on Spark: the rows :class:`~closedloop.core.aggregates.
AggregationEngine` emits over a run of consecutive intervals, computed from the events
themselves instead of carried in a state.

Written by hand: Feast 0.67's Spark engine aggregates only the rows of the range it
materializes, in tumbling windows of one size, over one timestamp: no history before the
range, no label that becomes known after its event.

The engine's rules, restated over facts: a fact lies in a time *bucket*
(:func:`~closedloop.core.aggregates.bucket_width`, floored in UTC); an event counts in a
row stamped ``T`` for window ``w`` when its bucket is in ``[T - w, T)``, a label when the
bucket of ``max(known_at, ts)`` is (``all``: every bucket before ``T``). An entity gets a
row at the end of an interval when, in that interval, it has an event (if it has an event
aggregate), a label becomes known (if it has a label aggregate), or a bucket of its facts
leaves one of the windows declared for them: events for the event windows but
``distinct_count``'s, present values of a column for that column's ``distinct_count``
windows, known labels for the label windows. Each aggregate's value follows
``AggregationEngine._value``: a ``sum`` over an empty window is 0, a ``mean``, ``min``,
``max`` or a rate without a prior over an empty window takes the declared fill value.

Every kind of fact becomes per-bucket partial rows of one table per entity, beside one
*probe* row per emitted (key, stamp); window functions ordered by time (range frames of
each window, or everything before) read the aggregates at the probes. No state, no
Python UDF, nothing collected but the result.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd

from closedloop.core.aggregates import bucket_width
from closedloop.core.aggregation_state import to_ns
from closedloop.core.usecase import AGGREGATE_TS, EVENT_OPS, LABEL_OPS

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from pyspark.sql import Column, DataFrame

    from closedloop.core.usecase import AggregateSpec, UseCase

_US = timedelta(microseconds=1)
# the columns of an entity's table of facts and probes
_KEY, _TIME, _PROBE = "__key", "__t", "__probe"


def needed_since(usecase: UseCase, start: datetime) -> datetime | None:
    """The earliest event time a run of intervals from ``start`` reads: ``start`` less
    the longest event window, or less the longest label window plus the label's delay
    if that reaches further; None (the whole event table) when a window is ``all`` or
    labels are known at a column (an old event's label may become known at any time)."""
    reach = timedelta(0)
    delay = usecase.label.delay
    for agg in usecase.aggregate_features.values():
        if agg.window_length is None:
            return None
        if agg.op in LABEL_OPS:
            if delay is None:
                return None
            reach = max(reach, agg.window_length + delay)
        else:
            reach = max(reach, agg.window_length)
    return start - reach


def aggregate(
    usecase: UseCase, events: DataFrame, intervals: Sequence[tuple[datetime, datetime]]
) -> dict[str, DataFrame]:
    """Per aggregated entity, the rows the engine emits over ``intervals`` (consecutive
    ``(start, end)`` pairs of the use case's schedule), stamped with their interval's end
    in UTC: the key, each aggregate (``bigint`` for counts, ``double`` else) and
    :data:`~closedloop.core.usecase.AGGREGATE_TS`, in no order (:func:`to_frames` sorts).

    ``events`` is the event table (the cleaned batches with their derived columns and
    the label-known-at column) over the intervals *and the history they read*: every
    event with a timestamp from ``intervals[0][0]`` less the longest event window, and
    every event whose label becomes known (``max(known_at, ts)``) from there less the
    longest label window; all events when a window is ``all``. :func:`needed_since`
    bounds the event times to read. More history changes nothing: what no row can use is
    filtered out here. An event lies in the interval of its timestamp, as in the batches
    the engine is handed one by one.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    bounds = _bounds(usecase, intervals)
    width = bucket_width(usecase) // _US
    spark = events.sparkSession
    # the stamp of each bucket of the run: where a fact's time maps to its interval
    slots = F.broadcast(
        spark.createDataFrame(
            [(b, end) for start, end in bounds for b in range(start, end, width)],
            "__slot long, __stamp long",
        )
    )
    ts, known_at = usecase.batch.timestamp_column, usecase.known_at_column
    t = F.unix_micros(F.col(ts).cast("timestamp"))
    facts = events.where(F.col(ts).isNotNull()).withColumn(_TIME, t)
    labels = any(a.op in LABEL_OPS for a in usecase.aggregate_features.values())
    if labels:  # never before the event; a missing known-at: at once
        known = F.greatest(F.unix_micros(F.col(known_at).cast("timestamp")), F.col(_TIME))
        facts = facts.withColumn("__known", known)
    facts = facts.where(_history(usecase, bounds))

    out = {}
    for entity, aggregates in usecase.features.aggregations.items():
        if not aggregates:
            continue
        key = usecase.entities[entity].join_key
        mine = facts.where(F.col(key).isNotNull()).withColumnRenamed(key, _KEY)
        table = _facts_and_probes(usecase, mine, aggregates, width, slots)
        by_time = Window.partitionBy(_KEY).orderBy(_TIME)
        values = [_value(agg, by_time).alias(name) for name, agg in aggregates.items()]
        rows = table.select(_KEY, _TIME, _PROBE, *values).where(F.col(_PROBE))
        out[entity] = rows.select(
            F.col(_KEY).alias(key),
            *aggregates,
            F.timestamp_micros(_TIME).alias(AGGREGATE_TS),
        )
    return out


def to_frames(usecase: UseCase, tables: dict[str, DataFrame]) -> dict[str, pd.DataFrame]:
    """The result of :func:`aggregate` collected as the engine's frames: the same
    columns and dtypes, stamps as ``datetime64[us, UTC]``, rows by stamp then key (the
    rows of one interval: ``frame[frame[AGGREGATE_TS] == end]``)."""
    from pyspark.sql import functions as F

    out = {}
    for entity, table in tables.items():
        aggregates = usecase.features.aggregations[entity]
        key = usecase.entities[entity].join_key
        frame = table.withColumn(AGGREGATE_TS, F.unix_micros(AGGREGATE_TS)).toPandas()
        for name, agg in aggregates.items():
            frame[name] = frame[name].astype("int64" if agg.dtype == "int" else "float64")
        stamps = pd.to_datetime(frame[AGGREGATE_TS].astype("int64"), unit="us", utc=True)
        frame[AGGREGATE_TS] = stamps.astype("datetime64[us, UTC]")
        out[entity] = frame.sort_values([AGGREGATE_TS, key], kind="stable", ignore_index=True)
    return out


# -- the facts ---------------------------------------------------------------------------


def _bounds(
    usecase: UseCase, intervals: Sequence[tuple[datetime, datetime]]
) -> list[tuple[int, int]]:
    """``intervals`` in microseconds since the epoch (UTC), checked consecutive and on
    bucket boundaries (where the schedule puts them)."""
    if not intervals:
        raise ValueError("no intervals to aggregate")
    width = bucket_width(usecase) // _US
    bounds = [
        (to_ns(pd.Timestamp(s)) // 1000, to_ns(pd.Timestamp(e)) // 1000) for s, e in intervals
    ]
    for (start, end), following, given in zip(bounds, [*bounds[1:], None], intervals, strict=True):
        if start % width or end % width or end <= start:
            raise ValueError(
                f"the interval {given[0]} - {given[1]} does not start and end on the use "
                f"case's {bucket_width(usecase)} buckets"
            )
        if following is not None and following[0] != end:
            raise ValueError(f"the intervals are not consecutive after {given[1]}")
    return bounds


def _history(usecase: UseCase, bounds: list[tuple[int, int]]) -> Column:
    """The events a row stamped in ``bounds`` can read: before the last end, and in
    reach of the first start by their time or by when their label became known."""
    from pyspark.sql import functions as F

    first, last = bounds[0][0], bounds[-1][1]
    windows: dict[bool, list[int | None]] = {}  # over labels? -> the declared windows
    for agg in usecase.aggregate_features.values():
        window = None if agg.window_length is None else agg.window_length // _US
        windows.setdefault(agg.op in LABEL_OPS, []).append(window)
    readable = F.lit(False)
    for labels, declared in windows.items():
        if None in declared:
            return F.col(_TIME) < F.lit(last)
        since = first - max(w for w in declared if w is not None)
        readable |= F.col("__known" if labels else _TIME) >= F.lit(since)
    return (F.col(_TIME) < F.lit(last)) & readable


def _numeric(events: DataFrame, column: str) -> Column:
    """A column's values as the engine reads them for its statistics: numbers as
    doubles, NaN as missing; other types as they are (only counted)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import BooleanType, DecimalType, FractionalType, IntegralType

    kind = events.schema[column].dataType
    value = F.col(column)
    if isinstance(kind, (IntegralType, FractionalType, DecimalType, BooleanType)):
        value = value.cast("double")
        value = F.when(~F.isnan(value), value)
    return value


def _positive(usecase: UseCase, events: DataFrame) -> Column:
    """1 where the label reads as the declared positive value, compared as text as the
    engine does (a missing label: 0)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import BooleanType

    column = usecase.label.column
    text = F.col(column).cast("string")
    if isinstance(events.schema[column].dataType, BooleanType):  # as Python spells them
        text = F.when(F.col(column), "True").when(~F.col(column), "False")
    return F.coalesce((text == F.lit(str(usecase.label.positive))).cast("long"), F.lit(0))


def _facts_and_probes(
    usecase: UseCase,
    facts: DataFrame,
    aggregates: dict[str, AggregateSpec],
    width: int,
    slots: DataFrame,
) -> DataFrame:
    """One entity's facts as partial rows per (key, bucket) -- events by their time
    (``n``, ``c__col``, ``s__col``, ``mn__col``, ``mx__col``), labels by when they became
    known (``ln``, ``lp``), the present values of a distinct column (``d__col``) -- and a
    probe row per (key, stamp) the engine emits a row for."""
    from pyspark.sql import functions as F

    def bucket(column: str) -> Column:
        return (F.col(column) - F.pmod(F.col(column), F.lit(width))).alias(_TIME)

    def windows(aggs: list[AggregateSpec]) -> list[int]:
        return sorted({a.window_length // _US for a in aggs if a.window_length is not None})

    parts, moments = [], []
    event_aggs = [a for a in aggregates.values() if a.op in EVENT_OPS]
    summed = [a for a in event_aggs if a.op != "distinct_count"]
    if event_aggs:
        stats = [F.count(F.lit(1)).alias("n")]
        for column in dict.fromkeys(a.column for a in summed if a.column is not None):
            value = _numeric(facts, column)
            stats.append(F.count(value).alias(f"c__{column}"))
            ops = {a.op for a in summed if a.column == column}
            if ops & {"sum", "mean"}:
                stats.append(F.sum(value).alias(f"s__{column}"))
            if "min" in ops:
                stats.append(F.min(value).alias(f"mn__{column}"))
            if "max" in ops:
                stats.append(F.max(value).alias(f"mx__{column}"))
        parts.append(facts.groupBy(_KEY, bucket(_TIME)).agg(*stats))
        moments.append(_moments(facts.select(_KEY, bucket(_TIME)), windows(summed)))
    for column in dict.fromkeys(a.column for a in event_aggs if a.op == "distinct_count"):
        distinct = [a for a in event_aggs if a.op == "distinct_count" and a.column == column]
        present = facts.where(_present(facts, column))
        values = present.select(_KEY, bucket(_TIME), F.col(column).alias(f"d__{column}"))
        parts.append(values.distinct())
        moments.append(_moments(present.select(_KEY, bucket(_TIME)), windows(distinct)))
    label_aggs = [a for a in aggregates.values() if a.op in LABEL_OPS]
    if label_aggs:
        positive = _positive(usecase, facts)
        parts.append(
            facts.groupBy(_KEY, bucket("__known")).agg(
                F.count(F.lit(1)).alias("ln"), F.sum(positive).alias("lp")
            )
        )
        moments.append(_moments(facts.select(_KEY, bucket("__known")), windows(label_aggs)))

    moment = moments[0]
    for more in moments[1:]:
        moment = moment.unionByName(more)
    table = (
        moment.join(slots, F.col("__moment") == F.col("__slot"))
        .select(_KEY, F.col("__stamp").alias(_TIME))
        .distinct()
        .withColumn(_PROBE, F.lit(True))
    )
    for part in parts:
        table = table.unionByName(part.withColumn(_PROBE, F.lit(False)), allowMissingColumns=True)
    return table


def _present(facts: DataFrame, column: str) -> Column:
    """Where a column holds a value (the engine counts no null and no NaN)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import FractionalType

    present = F.col(column).isNotNull()
    if isinstance(facts.schema[column].dataType, FractionalType):
        present &= ~F.isnan(F.col(column))
    return present


def _moments(parts: DataFrame, windows: list[int]) -> DataFrame:
    """(key, moment): the buckets that hold the facts, and those where they leave each
    window (the bucket plus the window); the interval holding a moment emits the key."""
    from pyspark.sql import functions as F

    shifted = [F.col(_TIME) + F.lit(w) for w in windows]
    return parts.select(_KEY, F.explode(F.array(F.col(_TIME), *shifted)).alias("__moment"))


# -- the values --------------------------------------------------------------------------


def _value(agg: AggregateSpec, by_time: Any) -> Column:
    """One aggregate at each row's time, over the facts of its window before it (the
    engine's ``_value``), with the declared fill value where it has none."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    window = None if agg.window_length is None else agg.window_length // _US
    frame = by_time.rangeBetween(Window.unboundedPreceding if window is None else -window, -1)

    def total(stat: str) -> Column:
        return F.coalesce(F.sum(stat).over(frame), F.lit(0))

    c = agg.column
    if agg.op == "distinct_count":
        value = F.size(F.collect_set(f"d__{c}").over(frame))
    elif agg.op in ("label_count", "positive_count"):
        value = total("ln" if agg.op == "label_count" else "lp")
    elif agg.op == "label_rate":
        ln, lp = total("ln").cast("double"), total("lp").cast("double")
        if agg.prior is not None:
            prior = agg.prior
            value = (lp + F.lit(prior.rate * prior.weight)) / (ln + F.lit(float(prior.weight)))
        else:
            value = F.when(ln > 0, lp / ln)
    elif agg.op == "count":
        value = total("n" if c is None else f"c__{c}")
    elif agg.op in ("min", "max"):
        stat = f"{'mn' if agg.op == 'min' else 'mx'}__{c}"
        value = (F.min if agg.op == "min" else F.max)(stat).over(frame)
    else:
        counted, summed = total(f"c__{c}"), F.sum(f"s__{c}").over(frame)
        if agg.op == "sum":  # exactly 0 once every value has left the window
            value = F.when(counted > 0, summed).otherwise(F.lit(0.0))
        else:
            value = F.when(counted > 0, summed / counted.cast("double"))
    if agg.dtype == "int":
        return value.cast("long")
    fill = agg.fill_value
    value = value.cast("double")
    return value if fill is None else F.coalesce(value, F.lit(float(fill)))
