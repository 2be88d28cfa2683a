"""The request schema, derived from the use case and the model.

A booking in a request carries the entity keys of the use case (``entity_keys``) and
any column the model reads that its feature service does not provide (a request-time
field); each field is typed and bounded as the use-case YAML declares it, so a category
outside its set or a count out of range is refused before anything is looked up.
Unknown fields are refused too: a misspelt key must not fall back to a default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, create_model

if TYPE_CHECKING:
    from closedloop.core.usecase import ColumnSpec, UseCase


def _annotation(spec: ColumnSpec) -> Any:
    if spec.type == "category":
        return Literal[tuple(spec.categories or ())]
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
    if spec.type == "string":
        bounds = {"min_length": 1, "max_length": 128}
    return (_annotation(spec), Field(..., **{k: v for k, v in bounds.items() if v is not None}))


def request_fields(usecase: UseCase, model_columns: list[str], served: set[str]) -> list[str]:
    """The fields a request must carry: the entity keys, then the model's columns that
    neither the keys nor the feature service (``served``) provide."""
    keys = list(usecase.entity_keys)
    extra = [c for c in model_columns if c not in served and c not in keys]
    undeclared = [c for c in extra if c not in usecase.columns]
    if undeclared:
        raise ValueError(
            f"the model reads {undeclared}, which neither the feature service nor the use "
            "case's declared columns provide"
        )
    return keys + extra


def booking_model(usecase: UseCase, fields: list[str]) -> type[BaseModel]:
    """A pydantic model of one booking in a request (strict types, no unknown fields)."""
    return create_model(
        "Booking",
        __config__=ConfigDict(extra="forbid", frozen=True),
        **{name: _field(usecase.columns[name]) for name in fields},
    )


class Prediction(BaseModel):
    """One answer of ``POST /predict`` (documentation of the response)."""

    prediction_id: str
    booking_id: str
    probability: float
    decision: int
    threshold: float
    model_name: str
    model_version: str
    arm: str
    defaults_used: list[str] = Field(
        description="features the online store had no value for, filled with the use "
        "case's declared defaults (e.g. a customer without history)"
    )


class PredictResponse(BaseModel):
    predictions: list[Prediction]


def describe_errors(errors: list[dict[str, Any]], single: bool) -> list[str]:
    """pydantic's validation errors as messages that name the booking and the field."""
    messages = []
    for error in errors:
        loc = list(error.get("loc", ()))
        where = ""
        if loc and isinstance(loc[0], int):
            index = loc.pop(0)
            where = "" if single else f"bookings[{index}]"
        field = ".".join(str(p) for p in loc)
        name = f"{where}.{field}" if where and field else (field or where or "body")
        if error.get("type") == "extra_forbidden":
            messages.append(f"field {name!r} is not a field of a booking")
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
