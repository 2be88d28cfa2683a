"""Online serving against real servers: ``closedloop serve`` in uvicorn subprocesses on
127.0.0.1, with the real Feast online store (SQLite) and MLflow registry (SQLite) of a
home built by the feature pipeline and the training functions.

The world: 19 days of bookings backfilled (aggregates materialized through the end of
day 19), a champion trained on them, and day 20's bookings processed by the feature
pipeline into the offline store only — the online store then holds exactly the
aggregates known when those bookings were made, which is what batch inference joins
for them point in time. A request carries the booking itself (its declared columns),
as it would when it happens. Version 2 of the model (the same run registered again) is
the ``challenger``.

Two servers start together: A (champion only, fast alias polling) and B (A/B, half the
keys to the challenger, a long log flush interval so that only the shutdown flush can
write its log). The tests run in file order: B is stopped by SIGTERM before A's champion
is moved.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from closedloop.core import offline
from closedloop.core.ab import arm_for
from closedloop.core.feature_pipeline import backfill, clean, engineer, extract, load_offline
from closedloop.core.prediction_log import CORE_COLUMNS, PredictionLog
from closedloop.core.settings import load_settings
from closedloop.platform.runtime import stop_process
from closedloop.usecases.hotel.generator import write_batches

pytestmark = pytest.mark.integration

FIRST, HISTORY = date(2026, 1, 1), 19
DAY = datetime(2026, 1, 20, tzinfo=UTC)  # bookings scored online and in batch
TRAIN_END = datetime(2026, 1, 18, tzinfo=UTC)
CLI = str(Path(sys.executable).parent / "closedloop")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from closedloop.core import training_pipeline as tp
    from closedloop.core.registry import CHALLENGER, client_for

    root = tmp_path_factory.mktemp("serving") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOSEDLOOP_HOME", str(root))
        settings = load_settings()
        write_batches(settings.landing_dir, FIRST, HISTORY + 1, rows_per_day=150)
        backfill(settings, FIRST, HISTORY)
        decision = tp.run_in_process(
            settings,
            datetime(2026, 1, 1, tzinfo=UTC),
            TRAIN_END,
            "s/1",
            reason="test",
            trials=2,
            validation_days=3,
            holdout_days=3,
        )
        assert decision["action"] == "promoted", decision
        client = client_for(settings)
        first = client.get_model_version(settings.model_name, "1")
        second = client.create_model_version(settings.model_name, first.source, run_id=first.run_id)
        client.set_registered_model_alias(settings.model_name, CHALLENGER, second.version)
        # Day 20 through the feature pipeline, offline only: its bookings are new online.
        end = DAY + timedelta(days=1)
        extract(settings, DAY, end)
        load_offline(settings, DAY, engineer(settings, DAY, end, clean(settings, DAY)))
        yield settings


class Server:
    def __init__(self, home: Path, *args: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "CLOSEDLOOP_HOME": str(home)}
        # output to a file: a pipe nobody reads would block the server once full
        self.output = home.parent / f"server-{self.port}.log"
        with self.output.open("wb") as sink:
            self.proc = subprocess.Popen(
                [CLI, "serve", "--port", str(self.port), *args],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.output.read_text()[-3000:])
            try:
                if self.client.get("/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError("server not ready in time")

    def predict(self, body) -> httpx.Response:
        return self.client.post("/predict", json=body)

    def stop(self) -> None:
        self.client.close()
        stop_process(self.proc)


@pytest.fixture(scope="module")
def servers(world):
    a = Server(world.home, "--poll-seconds", "0.3")
    b = Server(
        world.home, "--challenger-share", "0.5", "--poll-seconds", "0.3",
        "--log-flush-seconds", "600", "--log-level", "info",
    )  # fmt: skip
    try:
        a.wait_ready()
        b.wait_ready()
        yield {"a": a, "b": b}
    finally:
        a.stop()
        b.stop()


def _bookings(settings, day: str) -> pd.DataFrame:
    """A day of the offline event table: cleaned bookings with their derived features."""
    path = offline.partition_path(settings.offline_table_dir("events"), day)
    return pd.read_parquet(path)


def _keys(frame: pd.DataFrame) -> list[dict]:
    """The bookings as requests: their declared request columns, dates as ISO text."""
    out = frame[REQUEST].copy()
    out["arrival_date"] = out["arrival_date"].dt.strftime("%Y-%m-%d")
    return out.to_dict("records")


def test_ready_reports_the_loaded_models_and_the_request_schema(world, servers):
    a = servers["a"]
    assert a.client.get("/health").json() == {"status": "ok"}
    ready = a.client.get("/ready").json()
    assert ready["ready"] is True and ready["models"] == {"champion": "1"}
    assert ready["request_fields"] == REQUEST
    b = servers["b"].client.get("/ready").json()
    assert b["models"] == {"champion": "1", "challenger": "2"}
    spec = a.client.get("/openapi.json").json()
    assert "PredictResponse" in json.dumps(spec)
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    one, many = body["schema"]["anyOf"]
    assert sorted(one["required"]) == sorted(REQUEST)
    assert one["properties"]["hotel"]["enum"] == world.usecase.columns["hotel"].categories
    assert one["properties"]["arrival_date"]["format"] == "date"
    assert one["properties"]["lead_time"]["maximum"] == world.usecase.columns["lead_time"].max
    assert many["items"] == one and many["maxItems"] == 100
    assert a.client.get("/docs").status_code == 200


def test_online_predictions_equal_batch_predictions_for_the_same_bookings(world, servers):
    from closedloop.core.batch_inference import score_interval

    out = score_interval(world, DAY, DAY + timedelta(days=1))
    batch = pd.read_parquet(out["predictions_uri"]).set_index("booking_id")
    keys = _keys(_bookings(world, "2026-01-20"))
    assert len(keys) == out["rows"] > 100
    online = []
    for start in range(0, len(keys), 50):  # lists of bookings, and a single one below
        response = servers["a"].predict(keys[start : start + 50])
        assert response.status_code == 200, response.text
        online += response.json()["predictions"]
    single = servers["a"].predict(keys[0]).json()["predictions"]
    assert [p["booking_id"] for p in online] == [k["booking_id"] for k in keys]
    scores = np.array([p["probability"] for p in online])
    want = batch.loc[[k["booking_id"] for k in keys], "score"].to_numpy()
    np.testing.assert_allclose(scores, want, rtol=0, atol=1e-12)
    assert [p["decision"] for p in online] == batch.loc[
        [k["booking_id"] for k in keys], "decision"
    ].tolist()
    assert single[0]["probability"] == pytest.approx(want[0], abs=1e-12)
    # new customers get the declared defaults, flagged, as batch fills them in
    flagged = [p for p in online if p["defaults_used"]]
    assert flagged and all("cust_bookings" in p["defaults_used"] for p in flagged)


def test_a_prediction_equals_predict_proba_on_the_pipelines_features_and_feast_online(
    world, servers
):
    """The server's derived features are the feature pipeline's (offline event table);
    its aggregates are the online store's."""
    from closedloop.core.feature_store import open_store
    from closedloop.core.registry import load_model

    champion = load_model(world)
    store = open_store(world)
    usecase = world.usecase
    events = _bookings(world, "2026-01-19").head(20)
    events = pd.concat([events, events.head(1).assign(customer_id="C-NEVER-SEEN")])
    keys = _keys(events)  # the last: a first-time customer
    got = servers["a"].predict(keys).json()["predictions"]
    aggregates = [
        f"{table}:{name}"
        for entity, table in usecase.aggregate_tables.items()
        for name in usecase.features.aggregations[entity]
    ]
    online = store.get_online_features(
        features=aggregates,
        entity_rows=[{e.join_key: k[e.join_key] for e in usecase.entities.values()} for k in keys],
    ).to_df()
    features = pd.concat(
        [
            events.reset_index(drop=True)[usecase.event_features],
            online[[ref.split(":")[1] for ref in aggregates]],
        ],
        axis=1,
    ).fillna(usecase.defaults)
    assert set(usecase.features.derived) <= set(champion.feature_names)
    want = champion.model.predict_proba(features[champion.feature_names])[:, 1]
    np.testing.assert_allclose([p["probability"] for p in got], want, rtol=0, atol=1e-12)
    assert [p["decision"] for p in got] == [int(w >= champion.threshold) for w in want]
    assert {p["model_version"] for p in got} == {"1"} and got[-1]["defaults_used"] == [
        "cust_bookings", "cust_known_outcomes", "cust_cancellations", "cust_cancel_rate"
    ]  # fmt: skip
    assert got[-1]["probability"] != got[0]["probability"]


