"""Training, tuning and evaluation as pure, deterministic functions.

No Airflow, MLflow or Feast here: a task hands in a training frame and gets back a fitted
scikit-learn pipeline with its metrics. The frame is split by the time each outcome became
known (``known_at``), so validation and holdout only hold outcomes settled after every
training outcome. Every random choice comes from ``TrainingConfig.seed``: equal inputs give
bitwise-equal metrics. scikit-learn is imported inside the functions that need it, which
keeps ``import closedloop.core.modeling`` cheap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from closedloop.core.training_config import (  # re-exported: the modeling API
    FAMILIES,
    PRIMARY_METRIC,
    TrainingConfig,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from sklearn.pipeline import Pipeline

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Split:
    """Train, validation and holdout rows; ``cutoffs`` are ISO timestamps of the bounds."""

    train: pd.DataFrame
    validation: pd.DataFrame
    holdout: pd.DataFrame
    cutoffs: dict[str, str]


def split_by_time(
    df: pd.DataFrame,
    *,
    known_at: str,
    validation_days: int,
    holdout_days: int,
    label: str,
    order_by: Sequence[str],
) -> Split:
    """Split by the time outcomes became known: ``train < validation < holdout``.

    The holdout holds the last ``holdout_days`` days up to the end of the day of the
    latest ``known_at``; validation the ``validation_days`` before; train the rest.
    """
    if df.empty:
        raise ValueError("no rows to split")
    bounds = time_bounds(df[known_at].max(), validation_days, holdout_days)
    validation_start, holdout_start = bounds["validation_start"], bounds["holdout_start"]
    ordered = df.sort_values([c for c in order_by if c in df], kind="mergesort")
    when = ordered[known_at]
    parts = {
        "train": ordered[when < validation_start],
        "validation": ordered[(when >= validation_start) & (when < holdout_start)],
        "holdout": ordered[when >= holdout_start],
    }
    cutoffs = {k: v.isoformat() for k, v in bounds.items()}
    for name, part in parts.items():
        check_classes(name, part[label].nunique(), len(part), known_at, cutoffs)
    return Split(**{k: v.reset_index(drop=True) for k, v in parts.items()}, cutoffs=cutoffs)


def time_bounds(
    latest_known_at: Any, validation_days: int, holdout_days: int
) -> dict[str, pd.Timestamp]:
    """The split's bounds: the end of the latest known-at's day, the holdout's
    ``holdout_days`` before it and validation's ``validation_days`` before those."""
    end = pd.Timestamp(latest_known_at).floor("D") + pd.Timedelta(days=1)
    holdout_start = end - pd.Timedelta(days=holdout_days)
    validation_start = holdout_start - pd.Timedelta(days=validation_days)
    return {"validation_start": validation_start, "holdout_start": holdout_start, "end": end}


def check_classes(name: str, classes: int, rows: int, known_at: str, cutoffs: Any) -> None:
    if classes < 2:
        raise ValueError(
            f"{name} split has {rows} rows and {classes} label class(es) "
            f"by {known_at} (cutoffs {cutoffs}); it needs rows of both classes"
        )


def model_inputs(
    df: pd.DataFrame, *, label: str, exclude: Sequence[str], drop_features: Sequence[str] = ()
) -> tuple[pd.DataFrame, pd.Series]:
    """Features (sorted columns; datetimes, ``label`` and ``exclude`` left out) and label."""
    missing = sorted(set(drop_features) - set(df.columns))
    if missing:
        raise ValueError(f"cannot drop unknown features: {missing}")
    skip = {label, *exclude, *drop_features}
    columns = sorted(
        c for c in df.columns if c not in skip and not pd.api.types.is_datetime64_any_dtype(df[c])
    )
    if not columns:
        raise ValueError("no feature columns left")
    return df[columns], df[label].astype("int64")


def _is_categorical(series: pd.Series) -> bool:
    """Strings and categories are categorical; numbers and booleans are numeric."""
    types = pd.api.types
    if types.is_bool_dtype(series) or types.is_numeric_dtype(series):
        return False
    if isinstance(series.dtype, pd.CategoricalDtype) or types.is_string_dtype(series.dtype):
        return True
    raise TypeError(f"feature {series.name!r} has unsupported dtype {series.dtype}")


