"""Training is split by known-at time, robust to new data shapes, and deterministic."""

from __future__ import annotations

import re
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from closedloop.core.derive import event_table
from closedloop.core.modeling import (
    Split,
    TrainingConfig,
    build_model,
    choose_threshold,
    evaluate,
    model_inputs,
    sampled_parts,
    split_by_time,
    train_and_evaluate,
)
from closedloop.core.settings import PACKAGE_USECASES
from closedloop.core.usecase import UseCase
from closedloop.usecases.hotel.generator import generate_day

START = date(2026, 1, 5)
DAYS = 28
LABEL = "is_canceled"
EXCLUDE = ("booking_id", "customer_id")
# MLflow's rule for metric names (mlflow.utils.validation)
MLFLOW_NAME = re.compile(r"^[/\w.\- :]*$")
SMALL_HGB = {"learning_rate": 0.1, "max_leaf_nodes": 15, "max_iter": 30}

HOTEL = UseCase.from_yaml(PACKAGE_USECASES / "hotel_bookings.yaml")
SPLIT = {"label": "is_canceled", "order_by": ("event_timestamp", "booking_id")}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # modeling imports scikit-learn lazily: load its OpenMP runtime first, or the limit
    # would not apply to it (and two spinning threads on a busy machine are very slow)
    import sklearn.ensemble  # noqa: F401

    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """A training frame: bookings whose outcome was known by the end of the window."""
    days = [generate_day(START + timedelta(d), rows_per_day=150) for d in range(DAYS)]
    df = event_table(pd.concat(days, ignore_index=True), HOTEL)
    df = df.rename(columns={"booking_ts": "event_timestamp"})
    rng = np.random.default_rng(0)  # a stand-in for an aggregate feature
    df["hotel_cancel_rate_30d"] = 0.3 + 0.05 * rng.standard_normal(len(df))
    end = pd.Timestamp(START + timedelta(DAYS), tz="UTC")
    return df[df["arrival_date"] < end].reset_index(drop=True)


@pytest.fixture(scope="module")
def split(frame: pd.DataFrame) -> Split:
    return split_by_time(frame, known_at="arrival_date", validation_days=5, holdout_days=5, **SPLIT)


def _config(**overrides) -> TrainingConfig:
    return TrainingConfig(validation_days=5, holdout_days=5, **overrides)