REQUEST = [
    "booking_id", "customer_id", "hotel", "arrival_date", "lead_time", "stays_weekend_nights",
    "stays_week_nights", "adults", "children", "adr", "market_segment", "distribution_channel",
    "deposit_type", "customer_type", "previous_cancellations", "total_of_special_requests",
    "is_repeated_guest",
]  # fmt: skip
KNOWN = {
    "booking_id": "BK-20260119-00000", "customer_id": "C000001", "hotel": "H01",
    "arrival_date": "2026-02-14", "lead_time": 25, "stays_weekend_nights": 2,
    "stays_week_nights": 1, "adults": 2, "children": 0, "adr": 120.0,
    "market_segment": "Online TA", "distribution_channel": "TA/TO",
    "deposit_type": "No Deposit", "customer_type": "Transient", "previous_cancellations": 0,
    "total_of_special_requests": 1, "is_repeated_guest": 0,
}  # fmt: skip


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        pytest.param({**KNOWN, "booking_id": 12}, 422, "'booking_id'", id="wrong-type"),
        pytest.param(
            {k: v for k, v in KNOWN.items() if k != "customer_id"},
            422,
            "'customer_id' is required",
            id="missing-field",
        ),
        pytest.param(
            {**KNOWN, "lead_tim": 3}, 422, "'lead_tim' is not a field", id="unknown-field"
        ),
        pytest.param({**KNOWN, "hotel": "H99"}, 422, "'hotel'", id="category-out-of-set"),
        pytest.param([KNOWN, {**KNOWN, "hotel": None}], 422, "'[1].hotel'", id="bad-item-in-list"),
        pytest.param([KNOWN] * 101, 413, "101 events", id="oversized-batch"),
        pytest.param([], 422, "non-empty list", id="empty-list"),
        pytest.param("just a string", 422, "event object", id="not-an-object"),
        pytest.param(
            {**KNOWN, "arrival_date": "2026-02-30"}, 422, "'arrival_date'", id="impossible-date"
        ),
        pytest.param(
            {**KNOWN, "adr": -1.0}, 422, "'adr': Input should be greater", id="below-declared-min"
        ),
    ],
)
def test_bad_input_is_a_4xx_that_names_the_field_and_the_server_keeps_serving(
    servers, body, status, names
):
    a = servers["a"]
    response = a.predict(body)
    assert response.status_code == status, response.text
    assert any(names in message for message in response.json()["detail"]), response.text
    assert a.predict(KNOWN).status_code == 200


