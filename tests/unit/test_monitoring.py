"""The monitoring decision: thresholds, cooldown, collapse override, deduplication."""

from __future__ import annotations

from datetime import UTC, date, datetime

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


@pytest.mark.parametrize(
    ("kwargs", "cause"),
    [
        pytest.param({}, None, id="no-retrain"),
        pytest.param({"drift": DRIFTED}, "drift", id="drift"),
        pytest.param({"drift": DRIFTED, "live": 0.7, "rows": 500}, "drift", id="drift-and-drop"),
        pytest.param({"live": 0.76, "rows": 500}, "performance", id="drop-alone"),
        pytest.param({"drift": DRIFTED, "last": date(2026, 3, 5)}, None, id="cooled-down"),
    ],
)
def test_the_cause_of_a_retrain_becomes_the_training_runs_reason(kwargs, cause):
    from closedloop.operators.monitoring import trigger_conf

    verdict = _decide(**kwargs)
    assert verdict.cause == cause
    if verdict.retrain:
        conf = trigger_conf(verdict, datetime(2026, 3, 11, tzinfo=UTC))
        assert conf["reason"] == cause
        assert conf["as_of"] == "2026-03-11T00:00:00+00:00"
        assert conf["verdict"] == "; ".join(verdict.reasons)


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


DEFERRING = MonitoringPolicy(
    drift_share_threshold=0.3, min_labelled_rows=100, cooldown_days=7, drift_min_new_labels=50
)


def test_a_drift_retrain_waits_for_outcomes_of_the_new_regime():
    kwargs = dict(model="m", day=DAY, drift=DRIFTED, live_auc=None, labelled_rows=0)
    kwargs |= dict(reference_auc=None, last_retrain=None, policy=DEFERRING)
    early = decide(**kwargs, drift_since=date(2026, 3, 8), new_labels=49)
    assert not early.retrain
    assert any("deferred" in r and "2026-03-08" in r for r in early.reasons)
    assert early.extra == {"drift_since": "2026-03-08", "new_labels": 49}
    assert decide(**kwargs, drift_since=date(2026, 3, 8), new_labels=50).retrain


def test_a_performance_drop_is_not_deferred():
    verdict = decide(
        model="m",
        day=DAY,
        drift=DRIFTED,
        live_auc=0.70,
        labelled_rows=500,
        reference_auc=0.82,
        last_retrain=None,
        policy=DEFERRING,
        drift_since=DAY,
        new_labels=0,
    )
    assert verdict.retrain


def test_the_drift_streak_starts_on_its_first_drifted_day(tmp_path):
    log = DecisionLog(f"sqlite:///{tmp_path / 'decisions.db'}")
    shares = {8: 0.5, 5: 0.4, 6: 0.2, 7: 0.5}  # 6 breaks the streak; 9 is missing
    for d, share in shares.items():
        drift = {**STABLE, "drift_share": share}
        log.record(_decide(drift=drift, day=date(2026, 3, d)))
    assert log.drift_since("m", date(2026, 3, 9), 0.3) == date(2026, 3, 7)
    assert log.drift_since("m", date(2026, 3, 7), 0.3) == date(2026, 3, 7)
    assert log.drift_since("m", date(2026, 3, 10), 0.3) == date(2026, 3, 10)
    assert log.drift_since("m", date(2026, 3, 9), 0.6) == date(2026, 3, 9)
    log.dispose()
