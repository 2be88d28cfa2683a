"""The training-set snapshot read in chunks gives the rows the whole frame would."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from closedloop.core.derive import event_table
from closedloop.core.modeling import (
    TrainingConfig,
    build_model,
    evaluate,
    evaluate_chunks,
    model_inputs,
    sampled_parts,
    split_by_time,
)
from closedloop.core.settings import PACKAGE_USECASES
from closedloop.core.training_set import streamed_parts
from closedloop.core.usecase import UseCase
from closedloop.usecases.hotel.generator import generate_day

START = date(2026, 1, 5)
DAYS = 28
LABEL = "is_canceled"
KNOWN_AT = "arrival_date"
ORDER = ("event_timestamp", "booking_id")
HOTEL = UseCase.from_yaml(PACKAGE_USECASES / "hotel_bookings.yaml")


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> tuple[pd.DataFrame, str]:
    """A training frame in the split's order, with nulls, and its Parquet snapshot."""
    days = [generate_day(START + timedelta(d), rows_per_day=150) for d in range(DAYS)]
    df = event_table(pd.concat(days, ignore_index=True), HOTEL)
    df = df.rename(columns={"booking_ts": "event_timestamp"})
    rng = np.random.default_rng(0)
    rate = 0.3 + 0.05 * rng.standard_normal(len(df))
    rate[rng.random(len(df)) < 0.1] = np.nan
    df["hotel_cancel_rate_30d"] = rate
    end = pd.Timestamp(START + timedelta(DAYS), tz="UTC")
    df = df[df[KNOWN_AT] < end].sort_values(list(ORDER), kind="mergesort")
    df = df.reset_index(drop=True)
    path = tmp_path_factory.mktemp("snapshot") / "training_set.parquet"
    df.to_parquet(path, index=False)
    return df, str(path)


def _both(snapshot, config, chunk_rows=97):
    frame, path = snapshot
    whole = sampled_parts(
        split_by_time(
            frame,
            known_at=KNOWN_AT,
            validation_days=config.validation_days,
            holdout_days=config.holdout_days,
            label=LABEL,
            order_by=ORDER,
        ),
        config,
        LABEL,
    )
    streamed = streamed_parts(
        path, config, known_at=KNOWN_AT, label=LABEL, order_by=ORDER, chunk_rows=chunk_rows
    )
    return whole, streamed


@pytest.mark.parametrize(
    "caps",
    [{}, {"refit_rows": 1000}, {"search_rows": 300}, {"search_rows": 300, "refit_rows": 900}],
)
def test_streamed_parts_are_the_whole_frames_parts(snapshot, caps):
    config = TrainingConfig(validation_days=5, holdout_days=5, **caps)
    whole, streamed = _both(snapshot, config)
    for name in ("search_train", "search_validation", "refit"):
        pd.testing.assert_frame_equal(getattr(streamed, name), getattr(whole, name))
    chunks = list(streamed.holdout())
    assert len(chunks) > 1  # the holdout came in several chunks
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), whole.holdout()[0])
    assert streamed.holdout_rows == whole.holdout_rows
    assert (streamed.cutoffs, streamed.sampling) == (whole.cutoffs, whole.sampling)


def test_a_snapshot_out_of_order_is_refused(snapshot, tmp_path):
    frame, _ = snapshot
    path = tmp_path / "shuffled.parquet"
    frame.sample(frac=1.0, random_state=1).to_parquet(path, index=False)
    with pytest.raises(ValueError, match=r"not in \['event_timestamp', 'booking_id'\] order"):
        streamed_parts(
            str(path),
            TrainingConfig(validation_days=5, holdout_days=5, refit_rows=500),
            known_at=KNOWN_AT,
            label=LABEL,
            order_by=ORDER,
        )


def test_metrics_over_chunks_are_the_metrics_over_the_whole_frame(snapshot):
    frame, _ = snapshot
    X, y = model_inputs(frame, label=LABEL, exclude=("booking_id", "customer_id"))
    params = {"learning_rate": 0.1, "max_leaf_nodes": 15, "max_iter": 20}
    with threadpool_limits(1):
        model = build_model("hist_gradient_boosting", params, X, 0).fit(X, y)
        common = {
            "label": LABEL,
            "threshold": 0.4,
            "segments": ("hotel",),
            "min_segment_rows": 50,
            "exclude": ("booking_id", "customer_id"),
        }
        whole = evaluate(model, frame, **common)
        chunks = [frame.iloc[i : i + 333] for i in range(0, len(frame), 333)]
        assert evaluate_chunks(model, chunks, **common) == whole
    assert any(k.startswith("roc_auc.hotel.") for k in whole)