def test_a_body_that_is_not_json_is_a_400(servers):
    response = servers["a"].client.post("/predict", content=b"{not json")
    assert response.status_code == 400 and "not JSON" in response.json()["detail"][0]
    assert servers["a"].predict(KNOWN).status_code == 200


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_and_latency_per_model_version(servers):
    a = servers["a"]
    before = a.client.get("/metrics").text
    for _ in range(5):
        assert a.predict(KNOWN).status_code == 200
    assert a.predict({**KNOWN, "hotel": 1}).status_code == 422
    after = a.client.get("/metrics").text
    for name, labels, delta in [
        ("closedloop_requests_total", {"endpoint": "/predict", "status": "200"}, 5),
        ("closedloop_requests_total", {"endpoint": "/predict", "status": "422"}, 1),
        ("closedloop_predictions_total", {"model_version": "1", "arm": "champion"}, 5),
        ("closedloop_predict_latency_seconds_count", {"model_version": "1"}, 5),
        ("closedloop_request_latency_seconds_count", {"endpoint": "/predict"}, 6),
    ]:
        assert _metric(after, name, **labels) - _metric(before, name, **labels) == delta, name
    assert _metric(after, "closedloop_serving_model_version", alias="champion", version="1") == 1


@pytest.fixture(scope="module")
def ab_answers(world, servers):
    """Server B's answers to the bookings of days 19 and 20, each asked twice."""
    keys = _keys(pd.concat([_bookings(world, "2026-01-19"), _bookings(world, "2026-01-20")]))
    answers = []
    for _ in range(2):
        for start in range(0, len(keys), 100):
            response = servers["b"].predict(keys[start : start + 100])
            assert response.status_code == 200, response.text
            answers += response.json()["predictions"]
    return answers


def test_ab_split_is_sticky_per_booking_and_each_arm_uses_its_model(ab_answers):
    by_booking: dict[str, set] = {}
    for p in ab_answers:
        assert p["arm"] == arm_for(p["booking_id"], 0.5)
        assert p["model_version"] == {"champion": "1", "challenger": "2"}[p["arm"]]
        by_booking.setdefault(p["booking_id"], set()).add((p["arm"], p["probability"]))
    assert all(len(answers) == 1 for answers in by_booking.values())  # same arm, same answer
    share = np.mean([p["arm"] == "challenger" for p in ab_answers])
    assert 0.4 < share < 0.6


@pytest.fixture(scope="module")
def b_answers_after_the_split(world):
    """Server B's answers outside the A/B fixture's bookings (day 18)."""
    return []


