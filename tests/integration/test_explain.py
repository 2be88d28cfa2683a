"""``closedloop explain`` on a loop's state built in-process: the feature pipeline over
19 days, a LogisticRegression champion trained and gated, day 20's bookings scored in
batch, then a second training run (its own version, whatever the gate decides), then
some of day 20's bookings scored online through the serving app. Each prediction must
walk back to the version, training run, data digest and DAG runs the stores
themselves record (MLflow, the ledger, the prediction log and Feast read directly),
and the linear model's contributions must add up to its log-odds.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from closedloop.core import offline
from closedloop.core import tags as tag
from closedloop.core.explain import UnknownPredictionError, explain
from closedloop.core.feature_pipeline import backfill, clean, engineer, extract, load_offline
from closedloop.core.prediction_log import PredictionLog
from closedloop.core.settings import load_settings
from closedloop.usecases.hotel.generator import write_batches

pytestmark = pytest.mark.integration

FIRST, HISTORY = date(2026, 1, 1), 19
DAY = datetime(2026, 1, 20, tzinfo=UTC)
TRAINING = "hotel_bookings_training"
LINEAR = {"families": ("logistic_regression",), "trials": 2, "validation_days": 3,
          "holdout_days": 3}  # fmt: skip
TREES = {**LINEAR, "families": ("hist_gradient_boosting",)}
CUSTOMER = ["cust_bookings", "cust_known_outcomes", "cust_cancellations", "cust_cancel_rate"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The state, the batch log of day 20 (scored by v1) and online answers (see the module)."""
    from fastapi.testclient import TestClient

    from closedloop.core import training_pipeline as tp
    from closedloop.core.batch_inference import score_interval
    from closedloop.core.shadow import load_version_model
    from closedloop.serving.app import ServeConfig, create_app

    root = tmp_path_factory.mktemp("explain") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOSEDLOOP_HOME", str(root))
        settings = load_settings()
        write_batches(settings.landing_dir, FIRST, HISTORY + 1, rows_per_day=150)
        backfill(settings, FIRST, HISTORY)
        first = tp.run_in_process(settings, datetime(2026, 1, 1, tzinfo=UTC),
                                  datetime(2026, 1, 16, tzinfo=UTC), "explain/1",
                                  reason="first", dag_id=TRAINING, **LINEAR)  # fmt: skip
        assert first["action"] == "promoted", first
        end = DAY + timedelta(days=1)  # day 20: offline only, new to the online store
        extract(settings, DAY, end)
        load_offline(settings, DAY, engineer(settings, DAY, end, clean(settings, DAY)))
        batch = score_interval(settings, DAY, end)
        assert batch["model_version"] == "1"
        second = tp.run_in_process(settings, datetime(2026, 1, 1, tzinfo=UTC),
                                   datetime(2026, 1, 19, tzinfo=UTC), "explain/2",
                                   reason="second", dag_id=TRAINING, **TREES)  # fmt: skip
        # the trees' version scores day 19 in batch (day 20's partition is v1's)
        v2 = replace(load_version_model(settings, second["version"]), alias="challenger")
        trees = score_interval(settings, DAY - timedelta(days=1), DAY, model=v2)
        bookings = pd.read_parquet(
            offline.partition_path(settings.offline_table_dir("events"), "2026-01-20")
        )
        requests = bookings[settings.usecase.request_columns].head(40).copy()
        requests["arrival_date"] = requests["arrival_date"].dt.strftime("%Y-%m-%d")
        with TestClient(create_app(settings, ServeConfig(poll_seconds=60))) as client:
            answer = client.post("/predict", json=requests.to_dict("records"))
            assert answer.status_code == 200, answer.text
            online = answer.json()["predictions"]
            deadline = time.time() + 30  # the log writer flushes once a second
            while time.time() < deadline:
                over_http = client.get(f"/explain/{online[0]['prediction_id']}")
                if over_http.status_code != 404:
                    break
                time.sleep(0.5)
            missing = client.get("/explain/hotel_cancellation|1|batch|BK-NOPE")
        yield {
            "settings": settings,
            "batch": pd.read_parquet(batch["log_uri"]),
            "trees": pd.read_parquet(trees["log_uri"]),
            "second": second,
            "online": online,
            "over_http": over_http,
            "missing": missing,
        }


