"""The monitoring decision: thresholds, cooldown, collapse override, deduplication."""

from __future__ import annotations

from datetime import date

import pytest

from closedloop.core.monitoring import DecisionLog, MonitoringPolicy, decide

POLICY = MonitoringPolicy(
    drift_share_threshold=0.3,
    performance_drop=0.05,
    collapse_drop=0.15,
    min_labelled_rows=100,
    cooldown_days=7,
)
DAY = date(2026, 3, 10)
STABLE = {"drift_share": 0.1, "drifted_columns": ["adr"], "prediction_drift": False}
DRIFTED = {
    "drift_share": 0.5,
    "drifted_columns": ["lead_time", "market_segment"],
    "prediction_drift": True,
}


def _decide(drift=STABLE, live=None, rows=0, ref=0.82, last=None, day=DAY):
    return decide(
        model="m",
        day=day,
        drift=drift,
        live_auc=live,
        labelled_rows=rows,
        reference_auc=ref,
        last_retrain=last,
        policy=POLICY,
    )


@pytest.mark.parametrize(
    ("kwargs", "retrain", "fragment"),
    [
        pytest.param({}, False, "no drift", id="stable"),
        pytest.param({"drift": DRIFTED}, True, "data drift: 50%", id="drift"),
        pytest.param(
            {"drift": {**STABLE, "drift_share": 0.3}}, True, "data drift", id="drift-at-threshold"
        ),
        pytest.param({"live": 0.76, "rows": 500}, True, "performance drop", id="perf-drop"),
        pytest.param({"live": 0.78, "rows": 500}, False, "no drift", id="small-drop"),
        pytest.param(
            {"live": 0.5, "rows": 50}, False, "performance not judged", id="too-few-labels"
        ),
    ],
)
def test_thresholds(kwargs, retrain, fragment):
    verdict = _decide(**kwargs)
    assert verdict.retrain is retrain
    assert any(fragment in r for r in verdict.reasons), verdict.reasons


def test_cooldown_blocks_a_second_drift_retrain():
    verdict = _decide(drift=DRIFTED, last=date(2026, 3, 5))
    assert not verdict.retrain
    assert verdict.cooldown_until == "2026-03-12"
    assert _decide(drift=DRIFTED, last=date(2026, 3, 3)).retrain  # cooldown over


def test_collapse_overrides_the_cooldown():
    verdict = _decide(drift=DRIFTED, live=0.6, rows=500, last=date(2026, 3, 9))
    assert verdict.retrain
    assert any("collapsed" in r for r in verdict.reasons)


def test_one_verdict_per_day_and_a_stable_trigger_id(tmp_path):
    log = DecisionLog(f"sqlite:///{tmp_path / 'd.db'}")
    first = _decide(drift=DRIFTED)
    log.record(first)
    log.record(_decide(drift=DRIFTED))  # a retried task
    assert len(log.verdicts("m")) == 1
    assert first.trigger_run_id == _decide(drift=DRIFTED).trigger_run_id == "retrain__m__2026-03-10"
    assert log.last_retrain("m", before=date(2026, 3, 11)) == DAY
    assert log.last_retrain("m", before=DAY) is None
    log.record(_decide(day=date(2026, 3, 11)))
    assert [v.day for v in log.verdicts("m")] == ["2026-03-10", "2026-03-11"]
