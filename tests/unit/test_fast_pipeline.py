"""FastPipeline: the pipelines training registers, scored without the pandas round trip,
must give the pipeline's own probabilities to the bit — online from Python values, in
batch from Arrow and numpy columns (categorical blocks computed per distinct row)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from closedloop.core.fast_pipeline import FastPipeline
from closedloop.core.modeling import build_model

pytestmark = pytest.mark.filterwarnings("ignore:X does not have valid feature names")
FAMILIES = ["logistic_regression", "hist_gradient_boosting"]


def _fitted(family: str, n: int = 400, seed: int = 1) -> tuple[object, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "hotel": rng.choice(["H01", "H02", "H03"], n),
            "segment": rng.choice(["Direct", "Groups", "Online TA"], n),
            "lead_time": rng.integers(0, 300, n),
            "adr": rng.normal(100, 20, n),
        }
    )
    noise = rng.normal(0, 0.3, n)
    label = (frame["lead_time"] / 300 + (frame["hotel"] == "H02") + noise) > 0.8
    params = {"C": 1.0} if family == "logistic_regression" else {"max_iter": 20}
    return build_model(family, params, frame, seed=0).fit(frame, label.astype(int)), frame


@pytest.mark.parametrize("family", FAMILIES)
def test_the_online_path_gives_the_pipelines_own_probabilities(family):
    pipeline, frame = _fitted(family)
    frame.loc[0, "segment"] = "Complementary"  # unseen: scores as the pipeline scores it
    columns = {c: frame[c].tolist() for c in frame.columns}
    got = FastPipeline(pipeline).predict_proba(columns, list(range(len(frame))))
    np.testing.assert_array_equal(got, pipeline.predict_proba(frame))
    np.testing.assert_array_equal(
        FastPipeline(pipeline).predict_proba(columns, [7]), pipeline.predict_proba(frame.iloc[[7]])
    )


def _scoring_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "hotel": rng.choice(["H01", "H02", "H03", "H09"], n),  # H09: unseen
            "segment": rng.choice(["Direct", "Groups", "Online TA"], n).astype(object),
            "lead_time": rng.integers(0, 300, n),
            "adr": rng.normal(100, 20, n),
        }
    )
    frame.loc[rng.random(n) < 0.05, "segment"] = None  # a missing category
    return frame


def _as_arrow(frame: pd.DataFrame, how: str) -> dict[str, object]:
    if how == "numpy":
        return {c: frame[c].to_numpy() for c in frame.columns}
    columns: dict[str, object] = {}
    for c in frame.columns:
        array = pa.array(frame[c].to_numpy(), from_pandas=True)
        if how == "dictionary" and pa.types.is_string(array.type):
            array = array.dictionary_encode()
        if how == "chunked":  # two chunks; string chunks with dictionaries of their own
            half = len(array) // 2
            parts = [array[:half], array[half:]]
            if pa.types.is_string(array.type):
                parts = [p.dictionary_encode() for p in parts]
            array = pa.chunked_array(parts)
        columns[c] = array
    return columns


@pytest.mark.parametrize("how", ["arrow", "dictionary", "chunked", "numpy"])
@pytest.mark.parametrize("family", FAMILIES)
def test_the_batch_path_gives_the_pipelines_own_probabilities(family, how):
    pipeline, _ = _fitted(family)
    frame = _scoring_frame(5000, seed=2)
    got = FastPipeline(pipeline).predict_proba_columns(_as_arrow(frame, how))
    np.testing.assert_array_equal(got, pipeline.predict_proba(frame))


def test_many_distinct_combinations_take_the_sorting_and_the_row_paths():
    """Few rows, many possible keys: the distinct rows come from np.unique; with the
    key space beyond 2**62 they come from the stacked codes."""
    rng = np.random.default_rng(3)
    n = 600
    wide = pd.DataFrame(
        {f"c{i}": [f"v{rng.integers(0, 10**6)}" for _ in range(n)] for i in range(7)}
    )
    wide["x"] = rng.normal(size=n)
    label = (wide["x"] + rng.normal(0, 1, n)) > 0
    for columns in (["c0", "c1", "x"], [*(f"c{i}" for i in range(7)), "x"]):
        X = wide[columns]
        pipeline = build_model("logistic_regression", {"C": 1.0}, X, seed=0).fit(X, label)
        got = FastPipeline(pipeline).predict_proba_columns(_as_arrow(X, "arrow"))
        np.testing.assert_array_equal(got, pipeline.predict_proba(X))


def test_other_model_shapes_are_not_taken_by_the_fast_path():
    from sklearn.linear_model import LogisticRegression

    with pytest.raises(TypeError, match="not a Pipeline"):
        FastPipeline(LogisticRegression())


@pytest.mark.parametrize("family", FAMILIES)
def test_one_booking_at_a_time_from_the_cache_equals_the_pipeline(family, monkeypatch):
    """Online calls remember the encoder's answer per distinct row; answers from the
    cache, across its restarts, are the pipeline's."""
    pipeline, _ = _fitted(family)
    frame = _scoring_frame(300, seed=4)
    fast = FastPipeline(pipeline)
    monkeypatch.setattr(FastPipeline, "CACHE_ROWS", 5)  # restarts many times
    columns = {c: frame[c].tolist() for c in frame.columns}
    # (the pipeline on the same rows: a product of one row and of many may differ in the
    # last bit, BLAS sums them in another order)
    for i in [*range(300), *range(0, 300, 7)]:
        want = pipeline.predict_proba(frame.iloc[[i]])
        np.testing.assert_array_equal(fast.predict_proba(columns, [i]), want)
    rows = [3, 3, 250, 9]
    want = pipeline.predict_proba(frame.iloc[rows])
    np.testing.assert_array_equal(fast.predict_proba(columns, rows), want)
    assert all(len(cache) <= 5 for cache in fast._caches)


def test_remembered_categories_answer_as_the_pipeline_does():
    """The declared categories' combinations are encoded ahead, in one call; answers
    from them are the pipeline's, and a value outside them is still encoded."""
    pipeline, _ = _fitted("logistic_regression")
    fast = FastPipeline(pipeline)
    declared = {"hotel": ["H01", "H02", "H03"], "segment": ["Direct", "Groups", "Online TA"]}
    assert fast.remember(declared) == 9
    assert fast.remember({"hotel": ["H01"]}) == 0  # a block with an undeclared column
    frame = _scoring_frame(200, seed=5)  # H09 and missing segments: not remembered
    columns = {c: frame[c].tolist() for c in frame.columns}
    for i in range(200):
        want = pipeline.predict_proba(frame.iloc[[i]])
        np.testing.assert_array_equal(fast.predict_proba(columns, [i]), want)