def _ledger(settings):
    from closedloop.core.ledger import read_history

    return read_history(settings.closedloop_db, settings.model_name)


def _scheduled_run_id(settings, key: str) -> str:
    """The run id Airflow's own timetable of the features DAG gives interval ``key``."""
    import pendulum
    from airflow.timetables.base import TimeRestriction
    from airflow.timetables.interval import CronDataIntervalTimetable
    from airflow.utils.types import DagRunType

    usecase = settings.usecase  # the scheduler's timetable of the DAG (closedloop.factory)
    timetable = CronDataIntervalTimetable(usecase.cron, timezone=usecase.schedule.timezone)
    start = pendulum.instance(settings.usecase.key_start(key))
    info = timetable.next_dagrun_info(
        last_automated_data_interval=None, restriction=TimeRestriction(start, None, True)
    )
    assert info.data_interval.start == start
    return timetable.generate_run_id(
        run_type=DagRunType.SCHEDULED, run_after=info.run_after, data_interval=info.data_interval
    )


def _latest_row_partition(settings, table: str, key: str, value, last: str) -> str | None:
    """The partition (up to ``last``) of the newest row of ``value`` in ``table``."""
    table_dir = settings.offline_table_dir(table)
    newest = None
    for k in offline.partition_keys(table_dir):
        if k > last:
            continue
        rows = pd.read_parquet(offline.partition_path(table_dir, k))
        if (rows[key] == value).any():
            newest = k
    return newest


def _check_lineage(settings, found, version: str) -> None:
    """Version, training run, digest and DAG runs as MLflow and the ledger record them."""
    from closedloop.core.registry import client_for

    client = client_for(settings)
    mv = client.get_model_version(settings.model_name, version)
    run = client.get_run(mv.run_id)
    assert found.model["version"] == version
    assert found.training["run_id"] == mv.run_id
    assert found.training["data_digest"] == run.data.tags[tag.DATA_DIGEST]
    assert found.training["window_end"] == run.data.tags[tag.WINDOW_END]
    assert found.training["gx_verdict"] == "passed"
    assert found.training["feature_service"] == settings.usecase.feature_service
    assert found.training["family"] == "logistic_regression"
    assert found.training["params"]["model.C"] == run.data.params["model.C"]
    assert found.model["threshold"] == float(run.data.tags[tag.THRESHOLD])
    training = next(r for r in found.dag_runs if r.role == "training")
    assert (training.dag_id, training.run_id) == (TRAINING, run.data.tags[tag.DAG_RUN_ID])
    assert training.url.endswith(f"/dags/{TRAINING}/runs/{training.run_id.replace('/', '%2F')}")
    moves = [e for e in _ledger(settings) if e.version == version and e.alias == found.model["arm"]]
    promotion = next(r for r in found.dag_runs if r.role == "promotion")
    assert (promotion.dag_id, promotion.run_id) == (moves[-1].dag_id, moves[-1].run_id)
    assert moves[-1].reason in promotion.detail


def _check_contributions(settings, found, record: pd.Series) -> None:
    """intercept (linear) or base value (SHAP) + contributions = the registered model's
    log-odds on the logged row."""
    import mlflow

    from closedloop.core.registry import use_mlflow

    use_mlflow(settings)
    model = mlflow.sklearn.load_model(f"models:/{settings.model_name}/{found.model['version']}")
    row = record[list(model.feature_names_in_)].to_frame().T.infer_objects()
    log_odds = float(model.decision_function(row)[0])
    c = found.contributions
    family = type(model.named_steps["model"]).__name__
    want = {"LogisticRegression": "linear", "HistGradientBoostingClassifier": "shap-permutation"}
    assert c.method == want[family], c.message
    assert sorted(c.by_feature) == sorted(model.feature_names_in_)
    assert abs(c.intercept + sum(c.by_feature.values()) - log_odds) < 1e-6
    assert 1 / (1 + math.exp(-log_odds)) == pytest.approx(record["score"], abs=1e-9)
    assert {f.name: f.contribution for f in found.features} == c.by_feature


