"""The serving layer's pure parts: A/B assignment and statistics, the request schema, the
batcher and the prediction-log writer (no server, no stores)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from closedloop.core.ab import arm_for, compare_arms
from closedloop.core.prediction_log import PredictionLog
from closedloop.core.usecase import UseCase
from closedloop.serving.batcher import Batcher
from closedloop.serving.logwriter import PredictionLogWriter
from closedloop.serving.schema import describe_errors, event_model, prediction_model

KEYS = [f"BK-{i:06d}" for i in range(20_000)]


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
def test_the_challenger_gets_its_share_of_keys(share):
    got = np.mean([arm_for(k, share) == "challenger" for k in KEYS])
    assert abs(got - share) < 0.015


def test_arms_are_sticky_and_nested_as_the_share_grows():
    small = {k for k in KEYS if arm_for(k, 0.2) == "challenger"}
    large = {k for k in KEYS if arm_for(k, 0.5) == "challenger"}
    assert small < large  # ramping the share up never moves a key back to the champion
    assert small == {k for k in KEYS if arm_for(k, 0.2) == "challenger"}
    assert {arm_for(k, 0.0) for k in KEYS} == {"champion"}
    assert {arm_for(k, 1.0) for k in KEYS} == {"challenger"}
    with pytest.raises(ValueError, match="challenger_share"):
        arm_for("x", 1.5)


def _arm(arm: str, n: int, noise: float, rng: np.random.Generator) -> pd.DataFrame:
    label = rng.integers(0, 2, n)
    return pd.DataFrame(
        {
            "arm": arm,
            "model_version": {"champion": "1", "challenger": "2"}[arm],
            "label": label,
            "label_known": True,
            "score": 1 / (1 + np.exp(-(label - 0.5 + rng.normal(0, noise, n)))),
        }
    )


@pytest.mark.parametrize(
    ("champion_noise", "challenger_noise", "verdict"),
    [
        pytest.param(1.5, 0.5, "challenger_better", id="challenger-separates-better"),
        pytest.param(0.5, 1.5, "champion_better", id="champion-separates-better"),
        pytest.param(1.0, 1.0, "inconclusive", id="same-model"),
    ],
)
def test_the_verdict_follows_the_bootstrap_interval(champion_noise, challenger_noise, verdict):
    rng = np.random.default_rng(3)
    frame = pd.concat([_arm("champion", 600, champion_noise, rng),
                       _arm("challenger", 600, challenger_noise, rng)])  # fmt: skip
    result = compare_arms(frame, min_labelled=200, resamples=300)
    assert result.verdict == verdict, result.reasons
    assert result.ci_low < result.difference < result.ci_high
    assert result.arms["challenger"].model_versions == ["2"]
    again = compare_arms(frame, min_labelled=200, resamples=300)
    assert (again.ci_low, again.ci_high) == (result.ci_low, result.ci_high)  # seeded


def test_too_few_labelled_rows_is_insufficient_data_and_unknown_labels_do_not_count():
    rng = np.random.default_rng(0)
    frame = pd.concat([_arm("champion", 400, 1.0, rng), _arm("challenger", 400, 1.0, rng)])
    frame.loc[frame["arm"] == "challenger", "label_known"] = [True] * 150 + [False] * 250
    result = compare_arms(frame, min_labelled=200)
    assert result.verdict == "insufficient_data" and result.difference is None
    assert result.arms["challenger"].predictions == 400
    assert result.arms["challenger"].labelled == 150
    assert "challenger: 150 labelled rows" in result.reasons[0]


def _event(usecase, **changes):
    """A valid request event of the shipped hotel declaration, with ``changes``."""
    event = {
        "booking_id": "b", "customer_id": "c", "hotel": "H01", "arrival_date": "2025-06-01",
        "lead_time": 30, "stays_weekend_nights": 1, "stays_week_nights": 2, "adults": 2,
        "children": 0, "adr": 99.5, "market_segment": "Direct", "distribution_channel": "Direct",
        "deposit_type": "No Deposit", "customer_type": "Transient",
        "previous_cancellations": 0, "total_of_special_requests": 1, "is_repeated_guest": 0,
    }  # fmt: skip
    assert set(event) == set(usecase.request_columns)  # the declaration still says so
    event.update(changes)
    return {k: v for k, v in event.items() if v is not ...}


def test_the_request_is_the_id_the_keys_and_the_columns_features_are_computed_from(usecase):
    request = usecase.request_columns
    # the id and the join keys; the columns passed through and those derivations read
    assert request[:3] == ["booking_id", "customer_id", "hotel"]
    assert "arrival_date" in request  # arrival_month/arrival_weekday are derived from it
    assert {"stays_weekend_nights", "stays_week_nights", "adults", "children"} <= set(request)
    # not the label, its known-at time, the event's timestamp or derived features
    assert not {"is_canceled", "booking_ts", "stay_nights", "arrival_month"} & set(request)
    ok = event_model(usecase).model_validate(_event(usecase))
    assert ok.arrival_date.isoformat() == "2025-06-01"


def test_a_category_declared_to_flag_new_values_accepts_them_the_others_refuse(usecase):
    raw = usecase.model_dump(mode="json", exclude_defaults=True)
    raw["columns"]["market_segment"]["new_categories"] = "flag"
    flagged = UseCase.from_dict(raw)
    assert event_model(flagged).model_validate(_event(flagged, market_segment="Aviation"))
    with pytest.raises(ValidationError, match="market_segment"):
        event_model(usecase).model_validate(_event(usecase, market_segment="Aviation"))


def test_the_response_answers_under_the_declared_response_id(usecase):
    raw = usecase.model_dump(mode="json", exclude_defaults=True)
    raw["serving"] = {"response_id": "reservation"}
    fields = prediction_model(UseCase.from_dict(raw)).model_fields
    assert "reservation" in fields and "booking_id" not in fields
    assert "booking_id" in prediction_model(usecase).model_fields


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"booking_id": ...}, "'booking_id' is required", id="missing"),
        pytest.param({"booking_id": 1}, "field 'booking_id': Input should be a valid string",
                     id="int-for-string"),
        pytest.param({"adults": "2"}, "field 'adults': Input should be a valid integer",
                     id="string-for-int"),
        pytest.param({"adults": 99}, "field 'adults': Input should be less than or equal to 10",
                     id="range"),
        pytest.param({"arrival_date": "June"}, "field 'arrival_date': Input should be a valid date",
                     id="not-a-date"),
        pytest.param({"hotel": "H99"}, "field 'hotel': Input should be", id="category"),
        pytest.param({"x": 1}, "field 'x' is not a field of an event", id="unknown"),
    ],
)  # fmt: skip
def test_validation_errors_name_the_field(usecase, change, message):
    from pydantic import TypeAdapter

    adapter = TypeAdapter(list[event_model(usecase)])
    with pytest.raises(ValidationError) as caught:
        adapter.validate_python([_event(usecase, **change)])
    assert any(message in m for m in describe_errors(caught.value.errors(), single=True))
    listed = describe_errors(caught.value.errors(), single=False)
    assert all(m.startswith("field '[0].") for m in listed)


def test_the_batcher_scores_ready_requests_together_and_returns_each_its_own():
    calls: list[int] = []

    def score(rows):
        calls.append(len(rows))
        return [r["n"] * 10 for r in rows]

    async def requests():
        batcher = Batcher(score, max_rows=5)
        alone = await batcher.submit_async([{"n": 0}, {"n": 100}])  # waits for nobody
        # ready together (one loop step): one call, split where max_rows would pass
        together = [batcher.submit_async([{"n": i}, {"n": i + 100}]) for i in range(1, 5)]
        return [alone, *await asyncio.gather(*together)]

    answers = asyncio.run(requests())
    assert answers == [[i * 10, (i + 100) * 10] for i in range(5)]
    assert calls == [2, 4, 4]  # the first alone; then 8 rows in calls of at most 5


def test_a_scoring_failure_fails_the_waiting_requests_not_the_batcher():
    state = {"fail": True}

    def score(rows):
        if state.pop("fail", False):
            raise RuntimeError("online store down")
        return rows

    async def requests():
        batcher = Batcher(score, max_rows=10)
        failed = batcher.submit_async([1]), batcher.submit_async([2])
        for future in failed:
            with pytest.raises(RuntimeError, match="online store down"):
                await future
        return await batcher.submit_async([3])

    assert asyncio.run(requests()) == [3]


def _records(n: int, start: int = 0) -> list[dict]:
    when = datetime(2026, 2, 1, 12, tzinfo=UTC)
    return [
        {"prediction_id": f"p{start + i:05d}", "source": "online", "predicted_at": when,
         "model_name": "m", "model_version": "1", "arm": "champion", "score": 0.5,
         "decision": 1, "booking_id": f"b{start + i}"}
        for i in range(n)
    ]  # fmt: skip


class _FlakyLog(PredictionLog):
    def __init__(self, root, failures: int) -> None:
        super().__init__(root)
        self.failures = failures

    def append_online(self, records, day):
        if self.failures:
            self.failures -= 1
            raise OSError("disk full")
        return super().append_online(records, day)


def test_the_log_writer_flushes_everything_on_close(tmp_path):
    log = PredictionLog(tmp_path)
    writer = PredictionLogWriter(log, flush_seconds=3600, max_records=10_000)
    for k in range(5):
        writer.add(_records(7, start=k * 7))
    assert writer.pending == 35 and not list(tmp_path.rglob("*.parquet"))
    writer.close()
    read = log.read(datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 2, 2, tzinfo=UTC))
    assert sorted(read["prediction_id"]) == [f"p{i:05d}" for i in range(35)]


def test_records_of_models_reading_other_columns_are_logged_with_nulls_where_absent(tmp_path):
    log = PredictionLog(tmp_path)
    writer = PredictionLogWriter(log, flush_seconds=3600)
    a, b, c = _records(3)
    writer.add([{**a, "lead_time": 10, "adr": 99.5}])
    writer.add([{**b, "model_version": "2", "lead_time": 20, "segment": "Online TA"}])
    writer.add([{**c, "adr": 80.0, "lead_time": 30}])  # model 1 again, keys in another order
    writer.close()
    read = log.read(datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 2, 2, tzinfo=UTC))
    read = read.sort_values("prediction_id").reset_index(drop=True)
    assert read["prediction_id"].tolist() == ["p00000", "p00001", "p00002"]
    assert read["model_version"].tolist() == ["1", "2", "1"]
    assert read["lead_time"].tolist() == [10, 20, 30]
    assert read["adr"].tolist()[0] == 99.5 and pd.isna(read["adr"][1]) and read["adr"][2] == 80.0
    assert read["segment"].isna().tolist() == [True, False, True]
    assert read["segment"][1] == "Online TA"


def test_a_flush_across_midnight_writes_each_record_under_its_own_utc_day(tmp_path):
    log = PredictionLog(tmp_path)
    writer = PredictionLogWriter(log, flush_seconds=3600)
    late, early = _records(2)
    writer.add([{**late, "predicted_at": datetime(2026, 2, 1, 23, 59, 59, tzinfo=UTC)}])
    writer.add([{**early, "predicted_at": datetime(2026, 2, 2, 0, 0, 1, tzinfo=UTC)}])
    writer.close()
    days = {p.parent.name: len(pd.read_parquet(p)) for p in tmp_path.rglob("*.parquet")}
    assert days == {"2026-02-01": 1, "2026-02-02": 1}
    read = log.read(datetime(2026, 2, 2, tzinfo=UTC), datetime(2026, 2, 3, tzinfo=UTC))
    assert read["prediction_id"].tolist() == ["p00001"]


def test_a_failed_flush_is_retried_and_loses_nothing(tmp_path):
    outcomes: list[tuple[int, bool]] = []
    log = _FlakyLog(tmp_path, failures=1)
    writer = PredictionLogWriter(
        log, flush_seconds=0.05, on_flush=lambda n, ok: outcomes.append((n, ok))
    )
    writer.add(_records(4))
    deadline = time.time() + 5
    while time.time() < deadline and writer.written < 4:
        time.sleep(0.02)
    writer.close()
    assert outcomes[0] == (4, False) and (4, True) in outcomes
    read = log.read(datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 2, 2, tzinfo=UTC))
    assert len(read) == 4 and read["prediction_id"].is_unique


def test_the_ab_test_task_reports_per_arm_performance_from_the_log(home):
    """The monitoring DAG's ab_test task on a log whose challenger separates better."""
    import json

    from closedloop.core import offline
    from closedloop.operators.monitoring import ABTestReportOperator

    rng = np.random.default_rng(5)
    frames = [_arm("champion", 400, 2.0, rng), _arm("challenger", 400, 0.4, rng)]
    log = pd.concat(frames, ignore_index=True)
    n = len(log)
    log = log.assign(
        prediction_id=[f"p{i:05d}" for i in range(n)],
        source="online",
        predicted_at=datetime(2026, 2, 10, 9, tzinfo=UTC),
        model_name="hotel_cancellation",
        decision=(log["score"] > 0.5).astype(int),
        booking_id=[f"BK-{i:05d}" for i in range(n)],
    )
    PredictionLog(home.prediction_log_dir).append_online(log.drop(columns="label"), "2026-02-10")
    outcomes = pd.DataFrame(
        {
            "booking_id": log["booking_id"],
            "is_canceled": log["label"],
            # a tenth of the stays begin after the interval: their outcome is not known yet
            "arrival_date": [datetime(2026, 2, 12 if i % 10 else 20, tzinfo=UTC) for i in range(n)],
        }
    )
    offline.write_partition(outcomes, home.offline_table_dir("events"), "2026-02-10")
    context = {
        "data_interval_start": datetime(2026, 2, 14, tzinfo=UTC),
        "data_interval_end": datetime(2026, 2, 15, tzinfo=UTC),
        "ti": None,
        "run_id": "manual__ab",
    }
    report = ABTestReportOperator(task_id="ab_test", window_days=14).execute(context)
    assert report["verdict"] == "challenger_better" and report["ci_low"] > 0
    assert report["arms"]["champion"]["predictions"] == 400
    assert report["arms"]["champion"]["labelled"] == 360  # 40 outcomes not known by the end
    assert report["arms"]["challenger"]["model_versions"] == ["2"]
    written = home.home / "reports" / "hotel_bookings" / "2026-02-14" / "ab_test.json"
    assert json.loads(written.read_text())["verdict"] == "challenger_better"