def build_model(family: str, params: Mapping[str, Any], X: pd.DataFrame, seed: int) -> Pipeline:
    """An unfitted pipeline selecting ``X``'s columns by name (order and extras ignored).

    Unseen categories (a new market segment) score as missing (gradient boosting) or as
    all-zero one-hot columns (logistic regression).
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    categorical = [c for c in X.columns if _is_categorical(X[c])]
    numeric = [c for c in X.columns if c not in categorical]
    if family == "hist_gradient_boosting":  # at most 255 codes: HGB's categorical limit
        cat: Any = OrdinalEncoder(
            handle_unknown="use_encoded_value", unknown_value=np.nan, max_categories=255
        )
        num: Any = "passthrough"
        mask = [True] * len(categorical) + [False] * len(numeric)  # the output's column order
        model: Any = HistGradientBoostingClassifier(
            **params, categorical_features=mask, early_stopping=False, random_state=seed
        )
    elif family == "logistic_regression":
        cat, num = OneHotEncoder(handle_unknown="ignore", sparse_output=False), StandardScaler()
        model = LogisticRegression(**params, max_iter=2000, random_state=seed)
    else:
        raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")
    prep = ColumnTransformer([("cat", cat, categorical), ("num", num, numeric)], remainder="drop")
    return Pipeline([("prep", prep), ("model", model)])


def sample_params(family: str, rng: np.random.Generator) -> dict[str, Any]:
    """One draw from a family's (small) search space, as plain Python values."""
    if family == "hist_gradient_boosting":
        return {
            "learning_rate": round(float(10 ** rng.uniform(-1.6, -0.6)), 4),
            "max_leaf_nodes": int(rng.choice([7, 15, 31, 63])),
            "max_iter": int(rng.choice([50, 100, 200, 300])),
            "l2_regularization": round(float(10 ** rng.uniform(-3.0, 1.0)), 4),
            "min_samples_leaf": int(rng.choice([10, 20, 40, 80])),
        }
    if family == "logistic_regression":
        return {"C": round(float(10 ** rng.uniform(-2.0, 1.5)), 4)}
    raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")


def choose_threshold(y_true: Sequence[int] | np.ndarray, proba: np.ndarray) -> float:
    """The score ``t`` maximising F1 of ``proba >= t``; ties go to the highest ``t``."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(proba, dtype=np.float64)
    if y.sum() == 0:
        return 0.5
    order = np.argsort(-p, kind="mergesort")
    p_sorted, tp = p[order], np.cumsum(y[order])
    last = np.r_[p_sorted[1:] != p_sorted[:-1], True]  # last row of each distinct score
    tp, predicted = tp[last], np.flatnonzero(last) + 1
    f1 = 2 * tp / (predicted + y.sum())
    return float(p_sorted[last][int(np.argmax(f1))])


def segment_key(metric: str, segment: str, value: Any) -> str:
    """An MLflow-safe name like ``roc_auc.market_segment.Offline_TA_TO``."""
    return f"{metric}.{segment}.{_UNSAFE.sub('_', str(value)).strip('_') or '_'}"


def evaluate(
    model: Any,
    frame: pd.DataFrame,
    *,
    label: str,
    threshold: float,
    segments: Sequence[str],
    min_segment_rows: int,
    exclude: Sequence[str],
) -> dict[str, float]:
    """Metrics of ``model`` on ``frame``, overall and per segment value (plain floats).

    ``roc_auc``/``pr_auc`` are left out where a frame or segment has one class only;
    ``positive_rate`` is the share predicted positive, ``label_rate`` the actual share.
    """
    return evaluate_chunks(
        model,
        [frame],
        label=label,
        threshold=threshold,
        segments=segments,
        min_segment_rows=min_segment_rows,
        exclude=exclude,
    )


def evaluate_chunks(
    model: Any,
    chunks: Iterable[pd.DataFrame],
    *,
    label: str,
    threshold: float,
    segments: Sequence[str],
    min_segment_rows: int,
    exclude: Sequence[str],
) -> dict[str, float]:
    """:func:`evaluate` over the rows of ``chunks`` taken together, one chunk in memory
    at a time (it keeps each row's label, score and segment values only)."""
    from sklearn import metrics as skm

    labels, scores = [], []
    values: dict[str, list[np.ndarray]] = {segment: [] for segment in segments}
    for frame in chunks:
        X, y = model_inputs(frame, label=label, exclude=exclude)
        labels.append(y.to_numpy())
        scores.append(model.predict_proba(X)[:, 1])
        for segment in segments:
            if segment not in frame.columns:
                raise ValueError(f"segment column {segment!r} is not in the frame")
            values[segment].append(frame[segment].to_numpy())
    if not labels:
        raise ValueError("no rows to evaluate")
    y = pd.Series(np.concatenate(labels))
    proba = np.concatenate(scores)
    pred = (proba >= threshold).astype(np.int64)
    out = {
        "rows": float(len(y)),
        "label_rate": float(y.mean()),
        "positive_rate": float(pred.mean()),
        "brier": float(skm.brier_score_loss(y, proba)),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, zero_division=0)),
    }
    if y.nunique() == 2:
        out["roc_auc"] = float(skm.roc_auc_score(y, proba))
        out["pr_auc"] = float(skm.average_precision_score(y, proba))
    for segment in segments:
        column = np.concatenate(values[segment])
        for value in sorted(pd.unique(column), key=str):
            mask = column == value
            if mask.sum() >= min_segment_rows and y[mask].nunique() == 2:
                auc = skm.roc_auc_score(y[mask], proba[mask])
                out[segment_key("roc_auc", segment, value)] = float(auc)
                out[segment_key("rows", segment, value)] = float(mask.sum())
    return out