def test_a_batch_prediction_walks_back_to_v1_its_run_and_the_features_runs(world):
    settings, batch = world["settings"], world["batch"]
    from closedloop.core.feature_store import feature_refs, historical_features, open_store

    store = open_store(settings)
    rows = batch.rename(columns={"predicted_at": "event_timestamp"})
    joined = historical_features(
        store, rows[[*settings.usecase.entity_keys, "event_timestamp"]],
        feature_refs(store, settings.usecase.feature_service),
    )  # fmt: skip
    new = joined["cust_bookings"].isna().to_numpy()
    assert new.any() and not new.all()
    # two versions with their own runs and data since: the walk must pick v1's
    second = world["second"]["trained"]
    assert world["second"]["version"] == "2"
    for index in (int(np.argmax(new)), int(np.argmin(new))):  # a new customer, a known one
        record = batch.iloc[index]
        found = explain(settings, record["prediction_id"])
        assert found.prediction_id == record["prediction_id"] and found.source == "batch"
        assert found.score == record["score"] and found.model["arm"] == "champion"
        _check_lineage(settings, found, "1")
        assert found.training["run_id"] != second.run_id
        assert found.training["data_digest"] != world["second"]["built"].digest
        _check_contributions(settings, found, record)
        defaulted = {f.name for f in found.features if f.defaulted}
        assert defaulted == (set(CUSTOMER) if new[index] else set())
        writes = {w.table: w for w in found.feature_writes}
        assert writes["events"].interval == "2026-01-20"
        assert writes["events"].run_id == _scheduled_run_id(settings, "2026-01-20")
        # rows stamped at the end of their interval: day 20's (stamped 21 Jan) are too late
        hotel = writes["hotel_aggregates"]
        key = _latest_row_partition(settings, "hotel_aggregates", "hotel", record["hotel"],
                                    "2026-01-19")  # fmt: skip
        assert hotel.interval == key and not hotel.resolved
        assert hotel.run_id == _scheduled_run_id(settings, key)
        customer = writes["customer_aggregates"]
        assert (customer.stamped_at is None) == bool(new[index])
        if not new[index]:
            key = _latest_row_partition(settings, "customer_aggregates", "customer_id",
                                        record["customer_id"], "2026-01-19")  # fmt: skip
            assert customer.interval == key
            assert customer.run_id == _scheduled_run_id(settings, key)
        events = pd.read_parquet(offline.partition_path(settings.offline_table_dir("events"),
                                                        "2026-01-20"))  # fmt: skip
        event = events.set_index("booking_id").loc[record["booking_id"]]
        assert found.ground_truth["known"] and found.ground_truth["label"] == event["is_canceled"]
        before = explain(settings, record["prediction_id"], as_of=DAY)
        assert not before.ground_truth["known"] and before.ground_truth["label"] is None
        assert json.loads(json.dumps(found.to_dict()))["model"]["version"] == "1"


