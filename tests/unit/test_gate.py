"""The promotion gate's decision logic."""

from __future__ import annotations

import pytest

from closedloop.core.gate import GatePolicy, decide

POLICY = GatePolicy(
    min_improvement=0.01, floors={"roc_auc": 0.7, "pr_auc": 0.3}, max_segment_regression=0.05
)
GOOD = {"roc_auc": 0.80, "pr_auc": 0.55, "roc_auc.hotel.H01": 0.79}


def test_first_model_is_judged_against_the_floors_only():
    decision = decide(GOOD, None, POLICY)
    assert decision.blessed and decision.first_model
    assert any("first model" in r for r in decision.reasons)


@pytest.mark.parametrize(
    ("candidate", "fragment"),
    [
        pytest.param(
            {**GOOD, "roc_auc": 0.65}, "roc_auc 0.6500 is below the floor", id="auc-floor"
        ),
        pytest.param({**GOOD, "pr_auc": 0.1}, "pr_auc 0.1000 is below the floor", id="pr-floor"),
        pytest.param({"roc_auc": 0.8}, "pr_auc n/a is below the floor", id="metric-missing"),
    ],
)
def test_floors_reject_even_the_first_model(candidate, fragment):
    decision = decide(candidate, None, POLICY)
    assert not decision.blessed
    assert any(fragment in r for r in decision.reasons), decision.reasons


@pytest.mark.parametrize(
    ("candidate_auc", "blessed"),
    [
        pytest.param(0.815, True, id="beats-by-margin"),
        pytest.param(0.809, False, id="within-margin"),
        pytest.param(0.800, False, id="equal"),
        pytest.param(0.790, False, id="worse"),
    ],
)
def test_candidate_must_beat_the_champion_by_the_margin(candidate_auc, blessed):
    champion = {**GOOD, "roc_auc": 0.80}
    decision = decide({**GOOD, "roc_auc": candidate_auc}, champion, POLICY, champion_version="3")
    assert decision.blessed is blessed
    if not blessed:
        assert any("does not beat champion v3" in r for r in decision.reasons)


def test_a_segment_regression_beyond_tolerance_blocks_promotion():
    champion = {**GOOD, "roc_auc": 0.70, "roc_auc.hotel.H01": 0.85}
    candidate = {**GOOD, "roc_auc": 0.80, "roc_auc.hotel.H01": 0.75}
    decision = decide(candidate, champion, POLICY, champion_version="1")
    assert not decision.blessed
    assert any("roc_auc.hotel.H01 regresses by 0.1000" in r for r in decision.reasons)


def test_a_segment_the_candidate_cannot_score_is_not_a_regression():
    champion = {**GOOD, "roc_auc": 0.70, "roc_auc.hotel.H09": 0.9}
    assert decide(GOOD, champion, POLICY, champion_version="1").blessed
