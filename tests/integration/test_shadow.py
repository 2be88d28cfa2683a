"""Shadow evaluation against the real stores: the replay of logged traffic
(``closedloop shadow``), the gate with ``model.gate.shadow: required`` and ``closedloop
serve --shadow`` in uvicorn subprocesses, on a home built by the feature pipeline, the
training functions and batch inference (no Airflow).

The world: 24 generated days through the feature pipeline; a champion (v1) trained up to
day 18; days 19-23 scored in batch by it (the logged traffic); then a weakened candidate
(v2: its strongest features dropped) trained up to day 24 under a copy of the use case
whose metric gate would bless anything (no floors, any improvement) but which requires a
passing shadow report. The tests run in file order.
"""

from __future__ import annotations

import json
import signal
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from closedloop.core import offline
from closedloop.core.ledger import PromotionLedger
from closedloop.core.prediction_log import PredictionLog
from closedloop.core.registry import CHALLENGER, CHAMPION, alias_version, client_for
from closedloop.core.settings import load_settings
from closedloop.core.shadow import ShadowThresholds, load_version_model, shadow_report
from closedloop.usecases.hotel.generator import write_batches

pytestmark = pytest.mark.integration

FIRST, DAYS = date(2026, 1, 1), 24
TRAIN_END = datetime(2026, 1, 18, tzinfo=UTC)
SCORED = [datetime(2026, 1, d, tzinfo=UTC) for d in range(19, 24)]  # batch traffic
AS_OF = datetime(2026, 1, 24, tzinfo=UTC)
WEAK = ["deposit_type", "total_of_special_requests", "lead_time", "stay_nights",
        "stays_week_nights", "stays_weekend_nights"]  # fmt: skip
QUICK = {"trials": 2, "validation_days": 3, "holdout_days": 3}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from closedloop.core import training_pipeline as tp
    from closedloop.core.batch_inference import score_interval
    from closedloop.core.feature_pipeline import backfill

    root = tmp_path_factory.mktemp("shadow") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOSEDLOOP_HOME", str(root))
        settings = load_settings()
        write_batches(settings.landing_dir, FIRST, DAYS, rows_per_day=150)
        backfill(settings, FIRST, DAYS)
        first = tp.run_in_process(settings, datetime(2026, 1, 1, tzinfo=UTC), TRAIN_END,
                                  "shadow/1", reason="test", **QUICK)  # fmt: skip
        assert first["action"] == "promoted", first
        logged = sum(score_interval(settings, d, d + timedelta(days=1))["rows"] for d in SCORED)
        # the use case, with a metric gate that blesses anything, and shadow required
        declared = yaml.safe_load(settings.usecase_path.read_text())
        declared["model"]["gate"] = {
            "min_improvement": -1.0, "floors": {}, "max_segment_regression": 1.0,
            "shadow": "required", "shadow_days": 7,
        }  # fmt: skip
        path = root.parent / "hotel_bookings.yaml"
        path.write_text(yaml.safe_dump(declared))
        strict = settings.for_usecase(file=path)
        weak = tp.run_in_process(strict, datetime(2026, 1, 1, tzinfo=UTC), AS_OF, "shadow/weak",
                                 reason="test", drop_features=WEAK, **QUICK)  # fmt: skip
        yield {"settings": settings, "logged": logged, "weak": weak}