@dataclass(frozen=True)
class Trial:
    """One fitted candidate, scored on validation with its own F1-best threshold."""

    number: int
    family: str
    params: dict[str, Any]
    validation_metrics: dict[str, float]
    threshold: float


@dataclass(frozen=True)
class TrainingOutcome:
    """The refitted best model, its threshold, every trial and the holdout metrics."""

    model: Any
    family: str
    params: dict[str, Any]
    threshold: float
    trials: list[Trial]
    holdout_metrics: dict[str, float]
    validation_metrics: dict[str, float]
    feature_names: list[str]
    #: rows of train + validation there were, and how many the search and the refit used
    sampling: dict[str, int | float]


def sample_positions(n: int, cap: int | None, seed: tuple[int, ...]) -> np.ndarray:
    """Sorted positions of a seeded sample of ``cap`` of ``n`` rows; all ``n`` when
    ``cap`` is None or not smaller."""
    if cap is None or cap >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


@dataclass(frozen=True)
class Parts:
    """What training uses of a split: the search's train and validation rows, the
    refit's rows, and the holdout, which ``holdout()`` yields anew in chunks each call."""

    search_train: pd.DataFrame
    search_validation: pd.DataFrame
    refit: pd.DataFrame
    holdout: Callable[[], Iterable[pd.DataFrame]]
    holdout_rows: int
    cutoffs: dict[str, str]
    #: rows of train + validation there were, and how many the search and the refit used
    sampling: dict[str, int | float]


def sample_plan(
    n_train: int, n_validation: int, config: TrainingConfig
) -> tuple[np.ndarray, np.ndarray, dict[str, int | float]]:
    """Positions in train + validation (train first) of the refit's and the search's
    rows, and their counts: the refit a seeded sample of ``refit_rows`` of them, the
    search a seeded sample of ``search_rows`` of the refit's."""
    available = n_train + n_validation
    refit = sample_positions(available, config.refit_rows, (config.seed, 1))
    search = refit[sample_positions(len(refit), config.search_rows, (config.seed, 2))]
    counts = {
        "rows_available": available,
        "refit_rows": len(refit),
        "refit_fraction": len(refit) / available,
        "search_rows": len(search),
        "search_fraction": len(search) / available,
    }
    return refit, search, counts


def check_search_sample(name: str, classes: int, rows: int, config: TrainingConfig) -> None:
    if classes < 2:
        raise ValueError(
            f"the search sample's {name} rows ({rows} of search_rows={config.search_rows}) "
            "hold one label class; raise search_rows"
        )


