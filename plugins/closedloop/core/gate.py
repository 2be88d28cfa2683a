"""The promotion gate: is a candidate model demonstrably better than the champion?

The TFX "blessing" contract on MLflow aliases: the candidate and the current champion are
scored on the *same* holdout; the candidate is blessed only if it passes absolute floors,
beats the champion's primary metric by a margin, and regresses on no segment by more
than a tolerance. The first model ever is judged against the floors alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

APPROVAL_MODES = ("automatic", "required")
SHADOW_MODES = ("off", "required")


@dataclass(frozen=True)
class GatePolicy:
    primary_metric: str = "roc_auc"
    #: the candidate must beat the champion by at least this much on the primary metric
    min_improvement: float = 0.002
    #: absolute minimum of each metric (higher is better for all of them)
    floors: dict[str, float] = field(default_factory=lambda: {"roc_auc": 0.65, "pr_auc": 0.2})
    #: largest tolerated drop of the primary metric on any segment vs the champion
    max_segment_regression: float = 0.05
    segment_prefix: str = "roc_auc."
    #: "automatic": a blessed candidate becomes champion at once; "required": it waits
    #: for a person to approve it in Airflow, and an unanswered request expires rejected
    approval: str = "automatic"
    approval_timeout_hours: float = 72.0
    #: Airflow user ids who may answer (empty: any user allowed to act on the DAG)
    approvers: list[str] = field(default_factory=list)
    #: "required": the candidate must also pass a shadow report (closedloop.core.shadow)
    #: replaying the champion's logged traffic of the last ``shadow_days``
    shadow: str = "off"
    shadow_days: int = 7
    #: fewest logged predictions to replay; also the fewest labelled ones to compare on
    shadow_min_rows: int = 100
    #: smallest share of equal decisions, overall and on each segment value
    shadow_min_agreement: float = 0.9
    #: largest two-sample Kolmogorov-Smirnov statistic of the two score distributions
    shadow_max_ks: float = 0.2

    def __post_init__(self) -> None:
        if self.shadow not in SHADOW_MODES:
            raise ValueError(
                f"shadow must be one of {', '.join(SHADOW_MODES)}, got {self.shadow!r}"
            )
        if self.shadow_days < 1 or self.shadow_min_rows < 1:
            raise ValueError(
                f"shadow_days and shadow_min_rows must be >= 1, got {self.shadow_days}, "
                f"{self.shadow_min_rows}"
            )
        if not (0 <= self.shadow_min_agreement <= 1 and 0 <= self.shadow_max_ks <= 1):
            raise ValueError(
                "shadow_min_agreement and shadow_max_ks must be in [0, 1], got "
                f"{self.shadow_min_agreement}, {self.shadow_max_ks}"
            )
        if self.approval not in APPROVAL_MODES:
            raise ValueError(
                f"approval must be one of {', '.join(APPROVAL_MODES)}, got {self.approval!r}"
            )
        if not self.approval_timeout_hours > 0:
            raise ValueError(
                f"approval_timeout_hours must be positive, got {self.approval_timeout_hours}"
            )

    @property
    def needs_approval(self) -> bool:
        return self.approval == "required"

    @property
    def needs_shadow(self) -> bool:
        return self.shadow == "required"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateDecision:
    blessed: bool
    reasons: list[str]
    candidate: dict[str, float]
    champion: dict[str, float] | None
    champion_version: str | None

    @property
    def first_model(self) -> bool:
        return self.champion is None

    def summary(self) -> str:
        verdict = "blessed" if self.blessed else "not blessed"
        return f"{verdict}: " + "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    policy: GatePolicy,
    champion_version: str | None = None,
) -> GateDecision:
    """Judge ``candidate`` holdout metrics against the floors and the champion's."""
    failures: list[str] = []
    passes: list[str] = []
    for metric, floor in sorted(policy.floors.items()):
        value = candidate.get(metric)
        if value is None or value < floor:
            failures.append(f"{metric} {_fmt(value)} is below the floor {floor:.3f}")
        else:
            passes.append(f"{metric} {value:.4f} >= floor {floor:.3f}")
    if champion is not None:
        key = policy.primary_metric
        ours, theirs = candidate.get(key), champion.get(key)
        if ours is None or theirs is None:
            failures.append(f"{key} missing (candidate {_fmt(ours)}, champion {_fmt(theirs)})")
        elif ours - theirs < policy.min_improvement:
            failures.append(
                f"{key} {ours:.4f} does not beat champion v{champion_version} "
                f"{theirs:.4f} by {policy.min_improvement:.3f} (delta {ours - theirs:+.4f})"
            )
        else:
            passes.append(f"{key} {ours:.4f} beats champion {theirs:.4f} ({ours - theirs:+.4f})")
        for segment in sorted(k for k in champion if k.startswith(policy.segment_prefix)):
            if segment not in candidate:
                continue
            drop = champion[segment] - candidate[segment]
            if drop > policy.max_segment_regression:
                failures.append(
                    f"{segment} regresses by {drop:.4f} "
                    f"(> {policy.max_segment_regression:.3f} tolerated)"
                )
    else:
        passes.append("first model: judged against the floors only")
    return GateDecision(
        blessed=not failures,
        reasons=failures or passes,
        candidate=dict(candidate),
        champion=None if champion is None else dict(champion),
        champion_version=champion_version,
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


@dataclass(frozen=True)
class TrainingSetPolicy:
    """What a training set must satisfy beyond the use case's declarations."""

    min_rows: int = 500
    #: bounds of the label's positive rate (share of rows of the positive class)
    min_positive_rate: float = 0.05
    max_positive_rate: float = 0.95

    def __post_init__(self) -> None:
        if self.min_rows < 0:
            raise ValueError(f"min_rows must be >= 0, got {self.min_rows}")
        if not 0 <= self.min_positive_rate <= self.max_positive_rate <= 1:
            raise ValueError(
                "need 0 <= min_positive_rate <= max_positive_rate <= 1, got "
                f"{self.min_positive_rate}, {self.max_positive_rate}"
            )