def _runs(settings, **tags):
    from mlflow import MlflowClient

    client = MlflowClient(settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name("closedloop/hotel_bookings/shadow")
    where = " and ".join(f"tags.`closedloop.{k}` = '{v}'" for k, v in tags.items())
    return client, client.search_runs([experiment.experiment_id], filter_string=where)


def test_replaying_a_version_on_its_own_traffic_agrees_everywhere(world):
    settings = world["settings"]
    report = shadow_report(settings, "1", end=AS_OF, days=7, thresholds=ShadowThresholds())
    assert report.baseline_version == "1" and report.rows == world["logged"] > 500
    assert report.agreement == 1.0 and report.scores["identical"]
    assert report.scores["max_abs_difference"] == 0.0 and report.scores["ks_statistic"] == 0.0
    assert report.decisions["candidate_only_positive"] == 0
    assert report.decisions["baseline_only_positive"] == 0
    assert all(s["agreement"] == 1.0 for s in report.segments if "agreement" in s)
    assert {s["segment"] for s in report.segments} == {"hotel", "market_segment"}
    if report.labelled and report.labelled["difference"] is not None:
        assert report.labelled["difference"] == 0.0
    assert report.latency["row_calls"] == 200 and report.latency["row_p99_ms"] > 0
    assert report.latency["batch_calls"] >= 1 and report.latency["rows_per_second"] > 0
    assert report.passed, report.reasons


def test_the_cli_records_the_report_as_an_mlflow_run_tagged_with_both_versions(world):
    from click.testing import CliRunner

    from closedloop.cli import main

    result = CliRunner().invoke(main, ["shadow", "--version", "1", "--days", "7", "--end",
                                       "2026-01-24"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "decisions agree      100.00%" in result.output and "PASSED" in result.output
    run_id = result.output.rsplit("recorded as MLflow run ", 1)[1].split()[0]
    client, runs = _runs(world["settings"], candidate_version="1", baseline_version="1")
    assert run_id in [r.info.run_id for r in runs]
    run = client.get_run(run_id)
    assert run.data.tags["closedloop.shadow_passed"] == "true"
    assert run.data.metrics["agreement"] == 1.0 and run.data.metrics["rows"] == world["logged"]
    assert "latency.row_p99_ms" in run.data.metrics
    path = client.download_artifacts(run_id, "shadow_report.json")
    saved = json.loads(Path(path).read_text())
    assert saved["rows"] == world["logged"] and saved["passed"] is True


def test_a_weakened_version_fails_the_shadow_thresholds(world):
    report = shadow_report(world["settings"], "2", end=AS_OF, days=7, thresholds=ShadowThresholds())
    assert report.candidate_version == "2" and report.baseline_version == "1"
    assert report.rows == world["logged"] and not report.passed
    assert report.agreement < 0.9 or report.scores["ks_statistic"] > 0.2, report.reasons
    assert any(r.startswith(("decisions agree", "score distributions")) for r in report.reasons)


def test_with_shadow_required_the_weakened_version_is_never_promoted(world):
    settings, weak = world["settings"], world["weak"]
    assert weak["version"] == "2" and weak["action"] == "challenger"
    assert weak["blessed"] is False
    # the metric gate alone blessed it: every reason is the shadow report's
    assert weak["reasons"] and all(r.startswith("shadow v2 vs v1: ") for r in weak["reasons"])
    client = client_for(settings)
    assert alias_version(client, settings.model_name, CHAMPION) == "1"
    assert alias_version(client, settings.model_name, CHALLENGER) == "2"
    ledger = PromotionLedger(settings.closedloop_db).history(settings.model_name)
    assert not [e for e in ledger if e.version == "2" and e.action == "promote"]
    entry = [e for e in ledger if e.version == "2"][-1]
    assert entry.action == "challenger" and "shadow v2 vs v1: " in entry.reason
    tags = client.get_model_version(settings.model_name, "2").tags
    assert tags["closedloop.blessed"] == "false"
    assert tags["closedloop.rejection_reason"].startswith("shadow v2 vs v1: ")
    assert tags["closedloop.shadow"].startswith("failed (MLflow run ")
    _, runs = _runs(settings, dag_run_id="shadow/weak")
    assert len(runs) == 1 and runs[0].data.tags["closedloop.shadow_passed"] == "false"
    assert runs[0].data.tags["closedloop.candidate_version"] == "2"
    assert runs[0].info.run_id in tags["closedloop.shadow"]


# -- closedloop serve --shadow ------------------------------------------------------------
@pytest.fixture(scope="module")
def servers(world):
    from test_serving import Server  # the uvicorn subprocess of the serving tests

    home = world["settings"].home
    plain = Server(home, "--poll-seconds", "1")
    shadow = Server(home, "--poll-seconds", "1", "--shadow")
    try:
        plain.wait_ready()
        shadow.wait_ready()
        yield {"plain": plain, "shadow": shadow}
    finally:
        plain.stop()
        shadow.stop()


def _requests(settings) -> list[dict]:
    from closedloop.serving.schema import as_requests

    table = settings.offline_table_dir("events")
    frames = [
        pd.read_parquet(offline.partition_path(table, d)) for d in ("2026-01-23", "2026-01-24")
    ]
    return as_requests(pd.concat(frames, ignore_index=True), settings.usecase)


def _load(server, requests: list[dict], threads: int = 8) -> list[dict]:
    """``threads`` threads posting 1-4 events per request at once; every answer."""
    answers: list[dict] = []
    lock = threading.Lock()
    errors: list[str] = []

    def post(part: list[dict]) -> None:
        import httpx

        with httpx.Client(base_url=server.url, timeout=60) as client:
            at = 0
            while at < len(part):
                size = 1 + at % 4
                response = client.post("/predict", json=part[at : at + size])
                if response.status_code != 200:
                    errors.append(response.text)
                with lock:
                    answers.extend(response.json().get("predictions", []))
                at += size

    workers = [threading.Thread(target=post, args=(requests[k::threads],)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors[:3]
    return answers


def test_serve_shadow_answers_as_without_it_and_logs_the_challenger_beside(world, servers):
    settings = world["settings"]
    ready = servers["shadow"].client.get("/ready").json()
    assert ready["shadow"] is True and ready["models"] == {"champion": "1", "challenger": "2"}
    requests = _requests(settings)
    assert len(requests) > 200
    both: dict[str, list[dict]] = {}

    def run(name: str) -> None:
        both[name] = _load(servers[name], requests)

    loads = [threading.Thread(target=run, args=(n,)) for n in ("plain", "shadow")]
    for t in loads:
        t.start()
    for t in loads:
        t.join()
    plain = {a["booking_id"]: a for a in both["plain"]}
    shadowed = {a["booking_id"]: a for a in both["shadow"]}
    assert len(plain) == len(shadowed) == len(requests)
    for key, answer in shadowed.items():
        other = plain[key]
        got = (answer["probability"], answer["decision"], answer["model_version"], answer["arm"])
        assert got == (other["probability"], other["decision"], "1", "champion")
        assert sorted(answer) == sorted(other)  # nothing added to an answer

    server = servers["shadow"]
    metrics = server.client.get("/metrics").text
    assert 'closedloop_shadow_dropped_total{reason="queue_full"}' not in metrics
    server.proc.send_signal(signal.SIGTERM)  # shutdown scores what waits and writes it
    assert server.proc.wait(timeout=60) == -signal.SIGTERM
    now = datetime.now(UTC)
    log = PredictionLog(settings.prediction_log_dir).read(
        now - timedelta(days=1), now + timedelta(days=1), sources=("online",)
    )
    served = log[log["prediction_id"].isin([a["prediction_id"] for a in both["shadow"]])]
    assert len(served) == len(requests) and set(served["arm"]) == {"champion"}
    shadow = log[log["arm"] == "shadow"].set_index("prediction_id")
    want_ids = {f"{a['prediction_id']}-shadow" for a in both["shadow"]}
    assert set(shadow.index) == want_ids  # every answer of the shadow server, no other
    assert set(shadow["model_version"]) == {"2"}
    mine = shadow.loc[[f"{a['prediction_id']}-shadow" for a in both["shadow"]]]
    assert mine["booking_id"].tolist() == [a["booking_id"] for a in both["shadow"]]
    candidate = load_version_model(settings, "2")
    want = candidate.model.predict_proba(mine[candidate.feature_names])[:, 1]
    np.testing.assert_allclose(mine["score"].to_numpy(), want, rtol=0, atol=1e-12)
    assert mine["decision"].tolist() == [int(s >= candidate.threshold) for s in want]
    assert (mine["score"].to_numpy() != np.array([a["probability"] for a in both["shadow"]])).any()