def sampled_parts(split: Split, config: TrainingConfig, label: str) -> Parts:
    """:class:`Parts` of an in-memory split (see :func:`sample_plan`). Without caps:
    train, validation, and both together, as they are."""
    n_train, n_val = len(split.train), len(split.validation)
    both = pd.concat([split.train, split.validation], ignore_index=True)
    refit, search, counts = sample_plan(n_train, n_val, config)
    parts = partial(
        Parts,
        holdout=lambda: [split.holdout],
        holdout_rows=len(split.holdout),
        cutoffs=split.cutoffs,
        sampling=counts,
    )
    if len(search) == n_train + n_val:
        return parts(split.train, split.validation, both)
    train, validation = both.iloc[search[search < n_train]], both.iloc[search[search >= n_train]]
    for name, part in (("train", train), ("validation", validation)):
        check_search_sample(name, part[label].nunique(), len(part), config)
    refit_rows = both if len(refit) == n_train + n_val else both.iloc[refit]
    return parts(
        train.reset_index(drop=True),
        validation.reset_index(drop=True),
        refit_rows.reset_index(drop=True),
    )


def train_and_evaluate(
    split: Split,
    config: TrainingConfig,
    *,
    label: str,
    exclude: Sequence[str],
    on_trial: Callable[[Trial], None] | None = None,
) -> TrainingOutcome:
    """Seeded random search on validation ROC AUC, refit on train+validation, holdout score.

    With ``search_rows`` / ``refit_rows`` the search and the refit use seeded samples
    (:func:`sampled_parts`); the holdout is always scored whole.

    Trial ``i`` uses ``config.families[i % len(families)]``; parameters are drawn in trial
    order from ``default_rng(config.seed)``; the best trial wins, ties to the earlier one.
    """
    return train_on_parts(
        sampled_parts(split, config, label), config, label=label, exclude=exclude, on_trial=on_trial
    )


def train_on_parts(
    parts: Parts,
    config: TrainingConfig,
    *,
    label: str,
    exclude: Sequence[str],
    on_trial: Callable[[Trial], None] | None = None,
) -> TrainingOutcome:
    """:func:`train_and_evaluate` on :class:`Parts`: the holdout scored chunk by chunk."""
    inputs = partial(model_inputs, label=label, exclude=exclude, drop_features=config.drop_features)
    score = partial(evaluate, label=label, segments=config.segments, exclude=exclude)
    score = partial(score, min_segment_rows=config.min_segment_rows)
    search_train, search_validation, refit = (
        parts.search_train,
        parts.search_validation,
        parts.refit,
    )
    X_train, y_train = inputs(search_train)
    y_val = search_validation[label].astype("int64").to_numpy()
    rng = np.random.default_rng(config.seed)
    trials: list[Trial] = []
    best: Trial | None = None
    for number in range(config.trials):
        family = config.families[number % len(config.families)]
        params = sample_params(family, rng)
        model = build_model(family, params, X_train, config.seed).fit(X_train, y_train)
        threshold = choose_threshold(y_val, model.predict_proba(search_validation)[:, 1])
        metrics = score(model, search_validation, threshold=threshold)
        trial = Trial(number, family, params, metrics, threshold)
        trials.append(trial)
        if on_trial is not None:
            on_trial(trial)
        if best is None or metrics[PRIMARY_METRIC] > best.validation_metrics[PRIMARY_METRIC]:
            best = trial
    assert best is not None  # config.trials >= 1
    # The refit has seen the validation rows, so its threshold is the one the best trial's
    # model chose on validation data it had not been trained on.
    X_all, y_all = inputs(refit)
    final = build_model(best.family, best.params, X_all, config.seed).fit(X_all, y_all)
    return TrainingOutcome(
        model=final,
        family=best.family,
        params=best.params,
        threshold=best.threshold,
        trials=trials,
        holdout_metrics=evaluate_chunks(
            final,
            parts.holdout(),
            label=label,
            threshold=best.threshold,
            segments=config.segments,
            min_segment_rows=config.min_segment_rows,
            exclude=exclude,
        ),
        validation_metrics=best.validation_metrics,
        feature_names=list(X_all.columns),
        sampling=parts.sampling,
    )
