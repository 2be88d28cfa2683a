"""The training DAG's XComs are typed payloads: each survives its trip through XCom (a
JSON round trip) unchanged, and a dict that is not one is refused, naming what it lacks."""

from __future__ import annotations

import json

import pytest

from closedloop.core.gate import GateDecision
from closedloop.core.payloads import GateOutcome, TrainedModel, TrainingSetRef

BUILT = TrainingSetRef(
    uri="/srv/closedloop/training/run/training_set.parquet", digest="ab" * 32, rows=9597,
    positive_rate=0.31, window_start="2026-01-01T00:00:00+00:00",
    window_end="2026-03-02T00:00:00+00:00", feature_service="hotel_bookings_v1",
    feature_views=["customer_aggregates", "event_features"], features=["lead_time", "adr"],
)  # fmt: skip
TRAINED = TrainedModel(
    run_id="0f" * 16, model_uri="models:/m-0123", threshold=0.42, family="logistic_regression",
    metrics={"roc_auc": 0.81, "roc_auc.hotel.H01": 0.79}, holdout_rows=1200,
)  # fmt: skip
OUTCOME = GateOutcome(
    "3", "challenger",
    GateDecision(blessed=False, reasons=["roc_auc does not beat the champion"],
                 candidate={"roc_auc": 0.70}, champion={"roc_auc": 0.80}, champion_version="2"),
)  # fmt: skip


@pytest.mark.parametrize("payload", [BUILT, TRAINED, OUTCOME], ids=lambda p: type(p).__name__)
def test_a_payload_survives_xcom_unchanged(payload):
    assert type(payload).from_dict(json.loads(json.dumps(payload.to_dict()))) == payload


def test_the_gate_outcome_keeps_the_flat_xcom_shape_its_readers_know():
    assert OUTCOME.to_dict() == {
        "version": "3", "action": "challenger", "blessed": False,
        "reasons": ["roc_auc does not beat the champion"], "candidate": {"roc_auc": 0.70},
        "champion": {"roc_auc": 0.80}, "champion_version": "2",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("cls", "given", "lacks"),
    [
        pytest.param(TrainingSetRef, {"uri": "x", "rows": 1}, "digest", id="training-set"),
        pytest.param(TrainedModel, BUILT.to_dict(), "run_id", id="trained-from-a-training-set"),
        pytest.param(GateOutcome, TRAINED.to_dict(), "version", id="gate-from-a-model"),
    ],
)
def test_a_dict_of_another_kind_is_refused_naming_what_it_lacks(cls, given, lacks):
    with pytest.raises(ValueError, match=rf"not a {cls.__name__}: it lacks .*{lacks}"):
        cls.from_dict(given)
