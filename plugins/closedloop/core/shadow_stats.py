"""The statistics of a shadow report (:mod:`closedloop.core.shadow`), on plain arrays:
agreement of two versions' decisions, their score distributions (two-sample
Kolmogorov-Smirnov), per-segment differences, the labelled comparison (the A/B test's
bootstrap, :func:`closedloop.core.ab.compare_arms`) and the pass/fail against
:class:`ShadowThresholds`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from closedloop.core.registry import CHALLENGER, CHAMPION

if TYPE_CHECKING:
    from collections.abc import Sequence

    from closedloop.core.gate import GatePolicy


@dataclass(frozen=True)
class ShadowThresholds:
    """What a shadow report must show to pass (the gate's ``shadow_*`` settings)."""

    min_rows: int = 100
    min_agreement: float = 0.9
    max_ks: float = 0.2

    @classmethod
    def of(cls, policy: GatePolicy) -> ShadowThresholds:
        return cls(policy.shadow_min_rows, policy.shadow_min_agreement, policy.shadow_max_ks)


def decision_agreement(baseline: Any, candidate: Any) -> tuple[float | None, dict[str, int]]:
    """The share of equal decisions, and the four cells of their cross table."""
    b, c = np.asarray(baseline, dtype=np.int64), np.asarray(candidate, dtype=np.int64)
    cells = {
        "both_positive": int(((b == 1) & (c == 1)).sum()),
        "both_negative": int(((b == 0) & (c == 0)).sum()),
        "candidate_only_positive": int(((b == 0) & (c == 1)).sum()),
        "baseline_only_positive": int(((b == 1) & (c == 0)).sum()),
    }
    return (float((b == c).mean()) if len(b) else None), cells


def compare_scores(baseline: Any, candidate: Any) -> dict[str, Any]:
    """The two score distributions: two-sample KS test, paired differences, quantiles."""
    from scipy.stats import ks_2samp

    b, c = np.asarray(baseline, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    if len(b) == 0:
        return {}
    ks = ks_2samp(b, c)
    diff = np.abs(c - b)
    return {
        "ks_statistic": float(ks.statistic),
        "ks_pvalue": float(ks.pvalue),
        "identical": bool(np.array_equal(b, c)),
        "mean_abs_difference": float(diff.mean()),
        "max_abs_difference": float(diff.max()),
        "baseline": _describe(b),
        "candidate": _describe(c),
    }


def _describe(x: np.ndarray) -> dict[str, float]:
    p10, p50, p90 = (float(q) for q in np.quantile(x, [0.1, 0.5, 0.9]))
    return {"mean": float(x.mean()), "std": float(x.std()), "p10": p10, "p50": p50, "p90": p90}


def segment_differences(frame: pd.DataFrame, segments: Sequence[str]) -> list[dict[str, Any]]:
    """Per value of each segment column: rows, agreement, positive rates, mean score
    difference. ``frame`` has the segment columns and ``baseline_score``,
    ``candidate_score``, ``baseline_decision``, ``candidate_decision``."""
    out: list[dict[str, Any]] = []
    for segment in segments:
        if segment not in frame:
            out.append({"segment": segment, "skipped": "not among the logged features"})
            continue
        for value, part in sorted(
            frame.groupby(segment, dropna=False, observed=True), key=lambda g: str(g[0])
        ):
            agreement, _ = decision_agreement(part["baseline_decision"], part["candidate_decision"])
            out.append(
                {
                    "segment": segment,
                    "value": str(value),
                    "rows": len(part),
                    "agreement": agreement,
                    "baseline_positive_rate": float(part["baseline_decision"].mean()),
                    "candidate_positive_rate": float(part["candidate_decision"].mean()),
                    "mean_score_difference": float(
                        (part["candidate_score"] - part["baseline_score"]).mean()
                    ),
                }
            )
    return out


def compare_labelled(
    labels: Any,
    baseline: Any,
    candidate: Any,
    *,
    metric: str,
    min_labelled: int,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Both versions' ``metric`` on the same labelled rows and the seeded bootstrap
    interval of candidate - baseline: :func:`closedloop.core.ab.compare_arms` with the
    baseline as its champion arm and the candidate as its challenger arm."""
    from closedloop.core.ab import compare_arms

    y = np.asarray(labels, dtype=np.int64)
    n = len(y)
    arms = pd.DataFrame(
        {
            "arm": [CHAMPION] * n + [CHALLENGER] * n,
            "score": np.concatenate([np.asarray(baseline, float), np.asarray(candidate, float)]),
            "label": np.concatenate([y, y]),
            "label_known": True,
        }
    )
    result = compare_arms(
        arms, metric=metric, min_labelled=min_labelled, resamples=resamples, seed=seed
    )
    verdicts = {"challenger_better": "candidate_better", "champion_better": "baseline_better"}
    return {
        "metric": metric,
        "labelled": n,
        "baseline": result.arms[CHAMPION].metric,
        "candidate": result.arms[CHALLENGER].metric,
        "difference": result.difference,
        "ci_low": result.ci_low,
        "ci_high": result.ci_high,
        "confidence": result.confidence,
        "resamples": result.resamples,
        "verdict": verdicts.get(result.verdict, result.verdict),
        "reasons": result.reasons,
    }


def judge(
    rows: int,
    agreement: float | None,
    scores: dict[str, Any],
    segments: list[dict[str, Any]],
    labelled: dict[str, Any] | None,
    thresholds: ShadowThresholds,
) -> tuple[bool, list[str]]:
    """Pass or fail against ``thresholds``, with the failures (or what passed) named."""
    t = thresholds
    if rows < t.min_rows or agreement is None:
        return False, [f"{rows} logged predictions to replay, fewer than the {t.min_rows} needed"]
    failures, passes = [], [f"{rows} logged predictions replayed"]
    said = f"decisions agree on {agreement:.1%} of {rows} rows"
    if agreement < t.min_agreement:
        failures.append(f"{said}, below {t.min_agreement:.1%}")
    else:
        passes.append(f"{said} (>= {t.min_agreement:.1%})")
    ks = scores["ks_statistic"]
    said = f"score distributions KS {ks:.3f} (p {scores['ks_pvalue']:.2g})"
    if ks > t.max_ks:
        failures.append(f"{said}, above {t.max_ks:.3f}")
    else:
        passes.append(f"{said} <= {t.max_ks:.3f}")
    for s in segments:
        if s.get("rows", 0) >= t.min_rows and s["agreement"] < t.min_agreement:
            failures.append(
                f"segment {s['segment']}={s['value']}: decisions agree on {s['agreement']:.1%} "
                f"of {s['rows']} rows, below {t.min_agreement:.1%}"
            )
    if labelled is not None and labelled["verdict"] == "baseline_better":
        failures.append(
            f"{labelled['metric']} candidate - baseline {labelled['difference']:+.4f} on "
            f"{labelled['labelled']} labelled rows, {labelled['confidence']:.0%} CI "
            f"[{labelled['ci_low']:+.4f}, {labelled['ci_high']:+.4f}] entirely below zero"
        )
    elif labelled is not None and labelled["difference"] is not None:
        passes.append(f"{labelled['metric']} {labelled['verdict']}: {labelled['reasons'][0]}")
    return not failures, failures or passes
