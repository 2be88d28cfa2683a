"""The statistics and the verdict of a shadow report, the gate's shadow settings, and the
serving side's bounded shadow queue (no services)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from closedloop.core.gate import GateDecision, GatePolicy
from closedloop.core.registry import LoadedModel
from closedloop.core.shadow_stats import (
    ShadowThresholds,
    compare_labelled,
    compare_scores,
    decision_agreement,
    judge,
    segment_differences,
)

RNG = np.random.default_rng(3)


def test_agreement_counts_the_cells_of_the_cross_table():
    agreement, cells = decision_agreement([1, 1, 0, 0, 1], [1, 0, 0, 1, 1])
    assert agreement == pytest.approx(3 / 5)
    assert cells == {
        "both_positive": 2, "both_negative": 1,
        "candidate_only_positive": 1, "baseline_only_positive": 1,
    }  # fmt: skip
    assert decision_agreement([], [])[0] is None


def test_identical_scores_have_no_distance_and_shifted_ones_a_large_one():
    scores = RNG.uniform(size=500)
    same = compare_scores(scores, scores.copy())
    assert same["identical"] and same["ks_statistic"] == 0.0 and same["ks_pvalue"] == 1.0
    assert same["max_abs_difference"] == 0.0
    shifted = compare_scores(scores, np.clip(scores + 0.3, 0, 1))
    assert not shifted["identical"] and shifted["ks_statistic"] > 0.25
    assert shifted["ks_pvalue"] < 1e-6
    assert shifted["candidate"]["mean"] > shifted["baseline"]["mean"]


def _frame(n: int = 400) -> pd.DataFrame:
    base = RNG.uniform(size=n)
    cand = base.copy()
    hotel = np.where(np.arange(n) % 2 == 0, "H01", "H02")
    cand[hotel == "H02"] = 1 - cand[hotel == "H02"]  # the candidate differs on H02 only
    return pd.DataFrame(
        {
            "hotel": hotel,
            "baseline_score": base,
            "candidate_score": cand,
            "baseline_decision": (base >= 0.5).astype(int),
            "candidate_decision": (cand >= 0.5).astype(int),
        }
    )


def test_segments_show_where_the_versions_differ():
    out = segment_differences(_frame(), ["hotel", "market_segment"])
    by = {(s["segment"], s.get("value")): s for s in out}
    assert by[("hotel", "H01")]["agreement"] == 1.0
    assert by[("hotel", "H01")]["mean_score_difference"] == 0.0
    assert by[("hotel", "H02")]["agreement"] < 0.1
    assert by[("market_segment", None)]["skipped"] == "not among the logged features"


def test_labelled_comparison_is_the_ab_bootstrap_of_the_difference():
    y = RNG.integers(0, 2, 600)
    good = y * 0.3 + RNG.uniform(0, 0.7, 600)
    same = compare_labelled(y, good, good, metric="roc_auc", min_labelled=100)
    assert same["difference"] == 0.0 and same["ci_low"] < 0 < same["ci_high"]
    assert same["verdict"] == "inconclusive" and same["baseline"] == same["candidate"]
    worse = compare_labelled(y, good, RNG.uniform(size=600), metric="roc_auc", min_labelled=100)
    assert worse["verdict"] == "baseline_better" and worse["ci_high"] < 0
    assert worse["baseline"] > 0.8 and 0.4 < worse["candidate"] < 0.6
    few = compare_labelled(y[:50], good[:50], good[:50], metric="roc_auc", min_labelled=100)
    assert few["verdict"] == "insufficient_data" and few["difference"] is None


def test_judge_names_each_failed_threshold_and_passes_the_identical_replay():
    t = ShadowThresholds(min_rows=100, min_agreement=0.9, max_ks=0.1)
    frame = _frame()
    scores = compare_scores(frame["baseline_score"], frame["candidate_score"])
    agreement, _ = decision_agreement(frame["baseline_decision"], frame["candidate_decision"])
    segments = segment_differences(frame, ["hotel"])
    passed, reasons = judge(len(frame), agreement, scores, segments, None, t)
    assert not passed
    assert any(r.startswith("decisions agree on") and "below 90.0%" in r for r in reasons)
    assert any(r.startswith("segment hotel=H02") for r in reasons)
    assert not any("hotel=H01" in r for r in reasons)

    same = frame.assign(candidate_score=frame["baseline_score"],
                        candidate_decision=frame["baseline_decision"])  # fmt: skip
    ok, why = judge(
        len(same),
        1.0,
        compare_scores(same["baseline_score"], same["candidate_score"]),
        segment_differences(same, ["hotel"]),
        None,
        t,
    )
    assert ok and "decisions agree on 100.0% of 400 rows" in why[1]

    few, why = judge(20, 1.0, {}, [], None, t)
    assert not few and "fewer than the 100 needed" in why[0]

    labelled = {"verdict": "baseline_better", "metric": "roc_auc", "difference": -0.2,
                "labelled": 300, "confidence": 0.95, "ci_low": -0.25, "ci_high": -0.15}  # fmt: skip
    worse, why = judge(len(same), 1.0, {"ks_statistic": 0.0, "ks_pvalue": 1.0}, [], labelled, t)
    assert not worse and "entirely below zero" in why[0]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"shadow": "sometimes"}, "shadow must be one of off, required"),
        ({"shadow_days": 0}, "shadow_days and shadow_min_rows must be >= 1"),
        ({"shadow_min_agreement": 1.5}, "must be in [0, 1]"),
        ({"shadow_max_ks": -0.1}, "must be in [0, 1]"),
    ],
)
def test_the_gate_policy_checks_its_shadow_settings(fields, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        GatePolicy(**fields)


def test_shadow_is_off_unless_required():
    assert not GatePolicy().needs_shadow
    policy = GatePolicy(shadow="required", shadow_min_agreement=0.95, shadow_max_ks=0.1)
    assert policy.needs_shadow
    assert ShadowThresholds.of(policy) == ShadowThresholds(100, 0.95, 0.1)


def test_a_first_model_has_no_traffic_to_replay_and_is_judged_as_before():
    from closedloop.core.shadow import gate_with_shadow

    first = GateDecision(True, ["roc_auc 0.8 >= floor"], {"roc_auc": 0.8}, None, None)
    policy = GatePolicy(shadow="required")
    out = gate_with_shadow(None, first, "1", policy, end=datetime.now(UTC), dag_run_id="r")  # type: ignore[arg-type]
    assert out.blessed and out.reasons[-1].startswith("shadow: first model")


# -- the serving side: the bounded queue ------------------------------------------------
@dataclass
class _Deployment:
    challenger: LoadedModel | None


def _model() -> LoadedModel:
    from closedloop.core.modeling import build_model

    x = pd.DataFrame({"lead_time": RNG.uniform(0, 100, 200), "hotel": RNG.choice(["a", "b"], 200)})
    y = (x["lead_time"] > 50).astype(int)
    pipeline = build_model("logistic_regression", {"C": 1.0}, x, 0).fit(x, y)
    return LoadedModel("m", "2", pipeline, 0.5, ["hotel", "lead_time"], "challenger")


def _flush(log, n: int, start: int = 0, arm: str = "champion"):
    """A flush of ``n`` served records in the prediction log, as the server writes it."""
    from closedloop.core.prediction_log import PredictionLog

    now = datetime.now(UTC)
    records = pd.DataFrame(
        {
            "prediction_id": [f"p{i}" for i in range(start, start + n)],
            "source": "online", "predicted_at": now, "model_name": "m", "model_version": "1",
            "arm": arm, "score": 0.5, "decision": 1,
            "booking_id": [f"B{i}" for i in range(start, start + n)],
            "hotel": (["a", "b"] * n)[:n], "lead_time": [float(10 * i) for i in range(n)],
        }
    )  # fmt: skip
    path = PredictionLog(log).append_online(records, now.strftime("%Y-%m-%d"))
    return [path], n


def _shadow(model: LoadedModel, log, load=None, **kwargs):
    """The server's side and the worker's loop joined by a real pipe, the worker in a
    thread here (``closedloop serve --shadow`` spawns it; tests/integration/test_shadow.py)."""
    import multiprocessing
    import threading

    from prometheus_client import CollectorRegistry

    from closedloop.core.prediction_log import PredictionLog
    from closedloop.serving.shadow import ShadowBatch, ShadowScorer, serve_batches

    ours, theirs = multiprocessing.Pipe()
    batch = ShadowBatch(load or (lambda version: model.model), PredictionLog(log),
                        keys=["booking_id"], name="m")  # fmt: skip
    worker = threading.Thread(target=serve_batches, args=(theirs, batch), daemon=True)
    worker.start()
    registry = CollectorRegistry()
    scorer = ShadowScorer(lambda: _Deployment(model), ours, registry=registry, **kwargs)
    return scorer, registry, worker


def _shadow_rows(log) -> pd.DataFrame:
    from closedloop.core.prediction_log import PredictionLog

    now = datetime.now(UTC)
    read = PredictionLog(log).read(now - timedelta(days=1), now + timedelta(days=1))
    return read[read["arm"] == "shadow"].set_index("prediction_id")


def test_a_full_shadow_queue_drops_and_counts_instead_of_waiting(tmp_path):
    model = _model()
    scorer, registry, worker = _shadow(model, tmp_path, max_pending=5, interval=3600)
    scorer.written(*_flush(tmp_path, 4))
    scorer.written(*_flush(tmp_path, 3, start=4))  # 4 + 3 > 5: dropped whole
    scorer.written(*_flush(tmp_path, 1, start=7, arm="challenger"))  # an A/B answer
    dropped = registry.get_sample_value("closedloop_shadow_dropped_total", {"reason": "queue_full"})
    assert dropped == 3 and scorer.pending == 5
    scorer.close()  # hands over what waits; the worker scores it, writes, closes
    worker.join(10)
    assert not worker.is_alive()
    got = _shadow_rows(tmp_path)
    assert sorted(got.index) == [f"p{i}-shadow" for i in range(4)]  # not the A/B answer
    assert set(got["model_version"]) == {"2"} and got["booking_id"].tolist() == [
        "B0",
        "B1",
        "B2",
        "B3",
    ]
    frame = pd.DataFrame({"hotel": ["a", "b", "a", "b"], "lead_time": [0.0, 10.0, 20.0, 30.0]})
    want = model.model.predict_proba(frame)[:, 1]
    assert got.loc[[f"p{i}-shadow" for i in range(4)], "score"].tolist() == want.tolist()
    assert got["decision"].tolist() == [int(s >= 0.5) for s in want]
    counted = registry.get_sample_value(
        "closedloop_shadow_predictions_total", {"model_version": "2"}
    )
    assert counted == 4


def test_a_version_the_worker_cannot_load_is_counted_as_failed(tmp_path):
    model = _model()

    def load(version):
        raise FileNotFoundError(f"no artifacts for v{version}")

    scorer, registry, worker = _shadow(model, tmp_path, load=load, interval=3600)
    scorer.written(*_flush(tmp_path, 3))
    scorer.close()
    worker.join(10)
    failed = registry.get_sample_value("closedloop_shadow_dropped_total", {"reason": "failed"})
    assert failed == 3 and _shadow_rows(tmp_path).empty and not worker.is_alive()