def test_without_a_challenger_alias_the_champion_takes_every_key(
    world, servers, ab_answers, b_answers_after_the_split
):
    from closedloop.core.registry import CHALLENGER, client_for

    b, client = servers["b"], client_for(world)
    keys = _keys(_bookings(world, "2026-01-18").head(60))
    client.delete_registered_model_alias(world.model_name, CHALLENGER)
    try:
        deadline = time.time() + 30
        while time.time() < deadline and b.client.get("/ready").json()["models"] != {
            "champion": "1"
        }:
            time.sleep(0.2)
        answers = b.predict(keys).json()["predictions"]
        b_answers_after_the_split.extend(answers)
        assert {p["arm"] for p in answers} == {"champion"}
    finally:
        client.set_registered_model_alias(world.model_name, CHALLENGER, "2")
    deadline = time.time() + 30
    while time.time() < deadline and "challenger" not in b.client.get("/ready").json()["models"]:
        time.sleep(0.2)
    again = b.predict(keys).json()["predictions"]
    b_answers_after_the_split.extend(again)
    assert [p["arm"] for p in again] == [arm_for(k["booking_id"], 0.5) for k in keys]


def test_sigterm_flushes_every_answered_prediction_to_the_log(world, servers, ab_answers):
    b = servers["b"]
    log = PredictionLog(world.prediction_log_dir)
    now = datetime.now(UTC)
    window = (now - timedelta(days=1), now + timedelta(days=1))
    ids = [p["prediction_id"] for p in ab_answers]
    # The flush interval is 600 s: nothing B answered can be on disk before shutdown.
    before = log.read(*window, sources=("online",))
    assert not set(ids) & set(before["prediction_id"])
    b.proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal to exit with its status
    assert b.proc.wait(timeout=60) == -signal.SIGTERM
    assert "Application shutdown complete" in b.output.read_text()
    logged = log.read(*window, sources=("online",)).set_index("prediction_id")
    assert len(set(ids)) == len(ids) and set(ids) <= set(logged.index)
    mine = logged.loc[ids]
    assert (mine["source"] == "online").all()
    assert mine["arm"].tolist() == [p["arm"] for p in ab_answers]
    assert mine["model_version"].tolist() == [p["model_version"] for p in ab_answers]
    assert mine["score"].tolist() == [p["probability"] for p in ab_answers]
    assert mine["booking_id"].tolist() == [p["booking_id"] for p in ab_answers]
    # the same record layout as batch inference's log
    batch = pd.read_parquet(log.batch_partition("2026-01-20"))
    assert list(batch.columns[: len(CORE_COLUMNS)]) == CORE_COLUMNS
    assert set(logged.reset_index().columns) == set(batch.columns)


def test_ab_report_compares_the_arms_on_the_logged_predictions(
    world, ab_answers, servers, b_answers_after_the_split
):
    from closedloop.core.ab import ab_report

    servers["b"].stop()
    report = ab_report(world, datetime.now(UTC) + timedelta(hours=1), window_days=2,
                       min_labelled=30)  # fmt: skip
    arms = report["arms"]
    # each booking counts once, with the arm it was sticky to
    asked = {p["booking_id"]: p["arm"] for p in ab_answers + b_answers_after_the_split}
    for arm in ("champion", "challenger"):
        assert arms[arm]["predictions"] == sum(a == arm for a in asked.values())
        assert arms[arm]["labelled"] > 30 and arms[arm]["metric"] is not None
    # the same model in both arms: no difference can be significant
    assert report["verdict"] == "inconclusive"
    assert report["ci_low"] < 0 < report["ci_high"]


