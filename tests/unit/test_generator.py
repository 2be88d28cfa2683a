"""The synthetic hotel-booking generator: deterministic, on-schema, learnable, driftable."""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING

import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from closedloop.core.batches import read_batch
from closedloop.core.settings import PACKAGE_USECASES
from closedloop.core.usecase import ACCEPTED_DTYPES, UseCase
from closedloop.usecases.hotel.generator import DriftSpec, generate_day, write_batches

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

USECASE = UseCase.from_yaml(PACKAGE_USECASES / "hotel_bookings.yaml")
START = date(2026, 1, 5)
DRIFT_START = date(2026, 2, 2)
CATEGORICAL = ["hotel", "market_segment", "distribution_channel", "deposit_type", "customer_type"]


def _days(start: date, n: int, drift: DriftSpec | None = None, seed: int = 7) -> pd.DataFrame:
    frames = [generate_day(start + timedelta(d), seed=seed, drift=drift) for d in range(n)]
    return pd.concat(frames, ignore_index=True)


def _features(df: pd.DataFrame) -> pd.DataFrame:
    x = df[USECASE.feature_columns]
    return x.astype({c: "category" for c in CATEGORICAL})


def _fit(df: pd.DataFrame) -> HistGradientBoostingClassifier:
    model = HistGradientBoostingClassifier(
        categorical_features="from_dtype", max_iter=60, random_state=0
    )
    # One thread: OpenMP spinning makes small fits crawl on a busy machine.
    with threadpool_limits(limits=1):
        return model.fit(_features(df), df["is_canceled"])


def _auc(model: HistGradientBoostingClassifier, df: pd.DataFrame) -> float:
    with threadpool_limits(limits=1):
        scores = model.predict_proba(_features(df))[:, 1]
    return float(roc_auc_score(df["is_canceled"], scores))


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    """Ten undrifted days."""
    return _days(START, 10)


def test_same_inputs_give_identical_frames() -> None:
    drift = DriftSpec(start=START, covariate=0.5, concept=0.5, new_category=True)
    pd.testing.assert_frame_equal(
        generate_day(START, drift=drift), generate_day(START, drift=drift)
    )


@pytest.mark.parametrize(
    ("day", "seed"),
    [
        pytest.param(START, 8, id="other-seed"),
        pytest.param(START + timedelta(days=7), 7, id="other-day"),
    ],
)
def test_different_inputs_differ(day: date, seed: int) -> None:
    base = generate_day(START, seed=7)
    changed = generate_day(day, seed=seed)
    n = min(len(base), len(changed))
    assert not base["customer_id"].iloc[:n].equals(changed["customer_id"].iloc[:n])


def test_zero_strength_drift_changes_nothing() -> None:
    no_op = DriftSpec(start=START, covariate=0.0, concept=0.0)
    pd.testing.assert_frame_equal(generate_day(START), generate_day(START, drift=no_op))


def test_row_count_varies_around_rows_per_day() -> None:
    counts = [len(generate_day(START + timedelta(d), rows_per_day=400)) for d in range(7)]
    assert all(320 <= c <= 480 for c in counts)
    assert len(set(counts)) > 1


def test_columns_match_the_usecase(history: pd.DataFrame) -> None:
    assert list(history.columns) == list(USECASE.columns)
    for name, spec in USECASE.columns.items():
        column = history[name]
        assert str(column.dtype) in ACCEPTED_DTYPES[spec.type], name
        assert column.notna().all(), name
        if spec.categories:
            assert set(column) <= set(spec.categories), name
        if spec.min is not None:
            assert column.min() >= spec.min, name
        if spec.max is not None:
            assert column.max() <= spec.max, name
    assert history["booking_id"].is_unique
    assert (history["adr"] > 0).all()


def test_timestamps_lie_inside_their_day() -> None:
    for offset in range(3):
        day = START + timedelta(days=offset)
        frame = generate_day(day)
        midnight = pd.Timestamp(day, tz="UTC")
        assert (frame["booking_ts"] >= midnight).all()
        assert (frame["booking_ts"] < midnight + pd.Timedelta(days=1)).all()
        assert (frame["booking_ts"].dt.floor("s") == frame["booking_ts"]).all()
        assert frame["booking_id"].str.startswith(f"BK-{day:%Y%m%d}-").all()


def test_lead_time_matches_arrival_date(history: pd.DataFrame) -> None:
    booked = history["booking_ts"].dt.floor("D")
    assert (history["arrival_date"] == history["arrival_date"].dt.floor("D")).all()
    assert ((history["arrival_date"] - booked).dt.days == history["lead_time"]).all()


