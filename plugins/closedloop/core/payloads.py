"""What the training DAG's tasks hand each other (through XCom, as plain dicts): the
training set a run built, the model it trained, the gate's outcome. The monitoring
DAG's verdict is :class:`closedloop.core.monitoring.Verdict`; the validation result
:class:`closedloop.core.validation_result.ValidationResult`.

``to_dict`` gives the XCom; ``from_dict`` reads one back, refusing a dict that lacks a
field (an XCom of another version of closedloop, or of another task) by name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Self

from closedloop.core.gate import GateDecision


class Payload:
    """``to_dict``/``from_dict`` for a frozen dataclass of JSON values."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        missing = [n for n in names if n not in d]
        if missing:
            raise ValueError(f"not a {cls.__name__}: it lacks {', '.join(missing)}")
        return cls(**{n: d[n] for n in names})


@dataclass(frozen=True)
class TrainingSetRef(Payload):
    """A training set snapshot: where it is, what it holds, where it came from."""

    uri: str
    digest: str
    rows: int
    positive_rate: float
    window_start: str  # ISO-8601
    window_end: str
    feature_service: str
    feature_views: list[str]
    features: list[str]


@dataclass(frozen=True)
class TrainedModel(Payload):
    """The MLflow run that trained a candidate and what it found."""

    run_id: str
    model_uri: str
    threshold: float
    family: str
    metrics: dict[str, float]
    holdout_rows: int


@dataclass(frozen=True)
class GateOutcome(Payload):
    """What the gate did with a registered version, and why."""

    version: str
    action: str  # promoted | challenger | ...
    decision: GateDecision

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "action": self.action, **self.decision.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GateOutcome:
        names = [f.name for f in fields(GateDecision)]
        missing = [n for n in ["version", "action", *names] if n not in d]
        if missing:
            raise ValueError(f"not a GateOutcome: it lacks {', '.join(missing)}")
        return cls(d["version"], d["action"], GateDecision(**{n: d[n] for n in names}))
