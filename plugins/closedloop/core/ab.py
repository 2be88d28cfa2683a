"""A/B tests between the ``champion`` and the ``challenger`` (the paper's C8).

Traffic is split by entity, not by request: :func:`arm_for` hashes the entity key, so a
event asked about twice gets the same arm each time (its two answers never disagree
because of the split), and the share of keys sent to the challenger is the configured
one. The serving layer records the arm in the prediction log.

Once outcomes arrive, :func:`compare_arms` scores each arm on its labelled predictions
with the gate's primary metric and puts a seeded bootstrap confidence interval on the
difference (challenger minus champion), resampling each arm independently. A promotion
out of an A/B test is justified only when the whole interval lies above zero.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from closedloop.core.registry import CHALLENGER, CHAMPION, SHADOW

if TYPE_CHECKING:
    from datetime import datetime
    from pathlib import Path

    import pandas as pd

    from closedloop.core.settings import Settings

ARMS = (CHAMPION, CHALLENGER)


def arm_for(key: str, challenger_share: float) -> str:
    """The arm of an entity key: ``challenger`` for a stable ``challenger_share`` of keys.

    sha256 of the key mapped to [0, 1); no state, the same in every process and release.
    """
    if not 0.0 <= challenger_share <= 1.0:
        raise ValueError(f"challenger_share must be in [0, 1], got {challenger_share}")
    point = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return CHALLENGER if point < challenger_share else CHAMPION


def _metric(name: str) -> Any:
    from sklearn.metrics import average_precision_score, roc_auc_score

    metrics = {"roc_auc": roc_auc_score, "pr_auc": average_precision_score}
    if name not in metrics:
        raise ValueError(f"A/B tests support the metrics {sorted(metrics)}, not {name!r}")
    return metrics[name]


@dataclass(frozen=True)
class ArmStats:
    """One arm's labelled predictions: how many, the positive rate, the metric."""

    arm: str
    model_versions: list[str]
    predictions: int
    labelled: int
    positive_rate: float | None
    metric: float | None


@dataclass(frozen=True)
class ABResult:
    """The comparison of the two arms on ``metric``; ``verdict`` is one of
    ``challenger_better``, ``champion_better``, ``inconclusive``, ``insufficient_data``."""

    metric: str
    arms: dict[str, ArmStats]
    difference: float | None  # challenger - champion
    ci_low: float | None
    ci_high: float | None
    confidence: float
    resamples: int
    seed: int
    verdict: str
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_arms(
    labelled: pd.DataFrame,
    *,
    metric: str = "roc_auc",
    min_labelled: int = 200,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> ABResult:
    """Compare the arms of ``labelled`` (columns ``arm``, ``score``, ``label`` and
    ``label_known``; ``model_version`` if present) on ``metric``.

    Rows whose label is not known count as predictions but not as evidence. The verdict is
    ``insufficient_data`` while an arm has fewer than ``min_labelled`` labelled rows or a
    single class; otherwise it follows the bootstrap interval of the difference.
    """
    score_fn = _metric(metric)
    arms: dict[str, ArmStats] = {}
    samples: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    reasons = []
    has_versions = "model_version" in labelled
    for arm in ARMS:
        rows = labelled[labelled["arm"] == arm]
        known = rows[rows["label_known"].astype(bool)]
        y = known["label"].to_numpy(dtype=np.int64)
        s = known["score"].to_numpy(dtype=np.float64)
        two_classes = len(np.unique(y)) == 2
        versions = sorted(map(str, rows["model_version"].unique())) if has_versions else []
        arms[arm] = ArmStats(
            arm,
            versions,
            len(rows),
            len(known),
            float(y.mean()) if len(y) else None,
            float(score_fn(y, s)) if two_classes else None,
        )
        if len(known) < min_labelled or not two_classes:
            reasons.append(
                f"{arm}: {len(known)} labelled rows ({'two' if two_classes else 'one or no'} "
                f"classes), need {min_labelled} of both classes"
            )
        samples[arm] = (y, s)
    if reasons:
        return ABResult(
            metric, arms, None, None, None, confidence, 0, seed, "insufficient_data", reasons
        )
    difference = arms[CHALLENGER].metric - arms[CHAMPION].metric  # type: ignore[operator]
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    for i in range(resamples):
        values = []
        for arm in ARMS:
            y, s = samples[arm]
            pick = rng.integers(0, len(y), len(y))
            # a resample with one class has no AUC: draw again (rare at min_labelled rows)
            while len(np.unique(y[pick])) < 2:
                pick = rng.integers(0, len(y), len(y))
            values.append(score_fn(y[pick], s[pick]))
        diffs[i] = values[1] - values[0]
    tail = (1 - confidence) / 2
    low, high = (float(q) for q in np.quantile(diffs, [tail, 1 - tail]))
    if low > 0:
        verdict = "challenger_better"
    elif high < 0:
        verdict = "champion_better"
    else:
        verdict = "inconclusive"
    reasons = [
        f"{metric} challenger - champion = {difference:+.4f}, "
        f"{confidence:.0%} bootstrap CI [{low:+.4f}, {high:+.4f}] over {resamples} resamples"
    ]
    return ABResult(
        metric, arms, float(difference), low, high, confidence, resamples, seed, verdict, reasons
    )


def ab_report(
    settings: Settings,
    end: datetime,
    *,
    window_days: int,
    min_labelled: int | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """The A/B comparison of the online predictions made in the ``window_days`` before
    ``end``, on the outcomes known by ``end`` (the gate's primary metric); also written to
    ``out/ab_test.json`` when ``out`` is given."""
    from datetime import timedelta

    from closedloop.core import offline
    from closedloop.core.prediction_log import PredictionLog, join_ground_truth

    usecase = settings.usecase
    start = end - timedelta(days=window_days)
    predictions = PredictionLog(settings.prediction_log_dir).read(start, end, sources=("online",))
    predictions = predictions[predictions["arm"] != SHADOW]  # scored beside, never answered
    metric = usecase.model.gate.get("primary_metric", "roc_auc")
    minimum = min_labelled or int(usecase.model.monitoring.get("min_labelled_rows", 200))
    table = offline.read_partitions(settings.offline_table_dir(usecase.event_table))
    if predictions.empty or table is None:
        labelled = predictions.assign(label=None, label_known=False)
    else:
        key, known_at = usecase.batch.id_column, usecase.known_at_column
        columns = [key, usecase.label.column, known_at]
        labelled = join_ground_truth(
            predictions,
            table[columns].drop_duplicates(key),
            key=key,
            label=usecase.label.column,
            known_at=known_at,
            as_of=end,
        )
    if not labelled.empty:  # an event asked about twice counts once, with its last answer
        labelled = labelled.drop_duplicates(usecase.batch.id_column, keep="last")
    result = compare_arms(labelled, metric=metric, min_labelled=minimum)
    report = {**result.to_dict(), "window_start": start.isoformat(), "window_end": end.isoformat()}
    if out is not None:
        (out / "ab_test.json").write_text(json.dumps(report, indent=2))
    return report