def test_two_workers_answer_as_one_add_up_their_metrics_and_both_flush_on_sigterm(world, servers):
    a = servers["a"]
    w = Server(world.home, "--workers", "2", "--log-flush-seconds", "600")
    try:
        w.wait_ready()
        keys = _keys(_bookings(world, "2026-01-20"))[:40]
        answers, by_worker = [], {}
        deadline = time.time() + 120
        for key in keys + [KNOWN] * 200:  # KNOWN until both workers have answered
            if (len(answers) >= len(keys) and len(by_worker) == 2) or time.time() > deadline:
                break
            # a new connection each time: the kernel hands it to either worker, and its
            # /ready names the one that then also answers the /predict on it
            with httpx.Client(base_url=w.url, timeout=30) as fresh:
                pid = fresh.get("/ready").json()["worker_pid"]
                response = fresh.post("/predict", json=key)
            assert response.status_code == 200, response.text
            answers.append(response.json()["predictions"][0])
            by_worker[pid] = by_worker.get(pid, 0) + 1
        assert len(by_worker) == 2, by_worker
        # the same answers as the one-process server gives for the same bookings
        alike = [a.predict(k).json()["predictions"][0] for k in keys]
        assert [p["probability"] for p in answers[: len(keys)]] == [p["probability"] for p in alike]
        assert {p["model_version"] for p in answers} == {alike[0]["model_version"]}
        # /metrics, answered by one worker, counts what both did
        text = w.client.get("/metrics").text
        assert _metric(text, "closedloop_requests_total", endpoint="/predict", status="200") == (
            len(answers)
        )
        assert _metric(text, "closedloop_predictions_total", model_version=alike[0][
            "model_version"], arm="champion") == len(answers)  # fmt: skip
        assert _metric(text, "closedloop_registry_up") == 1
        assert _metric(text, "closedloop_serving_model_version", alias="champion",
                       version=alike[0]["model_version"]) == 1  # fmt: skip
        # nothing is on disk before the shutdown (600 s flush interval); after it,
        # every answer of both workers is
        log = PredictionLog(world.prediction_log_dir)
        now = datetime.now(UTC)
        window = (now - timedelta(days=1), now + timedelta(days=1))
        ids = {p["prediction_id"] for p in answers}
        assert not ids & set(log.read(*window, sources=("online",))["prediction_id"])
        w.proc.send_signal(signal.SIGTERM)
        assert w.proc.wait(timeout=60) == 0
        assert ids <= set(log.read(*window, sources=("online",))["prediction_id"])
    finally:
        w.stop()


def _load(server: Server, stop: threading.Event, out: list, errors: list) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        while not stop.is_set():
            try:
                r = client.post("/predict", json=KNOWN)
                out.append((r.status_code, r.json()["predictions"][0]["model_version"]))
            except Exception as exc:
                errors.append(repr(exc))


def test_an_alias_move_under_concurrent_load_loses_no_request(world, servers):
    from closedloop.core.registry import CHAMPION, client_for

    a = servers["a"]
    stop, results, errors = threading.Event(), [[] for _ in range(4)], []
    threads = [threading.Thread(target=_load, args=(a, stop, r, errors)) for r in results]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        client_for(world).set_registered_model_alias(world.model_name, CHAMPION, "2")
        deadline = time.time() + 60
        while time.time() < deadline and not all(r and r[-1][1] == "2" for r in results):
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    for r in results:
        assert r and all(status == 200 for status, _ in r)
        versions = [v for _, v in r]
        first_new = versions.index("2")
        assert set(versions[:first_new]) == {"1"} and set(versions[first_new:]) == {"2"}
    assert sum(len(r) for r in results) > 20
    assert a.client.get("/ready").json()["models"] == {"champion": "2"}
    assert _metric(a.client.get("/metrics").text, "closedloop_model_swaps_total",
                   alias="champion") == 1  # fmt: skip


def test_a_registry_outage_keeps_the_current_model_serving(world, servers):
    from closedloop.core.registry import CHAMPION, client_for

    a = servers["a"]
    db = world.mlflow_dir / "mlflow.db"
    saved = db.read_bytes()
    try:
        db.write_bytes(b"this is not a database " * 4096)  # the same file, broken
        deadline = time.time() + 30
        while time.time() < deadline and a.client.get("/ready").json()["registry_ok"]:
            time.sleep(0.2)
        ready = a.client.get("/ready").json()
        assert ready["registry_ok"] is False and "registry unreachable" in ready["last_error"]
        assert ready["ready"] is True and ready["models"] == {"champion": "2"}
        for _ in range(10):
            response = a.predict(KNOWN)
            assert response.status_code == 200
            assert response.json()["predictions"][0]["model_version"] == "2"
        text = a.client.get("/metrics").text
        assert _metric(text, "closedloop_registry_up") == 0
        assert _metric(text, "closedloop_model_reload_failures_total") >= 1
    finally:
        db.write_bytes(saved)
    # the registry is back: the service follows the alias again
    client_for(world).set_registered_model_alias(world.model_name, CHAMPION, "1")
    deadline = time.time() + 30
    while time.time() < deadline and a.client.get("/ready").json()["models"] != {"champion": "1"}:
        time.sleep(0.2)
    ready = a.client.get("/ready").json()
    assert ready["models"] == {"champion": "1"} and ready["registry_ok"] is True
    assert a.predict(KNOWN).json()["predictions"][0]["model_version"] == "1"


def test_serving_without_a_champion_exits_with_a_clear_message(home):
    server = Server(home.home)
    try:
        code = server.proc.wait(timeout=120)
        output = server.output.read_text()
    finally:
        server.stop()
    assert code != 0 and "no version under the alias 'champion'" in output
