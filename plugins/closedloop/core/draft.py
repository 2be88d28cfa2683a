"""``closedloop init``: a draft declaration from a sample of a user's own data.

The draft infers what a sample can tell — each column's type, range, category set and
whether it is ever missing; the id, the event timestamp, the entities — and says in a
comment wherever it guessed. What a sample cannot tell is left to the user: which column
is the label and when its value becomes known. With those two added, the draft is a
valid declaration (``closedloop check``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from pathlib import Path

#: rows read from the sample file
SAMPLE_ROWS = 100_000
#: a text column with at most this many distinct values is a category
MAX_CATEGORIES = 60
_ID_NAME = re.compile(r"(^id$|_id$|^id_|uuid|key$)")
_TIME_NAME = re.compile(r"(_ts$|^ts$|time|date|_at$|timestamp)")
_LABEL_NAME = re.compile(r"(label|target|outcome|^y$|^is_|churn|fraud|fault|fail|default|delay)")


@dataclass
class ColumnGuess:
    name: str
    type: str
    required: bool
    unique: bool = False
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    distinct: int = 0
    note: str = ""


@dataclass
class Draft:
    name: str
    source: str
    rows: int
    columns: dict[str, ColumnGuess]
    id_column: str | None
    timestamp_column: str | None
    entities: dict[str, str]  # entity name -> join key
    label_guess: str | None
    start: str | None
    #: the guessed label's positive rate in the sample (the aggregates' prior)
    label_rate: float | None = None


def read_sample(path: Path, rows: int = SAMPLE_ROWS) -> pd.DataFrame:
    """The first ``rows`` rows of a CSV or Parquet file."""
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).iter_batches(batch_size=rows).__next__().to_pandas()
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path, nrows=rows, low_memory=False)
    raise ValueError(f"{path}: a sample must be a .csv or .parquet file")


def infer(name: str, sample: pd.DataFrame, source: str, label: str | None = None) -> Draft:
    """Everything the draft says about ``sample``; ``label`` names the label column
    (otherwise a 0/1 column is guessed, and left out of the features)."""
    if sample.empty:
        raise ValueError(f"{source}: the sample has no rows")
    columns = {str(c): _guess_column(str(c), sample[c]) for c in sample.columns}
    if label is not None and label not in columns:
        raise ValueError(f"--label {label!r} is not a column of {source}: {sorted(columns)}")
    times = [c for c in columns.values() if c.type == "timestamp"]
    timestamp = _pick(times, _TIME_NAME, key=lambda c: c.distinct)
    ids = [c for c in columns.values() if c.unique and c.type in ("string", "int")]
    id_column = _pick(ids, _ID_NAME, key=lambda c: -len(c.name))
    binary = [c for c in columns.values() if c.type == "int" and c.min == 0 and c.max == 1]
    guessed = _pick(binary, _LABEL_NAME, key=lambda c: 0)
    label_guess = label or (guessed.name if guessed else None)
    entities = {}
    for column in columns.values():
        repeated = 1 < column.distinct <= 0.5 * len(sample)
        if column.name in (id_column, label_guess) or not repeated:
            continue
        if column.type == "string" or (column.type == "category" and _ID_NAME.search(column.name)):
            entities[_entity_name(column.name)] = column.name
    start = None
    if timestamp is not None:
        first = pd.to_datetime(sample[timestamp.name], utc=True, format="ISO8601").min()
        start = first.tz_convert(UTC).date().isoformat()
    return Draft(
        name=name,
        source=source,
        rows=len(sample),
        columns=columns,
        id_column=id_column.name if id_column else None,
        timestamp_column=timestamp.name if timestamp else None,
        entities=entities,
        label_guess=label_guess,
        start=start,
        label_rate=float(sample[label_guess].mean()) if label_guess else None,
    )


def _pick(candidates: list[ColumnGuess], pattern: re.Pattern, key) -> ColumnGuess | None:
    """The candidate whose name matches ``pattern`` (else any), the largest ``key``."""
    if not candidates:
        return None
    named = [c for c in candidates if pattern.search(c.name.lower())]
    return max(named or candidates, key=key)


def _entity_name(column: str) -> str:
    name = re.sub(r"(_id|_key|_code)$", "", column.lower())
    name = re.sub(r"[^a-z0-9_]+", "_", name).strip("_") or "entity"
    return name if name != "event" and name[0].isalpha() else f"e_{name}"


def _guess_column(name: str, values: pd.Series) -> ColumnGuess:
    present = values.dropna()
    required = len(present) == len(values)
    unique = present.is_unique and len(present) == len(values)
    distinct = int(present.nunique())
    if pd.api.types.is_bool_dtype(values):
        values = values.astype("Int64")
        present = values.dropna()
    if pd.api.types.is_integer_dtype(values) or _whole(present):
        low, high = _widened(float(present.min()), float(present.max()))
        return ColumnGuess(
            name, "int", required, unique, math.floor(low), math.ceil(high), distinct=distinct
        )
    if pd.api.types.is_float_dtype(values):
        return ColumnGuess(
            name,
            "float",
            required,
            unique,
            *(
                _round(v, how)
                for v, how in zip(
                    _widened(float(present.min()), float(present.max())),
                    (math.floor, math.ceil),
                    strict=True,
                )
            ),
            distinct=distinct,
        )
    if pd.api.types.is_datetime64_any_dtype(values) or _timestamps(present):
        times = pd.to_datetime(present, utc=True, format="ISO8601")
        midnight = bool((times == times.dt.normalize()).all())
        kind = "date" if midnight else "timestamp"
        return ColumnGuess(name, kind, required, unique, distinct=distinct)
    text = present.astype(str)
    if distinct <= MAX_CATEGORIES and distinct < 0.5 * max(len(text), 1):
        return ColumnGuess(
            name,
            "category",
            required,
            unique,
            categories=sorted(text.unique().tolist()),
            distinct=distinct,
            note=f"{distinct} values seen",
        )
    return ColumnGuess(name, "string", required, unique, distinct=distinct)


def _widened(low: float, high: float) -> tuple[float, float]:
    """Bounds with half the seen span added on each side (a sample never holds the
    extremes); a column never seen negative stays at or above zero. 0/1 stays 0/1."""
    if (low, high) == (0.0, 1.0):
        return low, high
    room = 0.5 * (high - low)
    return (max(low - room, 0.0) if low >= 0 else low - room), high + room


def _whole(values: pd.Series) -> bool:
    if not pd.api.types.is_float_dtype(values) or values.empty:
        return False
    return bool((values == values.round()).all()) and values.abs().max() < 2**53


def _timestamps(values: pd.Series) -> bool:
    if values.empty or not pd.api.types.is_object_dtype(values):
        return False
    head = values.astype(str).head(200)
    if not head.str.match(r"^\d{4}-\d{2}-\d{2}").all():
        return False
    try:
        pd.to_datetime(head, utc=True, format="ISO8601")
    except (ValueError, TypeError):
        return False
    return True


def _round(value: float, how) -> float:
    """A bound with some room: two significant decimals, outward."""
    if value == 0 or not math.isfinite(value):
        return float(value)
    scale = 10 ** (2 - math.floor(math.log10(abs(value))))
    return how(value * scale) / scale


# -- writing ---------------------------------------------------------------------------
def render(draft: Draft) -> str:
    """The draft as commented YAML."""
    columns = draft.columns
    lines = [
        f"# Draft of {draft.name!r} by `closedloop init` from {draft.rows} rows of",
        f"# {draft.source}. GUESS marks what was inferred: check it (docs/usecases.md).",
        f"name: {draft.name}",
        "description: TODO say what is predicted for whom",
        "",
        "batch:  # one file per day: <landing>/<name>/<YYYY-MM-DD>." + _format(draft.source),
        f"  format: {_format(draft.source)}",
        "  cadence: daily",
        f"  id_column: {draft.id_column or 'TODO'}  # GUESS: unique in the sample",
        f"  timestamp_column: {draft.timestamp_column or 'TODO'}  # GUESS: when it happened",
        "",
    ]
    if draft.entities:
        lines.append("# GUESS: text columns whose values repeat; aggregates are kept per entity")
        lines.append("entities:")
        lines += [f"  {e}: {{join_key: {k}}}" for e, k in draft.entities.items()]
    else:
        lines.append("entities: {}  # none guessed: columns events share, e.g. a user or a device")
    label = draft.label_guess
    lines += [
        "",
        "# TODO the label: the 0/1 column predicted"
        + (f" (GUESS: {label})" if label else "")
        + " and when its value becomes",
        "# known: a timestamp/date column, a delay like 2h or 7d, or at_once. Uncomment:",
        f"# label: {{column: {label or 'TODO'}, positive: 1, known_at: TODO}}",
        "",
        "columns:",
    ]
    for column in columns.values():
        lines.append(f"  {column.name}: {_column_yaml(column)}")
    keys = set(draft.entities.values())
    skip = {draft.id_column, draft.timestamp_column, label, *keys}
    passthrough = [
        c.name
        for c in columns.values()
        if c.name not in skip and c.type in ("int", "float", "category")
    ]
    lines += ["", "features:", "  version: 1"]
    lines.append(f"  passthrough: [{', '.join(passthrough)}]")
    lines.append("  derived: {}")
    prior = round(draft.label_rate, 4) if draft.label_rate is not None else 0.5
    if draft.entities:
        lines.append("  # GUESS: how busy each entity was, and its rate of positive labels")
        lines.append("  aggregations:")
        for entity in draft.entities:
            lines += [
                f"    {entity}:",
                f"      {entity}_events_7d: {{op: count, window: 7d}}",
                f"      {entity}_label_rate_30d:",
                f"        {{op: label_rate, window: 30d, prior: {{rate: {prior}, weight: 10}}}}",
            ]
    categories = [
        c.name for c in columns.values() if c.type == "category" and c.name in passthrough
    ]
    lines += [
        "",
        "segments:",
        f"  columns: [{', '.join(categories[:2])}]  # GUESS: metrics per value of these",
        "  min_rows: 100",
        "",
        "model:",
        f"  name: {draft.name}",
        "  training_window_days: 60",
        "",
        "schedule:",
        f"  start: {draft.start or 'TODO'}  # GUESS: the sample's first day",
        "  timezone: UTC",
        "",
    ]
    return "\n".join(lines)


def _format(source: str) -> str:
    return "parquet" if source.lower().endswith((".parquet", ".pq")) else "csv"


def _column_yaml(column: ColumnGuess) -> str:
    parts = [f"type: {column.type}"]
    if not column.required:
        parts.append("required: false")
    if column.unique:
        parts.append("unique: true")
    if column.min is not None:
        parts += [f"min: {_number(column.min)}", f"max: {_number(column.max)}"]
    if column.categories:
        parts.append("categories: [" + ", ".join(_quote(v) for v in column.categories) + "]")
    return "{" + ", ".join(parts) + "}"


def _number(value: float | None) -> str:
    return str(int(value)) if value is not None and float(value).is_integer() else str(value)


def _quote(value: str) -> str:
    import json

    plain = re.fullmatch(r"[A-Za-z][A-Za-z0-9 _./-]*", value) and value.lower() not in (
        "yes", "no", "true", "false", "on", "off", "null",
    )  # fmt: skip
    return value if plain else json.dumps(value)
