"""The request and response schemas, derived from the use case.

An event in a request carries the use case's ``request_columns``: its id, the entity
keys and the declared columns its features are computed from, so it can be scored when
it happens. Each field is typed and bounded as the declaration says: a count out of
range or a category outside its set (unless the column accepts new categories) is
refused before anything is looked up. Unknown fields are refused too: a misspelt key
must not fall back to a default.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, create_model

if TYPE_CHECKING:
    import pandas as pd

    from closedloop.core.usecase import ColumnSpec, UseCase


def _annotation(spec: ColumnSpec) -> Any:
    if spec.type == "category":
        if spec.new_categories == "flag":  # a new one is news for the drift report
            return StrictStr
        return Literal[tuple(spec.categories or ())]
    if spec.type == "date":
        return date
    if spec.type == "timestamp":  # ISO 8601; without an offset it is UTC, as in batches
        return datetime
    if spec.type == "int":
        return StrictInt
    if spec.type == "float":
        return StrictFloat | StrictInt
    if spec.type == "string":
        return StrictStr
    raise ValueError(f"a {spec.type} column cannot be a request field")


def _field(spec: ColumnSpec) -> Any:
    bounds: dict[str, Any] = {}
    if spec.type in ("int", "float"):
        bounds = {"ge": spec.min, "le": spec.max}
    if spec.type == "string" or (spec.type == "category" and spec.new_categories == "flag"):
        bounds = {"min_length": 1, "max_length": 128}
    return (_annotation(spec), Field(..., **{k: v for k, v in bounds.items() if v is not None}))


def event_model(usecase: UseCase) -> type[BaseModel]:
    """A pydantic model of one event in a request (strict types, no unknown fields)."""
    return create_model(
        "Event",
        __config__=ConfigDict(extra="forbid", frozen=True),
        **{name: _field(usecase.columns[name]) for name in usecase.request_columns},
    )


def as_requests(frame: pd.DataFrame, usecase: UseCase) -> list[dict[str, Any]]:
    """Rows of events (a landed batch, the offline event table) as ``/predict`` bodies:
    their request columns, dates and timestamps as ISO 8601 text."""
    out = frame[usecase.request_columns].copy()
    for name in usecase.request_columns:
        kind = usecase.columns[name].type
        if kind == "date":
            out[name] = out[name].dt.strftime("%Y-%m-%d")
        elif kind == "timestamp":
            out[name] = out[name].map(lambda t: t.isoformat())
    return out.to_dict("records")


def prediction_model(usecase: UseCase) -> type[BaseModel]:
    """One answer of ``POST /predict``, answered under the use case's ``response_id``."""
    return create_model(
        "Prediction",
        prediction_id=(str, ...),
        **{usecase.response_id: (str, ...)},
        probability=(float, ...),
        decision=(int, ...),
        threshold=(float, ...),
        model_name=(str, ...),
        model_version=(str, ...),
        arm=(str, Field(..., description="champion, or challenger in an A/B test")),
        defaults_used=(
            list[str],
            Field(
                ...,
                description="aggregates the online store had no value for, filled with "
                "the declared defaults (an entity without history)",
            ),
        ),
    )


def response_model(usecase: UseCase) -> type[BaseModel]:
    return create_model("PredictResponse", predictions=(list[prediction_model(usecase)], ...))


def describe_errors(errors: list[dict[str, Any]], single: bool) -> list[str]:
    """pydantic's validation errors as messages that name the event and the field."""
    messages = []
    for error in errors:
        loc = list(error.get("loc", ()))
        where = ""
        if loc and isinstance(loc[0], int):
            index = loc.pop(0)
            where = "" if single else f"[{index}]"
        field = ".".join(str(p) for p in loc)
        name = f"{where}.{field}" if where and field else (field or where or "body")
        if error.get("type") == "extra_forbidden":
            messages.append(f"field {name!r} is not a field of an event")
        elif error.get("type") == "missing":
            messages.append(f"field {name!r} is required")
        else:
            messages.append(
                f"field {name!r}: {error.get('msg')} (got {_short(error.get('input'))})"
            )
    return messages


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
