"""How a model is tuned, validated and evaluated: ``model.training`` of a use case.

Apart from :mod:`closedloop.core.modeling` (which re-exports it), so that reading a
declaration checks its keys without importing numpy or pandas.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

#: bump when a change here alters results, so cached training steps are not reused
MODELING_VERSION = 1
FAMILIES = ("hist_gradient_boosting", "logistic_regression")
PRIMARY_METRIC = "roc_auc"
#: the smallest sample a search or refit may be capped to
MIN_SAMPLE_ROWS = 100


@dataclass(frozen=True)
class TrainingConfig:
    """How a model is tuned, validated and evaluated (``model.training`` of a use case)."""

    seed: int = 42
    trials: int = 6  # random-search trials in total, split round-robin across families
    families: tuple[str, ...] = FAMILIES
    validation_days: int = 7  # by known-at time: the days before the holdout
    holdout_days: int = 7  # the most recent days by known-at time
    drop_features: tuple[str, ...] = ()  # e.g. to train a deliberately weaker model
    segments: tuple[str, ...] = ()  # columns whose values get their own metrics
    min_segment_rows: int = 100  # smaller segments are not judged
    #: at most this many train + validation rows for the model search (a seeded sample
    #: of the refit rows); None: all of them
    search_rows: int | None = None
    #: at most this many train + validation rows for the winner's refit (a seeded
    #: sample, in the set's order); None: all of them. Size it to what the training
    #: worker holds.
    refit_rows: int | None = None

    def __post_init__(self) -> None:
        for name in ("families", "drop_features", "segments"):  # YAML gives lists
            object.__setattr__(self, name, tuple(getattr(self, name)))
        unknown = [f for f in self.families if f not in FAMILIES]
        if not self.families or unknown:
            raise ValueError(f"families must be a non-empty subset of {FAMILIES}: {unknown}")
        if min(self.trials, self.validation_days, self.holdout_days, self.min_segment_rows) < 1:
            raise ValueError("trials, validation_days, holdout_days, min_segment_rows must be >= 1")
        for name in ("search_rows", "refit_rows"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name} must be a whole number of rows or null: {value!r}")
            if value is not None and value < MIN_SAMPLE_ROWS:
                raise ValueError(f"{name} must be >= {MIN_SAMPLE_ROWS} (or null): {value}")

    def to_params(self) -> dict[str, Any]:
        """Flat, JSON-able settings (MLflow params, cache keys)."""
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        for name in ("search_rows", "refit_rows"):  # unset: the digests of before they existed
            if params[name] is None:
                del params[name]
        return {"modeling_version": MODELING_VERSION, **params}

    def digest(self) -> str:
        """A stable sha256 of :meth:`to_params`."""
        text = json.dumps(self.to_params(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()