def test_customers_come_back(history: pd.DataFrame) -> None:
    visits = history["customer_id"].value_counts()
    assert (visits >= 2).sum() > 300
    assert history.groupby("customer_id")["is_repeated_guest"].nunique().max() == 1


def test_cancellation_rate_is_realistic(history: pd.DataFrame) -> None:
    assert 0.28 <= history["is_canceled"].mean() <= 0.42


def test_label_is_learnable(history: pd.DataFrame) -> None:
    model = _fit(history)
    auc = _auc(model, _days(START + timedelta(days=10), 3))
    assert auc > 0.7


@pytest.mark.parametrize(
    ("column", "statistic"),
    [
        pytest.param("lead_time", lambda s: s.mean(), id="lead-time-longer"),
        pytest.param("market_segment", lambda s: (s == "Online TA").mean(), id="more-online-ta"),
        pytest.param("adr", lambda s: s.mean(), id="prices-higher"),
    ],
)
def test_covariate_drift_is_visible(column: str, statistic: Callable[[pd.Series], float]) -> None:
    drift = DriftSpec(start=DRIFT_START, covariate=1.0)
    before = statistic(_days(DRIFT_START, 3)[column])
    after = statistic(_days(DRIFT_START, 3, drift)[column])
    assert after > 1.2 * before


def test_concept_drift_hurts_a_pre_drift_model(history: pd.DataFrame) -> None:
    drift = DriftSpec(start=DRIFT_START, concept=1.0)
    model = _fit(history)
    before = _auc(model, _days(DRIFT_START - timedelta(days=4), 4))
    drifted = _days(DRIFT_START, 4, drift)
    after = _auc(model, drifted)
    assert before - after >= 0.05
    retrained = _fit(_days(DRIFT_START + timedelta(days=4), 10, drift))
    assert _auc(retrained, drifted) > after + 0.05


def test_ramp_reaches_full_strength() -> None:
    drift = DriftSpec(start=DRIFT_START, covariate=1.0, ramp_days=4)
    weights = [drift.weight(DRIFT_START + timedelta(days=d)) for d in range(-1, 6)]
    assert weights == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_new_category_appears_only_from_start() -> None:
    drift = DriftSpec(start=DRIFT_START, new_category=True)
    before = _days(DRIFT_START - timedelta(days=2), 2, drift)
    after = _days(DRIFT_START, 2, drift)
    assert "Aviation" not in set(before["market_segment"])
    assert 0.06 <= (after["market_segment"] == "Aviation").mean() <= 0.14
    assert "Aviation" not in (USECASE.columns["market_segment"].categories or [])


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"covariate": 1.5}, id="covariate-above-one"),
        pytest.param({"concept": -0.1}, id="negative-concept"),
        pytest.param({"ramp_days": -1}, id="negative-ramp"),
    ],
)
def test_drift_spec_rejects_bad_values(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        DriftSpec(start=DRIFT_START, **bad)  # type: ignore[arg-type]


def test_write_batches_round_trips(tmp_path: Path) -> None:
    landing = tmp_path / "landing" / "hotel_bookings"
    paths = write_batches(landing, START, 2, rows_per_day=50)
    assert [p.name for p in paths] == ["2026-01-05.csv", "2026-01-06.csv"]
    assert sorted(landing.iterdir()) == paths  # no temp files left behind
    first_line = paths[0].read_text().splitlines()[1]
    assert "+00:00" in first_line
    for path, offset in zip(paths, range(2), strict=True):
        read = read_batch(path, USECASE)
        expected = generate_day(START + timedelta(days=offset), rows_per_day=50)
        pd.testing.assert_frame_equal(read, expected, check_dtype=False)
        for name, spec in USECASE.columns.items():
            assert str(read[name].dtype) in ACCEPTED_DTYPES[spec.type], name
        assert str(read["adr"].dtype) == "float64"
        assert str(read["lead_time"].dtype) == "int64"
        assert str(read["booking_ts"].dtype).startswith("datetime64[")


def test_rewriting_a_day_is_byte_identical(tmp_path: Path) -> None:
    first = write_batches(tmp_path, START, 1, rows_per_day=60)[0].read_bytes()
    second = write_batches(tmp_path, START, 1, rows_per_day=60)[0].read_bytes()
    assert first
    assert first == second


def test_booking_ids_stay_five_digits_and_widen_only_past_99999_a_day() -> None:
    day = date(2026, 3, 2)
    small = generate_day(day, rows_per_day=150)["booking_id"]
    assert small.str.fullmatch(r"BK-20260302-\d{5}").all()
    big = generate_day(day, rows_per_day=120_000)["booking_id"]
    assert len(big) > 100_000
    assert big.str.fullmatch(r"BK-20260302-\d{6}").all()
    assert big.is_unique and big.is_monotonic_increasing  # the id order is the row order
