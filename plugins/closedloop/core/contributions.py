"""Each input feature's share of one score, by the model's own means where it has them.

A linear model (closedloop's LogisticRegression after its ColumnTransformer, see
:func:`closedloop.core.modeling.build_model`) is explained exactly: coefficient x
transformed value per output column, the one-hot columns summed back to their source
feature, plus the intercept; the sum is the model's ``decision_function`` (log-odds).

Any other binary model with a ``decision_function`` (closedloop's trees) gets the
Shapley values of its log-odds against a background sample of its own training set (the
interventional game), computed by SHAP: exactly up to ``EXACT_UP_TO`` features, else
estimated from ``SAMPLED_ORDERS`` antithetic feature orderings with a fixed seed. Both
add up: the base value (the background's mean log-odds) plus the contributions is the
score. SHAP's TreeExplainer is not used: it reads HistGradientBoosting's categorical
splits as numeric thresholds (docs/serving.md has the measurements).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Contributions:
    """Per input feature its additive share of the log-odds, or why there is none."""

    method: str | None  # "linear", "shap-exact", "shap-permutation" or None
    intercept: float | None = None  # linear: the intercept; shap: the background's mean
    log_odds: float | None = None  # the model's decision_function on the row
    by_feature: dict[str, float] = field(default_factory=dict)
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "intercept": self.intercept,
            "log_odds": self.log_odds,
            "by_feature": dict(self.by_feature),
            "message": self.message,
        }


#: up to this many features every coalition is evaluated (SHAP's Exact explainer: 2^n
#: times the background rows); beyond, SHAP's permutation explainer samples orderings
EXACT_UP_TO = 10
#: how many feature orderings SHAP's permutation explainer walks (each forward and back)
SAMPLED_ORDERS = 25
#: at most this many rows of the training set stand for "a feature not known"
BACKGROUND_ROWS = 100


def contributions(
    model: Any, row: pd.DataFrame, background: pd.DataFrame | None = None, *, seed: int = 0
) -> Contributions:
    """The contributions of ``row`` (one row, the model's input columns) to ``model``'s
    score; see the module for which models are explained. ``background`` (rows of the
    model's training set, the model's input columns) is needed for all but linear models."""
    steps = getattr(model, "named_steps", None)
    if not steps or "prep" not in steps or "model" not in steps:
        return Contributions(None, message=f"{type(model).__name__} is not closedloop's pipeline")
    prep, estimator = steps["prep"], steps["model"]
    name = type(estimator).__name__
    if name != "LogisticRegression":
        return _shapley(model, name, row, background, seed)
    coef = np.asarray(estimator.coef_, dtype=np.float64)
    if coef.shape[0] != 1:
        return Contributions(None, message=f"{coef.shape[0]} classes: only binary models")
    try:
        owners = _column_owners(prep)
    except ValueError as exc:
        return Contributions(None, message=str(exc))
    transformed = np.asarray(prep.transform(row), dtype=np.float64)[0]
    if len(owners) != transformed.shape[0] or coef.shape[1] != len(owners):
        return Contributions(None, message="the preprocessing's output columns are not mapped")
    terms = coef[0] * transformed
    by_feature: dict[str, float] = {}
    for owner, term in zip(owners, terms, strict=True):
        by_feature[owner] = by_feature.get(owner, 0.0) + float(term)
    intercept = float(np.asarray(estimator.intercept_, dtype=np.float64)[0])
    log_odds = float(model.decision_function(row)[0])
    return Contributions("linear", intercept, log_odds, by_feature)


def _shapley(
    model: Any, name: str, row: pd.DataFrame, background: pd.DataFrame | None, seed: int
) -> Contributions:
    """SHAP on the model's log-odds (see the module)."""
    prep, estimator = model.named_steps["prep"], model.named_steps["model"]
    if not hasattr(estimator, "decision_function") or len(getattr(model, "classes_", ())) != 2:
        return Contributions(None, message=f"no contributions for {name}: not a binary model "
                             "with log-odds")  # fmt: skip
    if background is None or background.empty:
        return Contributions(None, message=f"no contributions for {name}: no rows of its "
                             "training set to compare with (the snapshot is gone)")  # fmt: skip
    columns = list(row.columns)
    try:
        owners = _column_owners(prep)
    except ValueError as exc:
        return Contributions(None, message=str(exc))
    if sorted(owners) != sorted(columns):
        return Contributions(None, message=f"no contributions for {name}: its preprocessing "
                             "does not make one column of each input")  # fmt: skip
    # Each transformed column depends on its own input column only, so replacing an input
    # by a background row's value and transforming, or transforming and then replacing,
    # is the same: the game is played on the estimator, without the ColumnTransformer
    # (half the time), and SHAP's maskers get numbers, never category strings.
    if len(background) > BACKGROUND_ROWS:
        background = background.sample(BACKGROUND_ROWS, random_state=seed)
    data = np.asarray(prep.transform(background[columns]), dtype=np.float64)
    x = np.asarray(prep.transform(row[columns]), dtype=np.float64)
    shap = _shap()
    masker = shap.maskers.Independent(data, max_samples=BACKGROUND_ROWS)
    if len(columns) <= EXACT_UP_TO:
        method = "shap-exact"
        found = shap.explainers.Exact(estimator.decision_function, masker)(x, silent=True)
    else:
        method = "shap-permutation"
        explainer = shap.explainers.Permutation(estimator.decision_function, masker, seed=seed)
        found = explainer(x, max_evals=SAMPLED_ORDERS * (2 * len(columns) + 1), silent=True)
    values = np.asarray(found.values, dtype=np.float64)[0]
    base = float(np.asarray(found.base_values, dtype=np.float64).reshape(-1)[0])
    by_feature = {c: float(v) for c, v in zip(owners, values, strict=True)}
    score = float(model.decision_function(row)[0])
    return Contributions(method, base, score, by_feature)


def _shap() -> Any:
    """SHAP, its numba-compiled helpers left as Python: at one explanation's size they
    run as fast uncompiled, and compiling them cost 4 s in each new process
    (docs/serving.md). Only functions decorated while SHAP is imported are affected."""
    import sys

    if "shap" in sys.modules:
        return sys.modules["shap"]
    import numba

    before = numba.config.DISABLE_JIT
    numba.config.DISABLE_JIT = True
    try:
        import shap
    finally:
        numba.config.DISABLE_JIT = before
    return shap


def _column_owners(prep: Any) -> list[str]:
    """The input feature behind each output column of a fitted ColumnTransformer."""
    width = sum(s.stop - s.start for s in prep.output_indices_.values())
    owners: list[str | None] = [None] * width
    for name, transformer, columns in prep.transformers_:
        where = prep.output_indices_.get(name, slice(0, 0))
        if name == "remainder" or where.stop == where.start:
            continue
        columns = list(columns)
        kind = type(transformer).__name__
        if kind == "OneHotEncoder":
            if getattr(transformer, "drop_idx_", None) is not None or getattr(
                transformer, "_infrequent_enabled", False
            ):
                raise ValueError("a one-hot encoder that drops or groups categories")
            sizes = [len(c) for c in transformer.categories_]
        elif kind in ("StandardScaler", "OrdinalEncoder") or _one_to_one(transformer):
            sizes = [1] * len(columns)
        else:
            raise ValueError(f"no column mapping for a {kind}")
        if sum(sizes) != where.stop - where.start:
            made = where.stop - where.start
            raise ValueError(f"{name}: {sum(sizes)} columns mapped, {made} made")
        at = where.start
        for column, size in zip(columns, sizes, strict=True):
            owners[at : at + size] = [str(column)] * size
            at += size
    if any(o is None for o in owners):
        raise ValueError("an output column of the preprocessing has no source feature")
    return [str(o) for o in owners]


def _one_to_one(transformer: Any) -> bool:
    """``"passthrough"``, which a fitted ColumnTransformer holds as a one-to-one
    FunctionTransformer."""
    if transformer == "passthrough":
        return True
    named = type(transformer).__name__ == "FunctionTransformer"
    identity = getattr(transformer, "func", None) is None
    return named and identity and getattr(transformer, "feature_names_out", None) == "one-to-one"
