"""A user's own use case, by configuration only, through a real Airflow scheduler.

The walk a new user takes, with the CLI as they would type it and no Python of theirs:
their events (device readings, names unrelated to the shipped use cases) land as daily
CSV files; ``closedloop init`` drafts the declaration from a sample; the user adds the
label and when it becomes known; ``closedloop check`` validates it and dry-runs the
feature step; ``closedloop loop`` replays the landed days through the scheduler. A
drift injected into the readings must be detected by monitoring and start this use
case's own training DAG, whose gate decides. The assertions read the stores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from closedloop.core.settings import load_settings

pytestmark = pytest.mark.e2e

NAME = "device_health"
FIRST = date(2025, 3, 1)
HISTORY_DAYS, WATCHED_DAYS = 21, 8
DRIFT_FROM = FIRST + timedelta(days=HISTORY_DAYS + 3)
READINGS_PER_DAY = 300
#: the one line the user completes in the draft: the label becomes known a day later
DRAFT_LABEL = "# label: {column: failed, positive: 1, known_at: TODO}"
LABEL = "label: {column: failed, positive: 1, known_at: 1d}"


def readings(day: date, rng: np.random.Generator) -> pd.DataFrame:
    """One day of readings of 150 devices; from DRIFT_FROM the devices run hotter and
    shake more (within the ranges the draft declares), and failures follow vibration
    more steeply."""
    n = READINGS_PER_DAY
    drift = day >= DRIFT_FROM
    device = rng.integers(0, 150, n)
    seconds = np.sort(rng.integers(0, 86_400, n))
    temperature = rng.normal(60 + 10 * drift, 6, n) + device % 5
    vibration = rng.gamma(2.0, 1.5 * (1.5 if drift else 1.0), n)
    firmware = 1 + device % 3
    logit = -2.6 + 0.09 * (temperature - 60) + (0.55 if drift else 0.35) * vibration
    logit -= 0.4 * (firmware == 3)
    return pd.DataFrame(
        {
            "reading_id": [f"R{day:%Y%m%d}-{i:04d}" for i in range(n)],
            "device_id": [f"DEV{d:03d}" for d in device],
            "read_at": [
                (pd.Timestamp(day, tz="UTC") + pd.Timedelta(seconds=int(s))).isoformat()
                for s in seconds
            ],
            "site": np.array(["north", "south", "east"])[device % 3],
            "temperature": temperature.round(2),
            "vibration": vibration.round(3),
            "firmware": firmware,
            "failed": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int),
        }
    )


def _closedloop(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("closedloop")), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    root = tmp_path_factory.mktemp("own-usecase")
    home, usecases = root / "home", root / "usecases"
    strip = ("AIRFLOW", "CLOSEDLOOP_", "MLFLOW_TRACKING_URI")
    env = {k: v for k, v in os.environ.items() if not k.startswith(strip)}
    env.update(CLOSEDLOOP_HOME=str(home), CLOSEDLOOP_USECASES_DIR=str(usecases))
    rng = np.random.default_rng(11)
    landing = home / "landing" / NAME
    landing.mkdir(parents=True)
    days = [FIRST + timedelta(days=i) for i in range(HISTORY_DAYS + WATCHED_DAYS)]
    frames = {day: readings(day, rng) for day in days}
    for day, frame in frames.items():
        frame.to_csv(landing / f"{day:%Y-%m-%d}.csv", index=False)
    sample = root / "sample.csv"
    pd.concat([frames[d] for d in days[:14]]).to_csv(sample, index=False)

    steps = {"init": _closedloop(env, "init", NAME, "--from", str(sample))}
    declaration = usecases / f"{NAME}.yaml"
    steps["check-draft"] = _closedloop(env, "check", NAME)
    text = declaration.read_text()
    assert DRAFT_LABEL in text, text
    declaration.write_text(text.replace(DRAFT_LABEL, LABEL))
    steps["check"] = _closedloop(env, "check", NAME, "--sample", str(sample))
    first_watched = days[HISTORY_DAYS]
    steps["loop"] = _closedloop(
        env, "loop", "--usecase", NAME, "--from", f"{first_watched}", "--to", f"{days[-1]}"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOSEDLOOP_HOME", str(home))
        mp.setenv("CLOSEDLOOP_USECASES_DIR", str(usecases))
        mp.setenv("CLOSEDLOOP_USECASE_NAME", NAME)
        yield load_settings(), steps, declaration


def _runs(settings, dag_id: str) -> dict[str, tuple[str, dict]]:
    engine = sa.create_engine(f"sqlite:///{settings.airflow_home / 'airflow.db'}")
    query = sa.text("SELECT run_id, state, conf FROM dag_run WHERE dag_id = :d")
    with engine.connect() as conn:
        rows = conn.execute(query, {"d": dag_id}).all()
    engine.dispose()
    conf = [json.loads(r.conf) if isinstance(r.conf, str | bytes) else r.conf for r in rows]
    return {r.run_id: (r.state, c or {}) for r, c in zip(rows, conf, strict=True)}


def test_the_draft_needs_only_the_label_to_pass_check(walk):
    _, steps, declaration = walk
    assert steps["init"].returncode == 0, steps["init"].stderr
    assert steps["check-draft"].returncode == 1
    assert "label: required field is missing" in steps["check-draft"].stderr
    assert steps["check"].returncode == 0, steps["check"].stdout + steps["check"].stderr
    out = steps["check"].stdout
    for stage in ("features", "training", "batch_inference", "monitoring"):
        assert f"{NAME}_{stage}" in out
    assert "view device_aggregates" in out and f"feature service {NAME}_v1" in out
    assert "dry run on" in out
    assert len(declaration.read_text().splitlines()) <= 60
    assert not list(declaration.parent.glob("*.py"))


def test_the_loop_ran_every_day_through_the_scheduler(walk):
    settings, steps, _ = walk
    loop = steps["loop"]
    assert loop.returncode == 0, loop.stdout[-4000:] + loop.stderr[-4000:]
    for stage in ("features", "batch_inference", "monitoring"):
        runs = _runs(settings, f"{NAME}_{stage}")
        day_runs = {r: s for r, (s, _) in runs.items() if r.startswith("loop__")}
        assert len(day_runs) == WATCHED_DAYS, (stage, day_runs)
        assert set(day_runs.values()) == {"success"}, (stage, day_runs)


def test_the_injected_drift_is_detected_and_retrains_this_usecase(walk):
    from closedloop.core.ledger import PromotionLedger
    from closedloop.core.monitoring import DecisionLog

    settings, _, _ = walk
    log = DecisionLog(settings.closedloop_db)
    try:
        verdicts = {date.fromisoformat(v.day): v for v in log.verdicts(settings.model_name)}
    finally:
        log.dispose()
    watched = [FIRST + timedelta(days=HISTORY_DAYS + i) for i in range(WATCHED_DAYS)]
    assert sorted(verdicts) == watched
    assert not [d for d, v in verdicts.items() if d < DRIFT_FROM and v.retrain]
    retrained = [v for d, v in sorted(verdicts.items()) if d >= DRIFT_FROM and v.retrain]
    assert retrained, {str(d): v.reasons for d, v in verdicts.items()}
    first = retrained[0]
    assert first.drift_share > 0 and first.cause == "drift"
    runs = _runs(settings, f"{NAME}_training")
    state, conf = runs[first.trigger_run_id]
    assert state == "success" and conf["reason"] == "drift"
    decisions = [
        e
        for e in PromotionLedger(settings.closedloop_db).history(settings.model_name)
        if e.run_id == first.trigger_run_id
    ]
    # the gate blessed it (promote) or kept it as the challenger: either is a decision
    assert decisions and decisions[0].action in ("promote", "challenger")


def test_entity_keys_are_not_model_inputs(walk):
    from closedloop.core.registry import load_model

    settings, _, _ = walk
    champion = load_model(settings)
    assert not {"device_id", "reading_id", "failed", "read_at"} & set(champion.feature_names)
    assert {"temperature", "vibration", "device_events_7d"} <= set(champion.feature_names)


def test_its_events_are_scored_when_they_happen_from_their_declared_columns(walk):
    """``closedloop serve`` of this use case: a reading as it happens (its raw columns,
    no label) in; its device's aggregates from the online store; answered under its id."""
    from fastapi.testclient import TestClient

    from closedloop.core.feature_store import open_store
    from closedloop.core.registry import load_model
    from closedloop.serving.app import create_app

    settings, _, _ = walk
    usecase = settings.usecase
    last = FIRST + timedelta(days=HISTORY_DAYS + WATCHED_DAYS - 1)
    landed = pd.read_csv(settings.landing_dir / f"{last:%Y-%m-%d}.csv").head(5)
    assert "failed" not in usecase.request_columns and "read_at" not in usecase.request_columns
    requests = landed[usecase.request_columns].to_dict("records")
    with TestClient(create_app(settings)) as client:
        assert client.get("/ready").json()["request_fields"] == usecase.request_columns
        response = client.post("/predict", json=requests)
        assert response.status_code == 200, response.text
        got = response.json()["predictions"]
        bad = client.post("/predict", json={**requests[0], "failed": 1})
        assert bad.status_code == 422 and "'failed' is not a field" in bad.text
    assert [p["reading_id"] for p in got] == landed["reading_id"].tolist()
    # the model on the request's own columns and the online store's 7-day aggregates
    champion = load_model(settings)
    aggregates = list(usecase.features.aggregations["device"])
    online = (
        open_store(settings)
        .get_online_features(
            features=[f"device_aggregates:{a}" for a in aggregates],
            entity_rows=[{"device_id": r["device_id"]} for r in requests],
        )
        .to_df()
    )
    features = pd.concat([landed, online[aggregates].fillna(usecase.defaults)], axis=1)
    want = champion.model.predict_proba(features[champion.feature_names])[:, 1]
    np.testing.assert_allclose([p["probability"] for p in got], want, rtol=0, atol=1e-12)
