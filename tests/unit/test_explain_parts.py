"""The parts of ``closedloop explain`` that need no stores: a linear model's
contributions add up to its log-odds, a tree model's are SHAP's (additive, and the exact
Shapley values within sampling error) or none with a reason, and
``GET /explain/{id}`` is a 404 for an unknown id and behind the serving API key."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from closedloop.core.contributions import contributions
from closedloop.core.modeling import build_model

KEY = "k-0123456789abcdef"


@pytest.fixture(scope="module")
def frame() -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(3)
    n = 400
    X = pd.DataFrame(
        {
            "segment": rng.choice(["a", "b", "c"], n),
            "channel": rng.choice(["x", "y"], n),
            "lead": rng.integers(0, 300, n),
            "price": rng.normal(100, 20, n),
        }
    )
    logit = (X["segment"] == "b") * 1.5 - X["lead"] / 150 + (X["channel"] == "y") * 0.7
    y = pd.Series((rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int))
    return X, y


def test_linear_contributions_add_up_to_the_log_odds_per_source_feature(frame):
    X, y = frame
    model = build_model("logistic_regression", {"C": 1.0}, X, seed=0).fit(X, y)
    for i in range(25):
        row = X.iloc[[i]]
        got = contributions(model, row)
        assert got.method == "linear" and got.message is None
        assert sorted(got.by_feature) == sorted(X.columns)  # one-hot columns summed back
        total = got.intercept + sum(got.by_feature.values())
        assert abs(total - model.decision_function(row)[0]) < 1e-6
        assert got.log_odds == pytest.approx(model.decision_function(row)[0], abs=1e-12)
    # a category's share is its own coefficient: changing it moves only that feature
    row = X.iloc[[0]].copy()
    other = row.assign(segment="c" if row["segment"].iloc[0] != "c" else "a")
    a, b = contributions(model, row), contributions(model, other)
    for name in ("channel", "lead", "price"):
        assert a.by_feature[name] == b.by_feature[name], name
    assert a.by_feature["segment"] != b.by_feature["segment"]
    # ... by that category's coefficient: the one-hot column of each value
    prep, lr = model.named_steps["prep"], model.named_steps["model"]
    names = list(prep.get_feature_names_out())
    coef = dict(zip(names, lr.coef_[0], strict=True))
    for row_, got in ((row, a), (other, b)):
        column = f"cat__segment_{row_['segment'].iloc[0]}"
        assert got.by_feature["segment"] == pytest.approx(coef[column], abs=1e-12)


def test_an_unseen_category_contributes_nothing_of_its_own(frame):
    X, y = frame
    model = build_model("logistic_regression", {"C": 1.0}, X, seed=0).fit(X, y)
    got = contributions(model, X.iloc[[0]].assign(segment="new"))
    assert got.by_feature["segment"] == 0.0
    total = got.intercept + sum(got.by_feature.values())
    assert abs(total - got.log_odds) < 1e-6


def _exact_shapley(model, row: pd.DataFrame, background: pd.DataFrame) -> dict[str, float]:
    """The interventional Shapley values of ``row``'s log-odds against ``background``,
    by evaluating every coalition (one model call for all): the reference."""
    from itertools import combinations
    from math import factorial

    names, m = list(row.columns), len(row.columns)
    coalitions = [s for k in range(m + 1) for s in combinations(names, k)]
    n = len(background)
    mixed = pd.DataFrame(
        {
            c: np.where(
                np.repeat([c in coalition for coalition in coalitions], n),
                row[c].iloc[0],
                np.tile(background[c].to_numpy(), len(coalitions)),
            )
            for c in names
        }
    ).astype(background.dtypes.to_dict())
    means = model.decision_function(mixed).reshape(len(coalitions), n).mean(axis=1)
    values = dict(zip(coalitions, means, strict=True))
    phi = dict.fromkeys(names, 0.0)
    for coalition, v in values.items():
        if len(coalition) == m:
            continue
        weight = factorial(len(coalition)) * factorial(m - len(coalition) - 1) / factorial(m)
        for name in names:
            if name not in coalition:
                joined = tuple(c for c in names if c in coalition or c == name)
                phi[name] += weight * (values[joined] - v)
    return phi


def test_a_tree_models_contributions_add_up_and_are_the_exact_shapley_values(frame):
    X, y = frame
    params = {"learning_rate": 0.3, "max_leaf_nodes": 15, "max_iter": 30}
    model = build_model("hist_gradient_boosting", params, X, seed=0).fit(X, y)
    background = X.iloc[100:300]
    sample = background.sample(100, random_state=0)  # the rows contributions() draws
    for i in range(5):
        row = X.iloc[[i]]
        got = contributions(model, row, background)
        assert got.method == "shap-exact" and got.message is None
        assert sorted(got.by_feature) == sorted(X.columns)
        assert got.log_odds == pytest.approx(model.decision_function(row)[0], abs=1e-12)
        assert abs(got.intercept + sum(got.by_feature.values()) - got.log_odds) < 1e-6
        assert got.intercept == pytest.approx(model.decision_function(sample).mean(), abs=1e-9)
        exact = _exact_shapley(model, row, sample)
        for name, value in exact.items():
            assert got.by_feature[name] == pytest.approx(value, abs=1e-9), name
    # the strongest signal of the data (segment b: +1.5) moves its rows the most
    rows = X.iloc[:40]
    shares = [contributions(model, rows.iloc[[i]], background).by_feature for i in range(40)]
    mean = {c: np.mean([abs(s[c]) for s in shares]) for c in X.columns}
    assert max(mean, key=mean.get) in ("segment", "lead"), mean
    assert mean["price"] < mean["segment"]  # price carries no signal


def test_beyond_ten_features_the_sampled_shapley_values_add_up_and_stay_near_the_exact(frame):
    X, y = frame
    rng = np.random.default_rng(5)
    X = X.assign(**{f"noise{k}": rng.normal(0, 1, len(X)) for k in range(7)})  # 11 features
    params = {"learning_rate": 0.3, "max_leaf_nodes": 15, "max_iter": 30}
    model = build_model("hist_gradient_boosting", params, X, seed=0).fit(X, y)
    background = X.iloc[100:300]
    sample = background.sample(100, random_state=0)
    for i in range(2):
        row = X.iloc[[i]]
        got = contributions(model, row, background)
        assert got.method == "shap-permutation"
        assert abs(got.intercept + sum(got.by_feature.values()) - got.log_odds) < 1e-6
        exact = _exact_shapley(model, row, sample)
        largest = max(abs(v) for v in exact.values())
        worst = max(abs(got.by_feature[name] - v) for name, v in exact.items())
        assert worst < 0.1 * largest, (worst, largest)  # measured: 5 % (docs/serving.md)


def test_a_tree_model_without_its_training_rows_gets_no_contributions_and_a_reason(frame):
    X, y = frame
    params = {"learning_rate": 0.1, "max_leaf_nodes": 7, "max_iter": 10}
    model = build_model("hist_gradient_boosting", params, X, seed=0).fit(X, y)
    got = contributions(model, X.iloc[[0]])
    assert got.method is None and got.by_feature == {} and got.intercept is None
    assert "HistGradientBoostingClassifier" in got.message and "training set" in got.message


@pytest.fixture
def settings(tmp_path, monkeypatch):
    from closedloop.core.settings import load_settings

    monkeypatch.setenv("CLOSEDLOOP_HOME", str(tmp_path))
    return load_settings()


def test_an_unknown_id_is_a_404_naming_it_and_the_cli_exits_2(settings):
    from closedloop.cli import main
    from closedloop.serving.app import ServeConfig, create_app

    # without `with`, no lifespan: the route needs no loaded model
    client = TestClient(create_app(settings, ServeConfig()))
    answer = client.get("/explain/no-such-id")
    assert answer.status_code == 404
    assert "'no-such-id'" in answer.json()["detail"][0]
    result = CliRunner().invoke(main, ["explain", "no-such-id"])
    assert result.exit_code == 2, result.output
    assert "no prediction 'no-such-id'" in result.output


def test_explain_wants_the_serving_api_key(settings):
    from closedloop.serving.app import ServeConfig, create_app

    client = TestClient(create_app(settings, ServeConfig(api_key=KEY)))
    assert client.get("/explain/no-such-id").status_code == 401
    answer = client.get("/explain/no-such-id", headers={"X-API-Key": KEY})
    assert answer.status_code == 404


def test_the_views_page_escapes_what_the_stores_hold_and_the_text_says_it_all():
    from closedloop.core.contributions import Contributions
    from closedloop.core.explain import Explanation, FeatureValue, RunRef
    from closedloop.core.explain_sources import FeatureWrite
    from closedloop.ui import render

    bad = "<script>x</script>"
    found = Explanation(
        prediction_id=bad, usecase="u", source="online", predicted_at="2026-01-01T00:00:00+00:00",
        score=0.25, decision=0, entity={"id": bad},
        model={"name": "m", "version": "2", "arm": "champion", "threshold": 0.5,
               "url": "http://mlflow/#/models/m/versions/2", "champion_at_prediction": "2"},
        features=[FeatureValue("n_prev", 0, "customer_aggregates", 0, True, -0.5),
                  FeatureValue("price", 9.5, "event", None, False, 0.25)],
        contributions=Contributions("linear", -0.85, -1.1, {"n_prev": -0.5, "price": 0.25}),
        training={"run_id": "r1", "url": "http://mlflow/r1", "family": "logistic_regression",
                  "data_digest": "d" * 64, "window_start": "a", "window_end": "b",
                  "gx_verdict": "passed", "feature_service": "m_v1", "feature_views": ["v"],
                  "git_commit": "c", "params": {"C": "1.0"}},
        dag_runs=[RunRef("training", "u_training", "t/1", "http://airflow/t", "initial")],
        feature_writes=[FeatureWrite("customer_aggregates", "customer_id", bad, None, None,
                                     "u_features", None, note="no history")],
        ground_truth={"known": False, "label": None, "known_at": None, "note": "not yet"},
    )  # fmt: skip
    text = found.text()
    expected_lines = [
        "score 0.250000", "m v2 as 'champion'", "training run r1", "t/1",
        "intercept -0.850000", "n_prev", "default", "no history", "not yet",
    ]  # fmt: skip
    for expected in expected_lines:
        assert expected in text, expected
    page = render.page("explain.html", prefix="/closedloop", usecase="u", e=found, text=text)
    assert bad not in page and "&lt;script&gt;" in page
    assert 'href="http://airflow/t"' in page and 'href="http://mlflow/r1"' in page