def test_split_boundaries_follow_known_at_without_overlap(frame, split):
    known_end = pd.Timestamp(START + timedelta(DAYS), tz="UTC")
    holdout_start, validation_start = known_end - timedelta(5), known_end - timedelta(10)
    assert split.cutoffs == {
        "validation_start": validation_start.isoformat(),
        "holdout_start": holdout_start.isoformat(),
        "end": known_end.isoformat(),
    }
    assert (split.train["arrival_date"] < validation_start).all()
    assert split.validation["arrival_date"].between(validation_start, holdout_start).all()
    assert (split.validation["arrival_date"] < holdout_start).all()
    assert (split.holdout["arrival_date"] >= holdout_start).all()
    ids = [set(part["booking_id"]) for part in (split.train, split.validation, split.holdout)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert sum(map(len, ids)) == len(frame)
    ordered = split.train.sort_values(["event_timestamp", "booking_id"], kind="mergesort")
    assert split.train["booking_id"].tolist() == ordered["booking_id"].tolist()


def test_split_bounds_are_exact_to_the_microsecond():
    us = pd.Timedelta(microseconds=1)
    validation_start = pd.Timestamp("2026-01-28", tz="UTC")
    holdout_start = pd.Timestamp("2026-01-31", tz="UTC")
    expected = {
        "a": ("train", validation_start - us),
        "b": ("train", validation_start - timedelta(days=9)),
        "c": ("validation", validation_start),
        "d": ("validation", holdout_start - us),
        "e": ("holdout", holdout_start),
        "f": ("holdout", holdout_start + timedelta(days=1, hours=23)),  # latest: Feb 1
    }
    df = pd.DataFrame(
        {
            "booking_id": list(expected),
            "event_timestamp": validation_start - timedelta(days=20),
            "arrival_date": [when for _, when in expected.values()],
            LABEL: [0, 1] * 3,
        }
    )
    parts = split_by_time(df, known_at="arrival_date", validation_days=3, holdout_days=2, **SPLIT)
    got = {
        row: name
        for name in ("train", "validation", "holdout")
        for row in getattr(parts, name)["booking_id"]
    }
    assert got == {row: name for row, (name, _) in expected.items()}
    assert parts.cutoffs["end"] == "2026-02-02T00:00:00+00:00"


def _with_gap(df: pd.DataFrame) -> pd.DataFrame:
    """Nothing known for 20 days, then one late outcome: validation and holdout starve."""
    late = df.tail(1).assign(arrival_date=df["arrival_date"].max() + timedelta(days=20))
    return pd.concat([df, late], ignore_index=True)


@pytest.mark.parametrize(
    ("make", "validation_days", "message"),
    [
        pytest.param(lambda df: df, 40, r"train split .* 0 rows", id="empty-train"),
        pytest.param(_with_gap, 5, r"validation split .* 0 rows", id="empty-validation"),
        pytest.param(
            lambda df: df.tail(1).assign(arrival_date=df["arrival_date"].max()),
            5,
            r"train split .* 0 rows",
            id="one-row",
        ),
        pytest.param(lambda df: df.assign(is_canceled=0), 5, "1 label class", id="single-class"),
        pytest.param(lambda df: df.iloc[:0], 5, "no rows", id="empty-frame"),
    ],
)
def test_split_rejects_empty_or_single_class_parts(frame, make, validation_days, message):
    with pytest.raises(ValueError, match=message):
        split_by_time(
            make(frame),
            known_at="arrival_date",
            validation_days=validation_days,
            holdout_days=5,
            **SPLIT,
        )


def test_split_rejects_a_single_class_holdout(frame):
    end = frame["arrival_date"].max().floor("D") - timedelta(days=4)
    df = frame.assign(is_canceled=frame["is_canceled"].where(frame["arrival_date"] < end, 0))
    with pytest.raises(ValueError, match=r"holdout split .* 1 label class"):
        split_by_time(df, known_at="arrival_date", validation_days=5, holdout_days=5, **SPLIT)


def test_model_inputs_sorts_features_and_keeps_hotel(frame):
    X, y = model_inputs(frame, label=LABEL, exclude=EXCLUDE, drop_features=("adr",))
    assert list(X.columns) == sorted(X.columns)
    assert "hotel" in X.columns
    assert not {"adr", LABEL, "event_timestamp", "arrival_date", *EXCLUDE} & set(X.columns)
    assert y.tolist() == frame[LABEL].tolist()
    with pytest.raises(ValueError, match="unknown features"):
        model_inputs(frame, label=LABEL, exclude=EXCLUDE, drop_features=("no_such",))


@pytest.mark.parametrize(
    ("family", "params"),
    [
        pytest.param("hist_gradient_boosting", SMALL_HGB, id="hgb"),
        pytest.param("logistic_regression", {"C": 1.0}, id="logreg"),
    ],
)
def test_model_scores_unseen_categories_and_ignores_extra_columns(split, family, params):
    X, y = model_inputs(split.train, label=LABEL, exclude=EXCLUDE)
    model = build_model(family, params, X, seed=1).fit(X, y)
    new = split.holdout.copy()
    new["market_segment"] = "Aviation"  # never seen in training
    new["hotel"] = "H99"
    new["unrelated"] = "x"
    proba = model.predict_proba(new)[:, 1]
    assert proba.shape == (len(new),) and np.isfinite(proba).all()
    # column order and extra columns do not change the scores
    holdout = split.holdout
    shuffled = holdout[list(reversed(holdout.columns))].assign(extra=1.0)
    np.testing.assert_array_equal(
        model.predict_proba(shuffled), model.predict_proba(holdout[list(X.columns)])
    )


def test_training_is_bitwise_deterministic(split):
    config = _config(trials=2, families=("hist_gradient_boosting",))
    seen: list[int] = []
    first = train_and_evaluate(
        split, config, label=LABEL, exclude=EXCLUDE, on_trial=lambda t: seen.append(t.number)
    )
    second = train_and_evaluate(split, config, label=LABEL, exclude=EXCLUDE)
    assert seen == [0, 1]
    assert first.holdout_metrics == second.holdout_metrics
    assert [t.params for t in first.trials] == [t.params for t in second.trials]
    assert first.threshold == second.threshold
    assert 0.6 < first.holdout_metrics["roc_auc"] < 1.0
    assert "hotel" in first.feature_names


def test_dropping_the_strongest_features_lowers_holdout_auc(split):
    def auc(drop: tuple[str, ...]) -> float:
        config = _config(trials=2, families=("logistic_regression",), drop_features=drop)
        outcome = train_and_evaluate(split, config, label=LABEL, exclude=EXCLUDE)
        assert not set(drop) & set(outcome.feature_names)
        return outcome.holdout_metrics["roc_auc"]

    full, weak = auc(()), auc(("lead_time", "deposit_type"))
    assert full > 0.75
    assert weak < full - 0.05


@pytest.mark.parametrize(
    ("y", "proba", "expected"),
    [
        pytest.param([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], 0.3, id="separable"),
        pytest.param([0, 1, 0, 1, 1], [0.1, 0.2, 0.3, 0.4, 0.9], 0.2, id="recall-wins"),
        pytest.param([1, 0, 0, 0, 1], [0.9, 0.8, 0.7, 0.6, 0.1], 0.9, id="precision-wins"),
        pytest.param([1, 0, 0, 1], [0.8, 0.6, 0.4, 0.2], 0.8, id="tie-to-highest"),
        pytest.param([1, 1, 0, 0], [0.5, 0.5, 0.5, 0.1], 0.5, id="equal-scores"),
    ],
)
def test_choose_threshold_maximises_f1(y, proba, expected):
    from sklearn.metrics import f1_score

    threshold = choose_threshold(np.array(y), np.array(proba))
    assert threshold == expected
    best = max(f1_score(y, np.array(proba) >= t) for t in proba)
    assert f1_score(y, np.array(proba) >= threshold) == best


def test_evaluate_reports_valid_mlflow_metric_names_per_segment(split):
    X, y = model_inputs(split.train, label=LABEL, exclude=EXCLUDE)
    model = build_model("logistic_regression", {"C": 1.0}, X, seed=1).fit(X, y)
    metrics = evaluate(
        model,
        split.holdout,
        label=LABEL,
        threshold=0.3,
        segments=("hotel", "market_segment"),
        min_segment_rows=30,
        exclude=EXCLUDE,
    )
    assert {"roc_auc", "pr_auc", "f1", "brier", "positive_rate", "rows"} <= set(metrics)
    assert all(type(v) is float for v in metrics.values())
    assert all(MLFLOW_NAME.match(k) for k in metrics), sorted(metrics)
    assert "roc_auc.market_segment.Offline_TA_TO" in metrics
    counts = split.holdout["hotel"].value_counts()
    expected = {f"roc_auc.hotel.{h}" for h, n in counts.items() if n >= 30}
    assert {k for k in metrics if k.startswith("roc_auc.hotel.")} <= expected
    assert len(expected) >= 3


def test_config_digest_is_stable_and_tracks_params():
    base = TrainingConfig()
    assert base.digest() == TrainingConfig().digest()
    assert base.digest() == TrainingConfig(seed=42).digest()
    as_tuples = TrainingConfig(segments=("hotel",), drop_features=("adr",))
    from_yaml = TrainingConfig(**{"segments": ["hotel"], "drop_features": ["adr"]})
    assert from_yaml == as_tuples and hash(from_yaml) == hash(as_tuples)
    assert len({base.digest(), TrainingConfig(seed=1).digest(), _config().digest()}) == 3
    assert TrainingConfig(drop_features=("adr",)).digest() != base.digest()
    assert base.to_params()["families"] == ["hist_gradient_boosting", "logistic_regression"]
    with pytest.raises(ValueError, match="families"):
        TrainingConfig(families=("random_forest",))


def test_search_and_refit_take_seeded_samples_of_the_stated_sizes(split):
    available = len(split.train) + len(split.validation)
    config = _config(search_rows=400, refit_rows=1000)
    parts = sampled_parts(split, config, LABEL)
    train, validation, refit = parts.search_train, parts.search_validation, parts.refit
    assert parts.sampling == {
        "rows_available": available,
        "refit_rows": 1000,
        "refit_fraction": 1000 / available,
        "search_rows": 400,
        "search_fraction": 400 / available,
    }
    assert (len(train) + len(validation), len(refit)) == (400, 1000)
    ids = {name: part["booking_id"] for name, part in vars(split).items() if name != "cutoffs"}
    # each searched row stays in its part; the search's rows are some of the refit's
    assert train["booking_id"].isin(ids["train"]).all()
    assert validation["booking_id"].isin(ids["validation"]).all()
    assert set(train["booking_id"]) | set(validation["booking_id"]) <= set(refit["booking_id"])
    assert not refit["booking_id"].isin(ids["holdout"]).any()
    # in the set's order, and the same rows for the same seed only
    both = pd.concat([ids["train"], ids["validation"]], ignore_index=True).tolist()
    positions = [both.index(i) for i in refit["booking_id"]]
    assert positions == sorted(positions)
    again = sampled_parts(split, config, LABEL).refit
    other = sampled_parts(split, _config(search_rows=400, refit_rows=1000, seed=7), LABEL).refit
    assert refit["booking_id"].tolist() == again["booking_id"].tolist()
    assert refit["booking_id"].tolist() != other["booking_id"].tolist()


def test_a_capped_search_and_refit_fit_on_their_samples_and_score_the_whole_holdout(split):
    config = _config(trials=2, families=("logistic_regression",), refit_rows=1000, search_rows=400)
    outcome = train_and_evaluate(split, config, label=LABEL, exclude=EXCLUDE)
    assert outcome.holdout_metrics["rows"] == len(split.holdout)
    assert outcome.sampling["refit_rows"] == 1000 and outcome.sampling["search_rows"] == 400
    X, y = model_inputs(sampled_parts(split, config, LABEL).refit, label=LABEL, exclude=EXCLUDE)
    same = build_model(outcome.family, outcome.params, X, config.seed).fit(X, y)
    X_holdout, _ = model_inputs(split.holdout, label=LABEL, exclude=EXCLUDE)
    np.testing.assert_array_equal(
        outcome.model.predict_proba(X_holdout), same.predict_proba(X_holdout)
    )
    uncapped = train_and_evaluate(
        split, _config(trials=2, families=("logistic_regression",)), label=LABEL, exclude=EXCLUDE
    )
    assert uncapped.sampling["refit_fraction"] == uncapped.sampling["search_fraction"] == 1.0
    assert uncapped.holdout_metrics != outcome.holdout_metrics


def test_uncapped_training_is_what_it_was_before_the_caps_existed(split):
    parts = sampled_parts(split, _config(), LABEL)
    assert parts.search_train is split.train and parts.search_validation is split.validation
    assert len(parts.refit) == len(split.train) + len(split.validation)
    # a cap at or above the rows there are changes nothing but the config's digest
    big = _config(search_rows=10**9, refit_rows=10**9)
    assert sampled_parts(split, big, LABEL).search_train is split.train
    assert "search_rows" not in _config().to_params()
    assert big.digest() != _config().digest()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("search_rows", 50, "search_rows must be >= 100"),
        ("refit_rows", 0, "refit_rows must be >= 100"),
        ("refit_rows", "many", "refit_rows must be a whole number of rows"),
        ("search_rows", True, "search_rows must be a whole number of rows"),
    ],
)
def test_sample_caps_are_checked(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainingConfig(**{field: value})