def test_a_tree_models_prediction_gets_shap_contributions_that_add_up(world):
    settings, trees = world["settings"], world["trees"]
    version = world["second"]["version"]
    for index in (0, len(trees) // 2, len(trees) - 1):
        record = trees.iloc[index]
        found = explain(settings, record["prediction_id"])
        assert found.model["version"] == version and found.score == record["score"]
        assert found.training["family"] == "hist_gradient_boosting"
        _check_contributions(settings, found, record)
        assert found.contributions.method == "shap-permutation"
        assert "from the training set's mean" in found.text()


def test_an_online_prediction_walks_back_to_the_champion_that_answered(world):
    settings, online = world["settings"], world["online"]
    logged = PredictionLog(settings.prediction_log_dir).read(
        datetime(2026, 1, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(days=1), ("online",)
    ).set_index("prediction_id")  # fmt: skip
    assert len(logged) == len(online)
    champion = world["second"]["version"] if world["second"]["action"] == "promoted" else "1"
    with_defaults = [p for p in online if p["defaults_used"]]
    without = [p for p in online if not p["defaults_used"]]
    assert with_defaults and without
    for answer in (with_defaults[0], without[0]):
        record = logged.loc[answer["prediction_id"]]
        found = explain(settings, answer["prediction_id"])
        assert found.source == "online" and found.model["version"] == answer["model_version"]
        assert answer["model_version"] == champion == record["model_version"]
        _check_lineage(settings, found, champion)
        _check_contributions(settings, found, record.rename(None))
        assert {f.name for f in found.features if f.defaulted} == set(answer["defaults_used"])
        customer = next(w for w in found.feature_writes if w.table == "customer_aggregates")
        if not answer["defaults_used"]:  # materialized through day 19: not day 20's rows
            key = _latest_row_partition(settings, "customer_aggregates", "customer_id",
                                        record["customer_id"], "2026-01-19")  # fmt: skip
            assert customer.interval == key
            assert customer.run_id == _scheduled_run_id(settings, key)
        else:
            assert customer.stamped_at is None and "declared defaults" in customer.note
    over_http = world["over_http"]  # through the serving app, as logged
    assert over_http.status_code == 200, over_http.text
    body = over_http.json()
    assert body["prediction_id"] == online[0]["prediction_id"]
    assert body["model"]["version"] == online[0]["model_version"]


def test_an_unknown_id_is_a_clear_error_on_the_cli_and_a_404_over_http(world, monkeypatch):
    from closedloop.cli import main

    settings = world["settings"]
    missing = world["missing"]
    assert missing.status_code == 404
    assert "'hotel_cancellation|1|batch|BK-NOPE'" in missing.json()["detail"][0]
    with pytest.raises(UnknownPredictionError, match="BK-NOPE"):
        explain(settings, "hotel_cancellation|1|batch|BK-NOPE")
    monkeypatch.setenv("CLOSEDLOOP_HOME", str(settings.home))
    result = CliRunner().invoke(main, ["explain", "hotel_cancellation|1|batch|BK-NOPE"])
    assert result.exit_code == 2
    assert "no prediction 'hotel_cancellation|1|batch|BK-NOPE'" in result.output
    known = world["batch"]["prediction_id"].iloc[0]
    result = CliRunner().invoke(main, ["explain", known, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["prediction_id"] == known
    text = CliRunner().invoke(main, ["explain", known])
    assert text.exit_code == 0 and "training run" in text.output and "intercept" in text.output


def test_the_views_resolver_names_the_features_run_airflow_has_for_the_interval(world, airflow_db):
    """Inside Airflow (the closedloop view), the run of an interval is Airflow's own: here
    a triggered run, whose id is not the one the schedule would give."""
    import uuid

    import pendulum
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunType

    from closedloop.ui.explain import interval_run

    settings, batch = world["settings"], world["batch"]
    record = batch.iloc[0]
    key = _latest_row_partition(settings, "hotel_aggregates", "hotel", record["hotel"],
                                "2026-01-19")  # fmt: skip
    start = settings.usecase.key_start(key)
    end = settings.usecase.next_start(start)
    run_id = f"manual__explain-{uuid.uuid4().hex[:8]}"
    with create_session() as session:
        session.add(DagRun(
            # a logical date of its own: (DAG, logical date) is unique in the session's DB
            dag_id="hotel_bookings_features", run_id=run_id,
            logical_date=pendulum.instance(start + timedelta(microseconds=1)),
            data_interval=(pendulum.instance(start), pendulum.instance(end)),
            run_after=pendulum.instance(end), run_type=DagRunType.MANUAL,
            state=DagRunState.SUCCESS,
        ))  # fmt: skip
    assert interval_run("hotel_bookings_features", start) == run_id
    found = explain(settings, record["prediction_id"], find_run=interval_run)
    hotel = next(w for w in found.feature_writes if w.table == "hotel_aggregates")
    assert hotel.interval == key and hotel.resolved and hotel.run_id == run_id
    assert hotel.url.endswith(f"/dags/hotel_bookings_features/runs/{run_id}")
