"""The validation gate blocks bad batches through a real Airflow run: each bad input is
quarantined with a report naming the failed check, the task fails without retrying, and
nothing of the batch reaches the offline or online store while earlier data stays intact."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from datetime import date

import pandas as pd
import pytest

from closedloop.core.settings import load_settings
from closedloop.platform.airflow_runs import run_day
from closedloop.usecases.hotel.generator import DriftSpec, generate_day, write_batches

pytestmark = pytest.mark.integration

GOOD_DAY = date(2026, 1, 1)
BAD_DAY = date(2026, 1, 2)


def _csv(df: pd.DataFrame) -> str:
    return df.to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%S%z")


def _edit(fn):
    """A bad batch made by editing a good day's frame."""

    def make(path):
        path.write_text(_csv(fn(pd.read_csv(path))))

    return make


def _set(column, value, rows=slice(0, 3)):
    def edit(df):
        df[column] = df[column].astype(object)
        df.loc[df.index[rows], column] = value
        return df

    return _edit(edit)


def _write_bytes(data: bytes):
    return lambda path: path.write_bytes(data)


def _unknown_category(path):
    drifted = generate_day(BAD_DAY, rows_per_day=200, drift=DriftSpec(BAD_DAY, new_category=True))
    path.write_text(_csv(drifted))


CORRUPT = bytes(random.Random(0).getrandbits(8) for _ in range(4096))

BAD_INPUTS = [
    pytest.param(
        _edit(lambda df: df.drop(columns=["adr"])),
        "expect_table_columns_to_match_set",
        "adr",
        id="missing-column",
    ),
    pytest.param(
        _edit(lambda df: df.assign(coupon_code="X1")),
        "expect_table_columns_to_match_set",
        "coupon_code",
        id="extra-column",
    ),
    pytest.param(
        _set("adr", "abc"), "expect_column_dtype_to_be_in_type_list", "adr", id="wrong-dtype"
    ),
    pytest.param(
        _set("customer_id", None),
        "expect_column_values_to_not_be_null",
        "customer_id",
        id="null-required",
    ),
    pytest.param(
        _set("lead_time", -5),
        "expect_column_values_to_be_between",
        "lead_time",
        id="negative-lead-time",
    ),
    pytest.param(
        _set("adr", -20.0), "expect_column_values_to_be_between", "adr", id="negative-rate"
    ),
    pytest.param(
        _edit(lambda df: pd.concat([df, df.head(2)])),
        "expect_column_values_to_be_unique",
        "booking_id",
        id="duplicate-ids",
    ),
    pytest.param(_write_bytes(b""), "expect_table_row_count_to_be_between", None, id="empty-file"),
    pytest.param(
        _edit(lambda df: df.head(0)), "expect_table_row_count_to_be_between", None, id="header-only"
    ),
    pytest.param(_write_bytes(CORRUPT), "file_is_readable", None, id="corrupt-file"),
    pytest.param(
        _set("booking_ts", "2026-01-01T10:00:00+00:00"),
        "expect_column_values_to_be_between",
        "booking_ts",
        id="timestamp-before-interval",
    ),
    pytest.param(
        _set("booking_ts", "2099-06-01T10:00:00+00:00"),
        "expect_column_values_to_be_between",
        "booking_ts",
        id="timestamp-in-future",
    ),
    pytest.param(
        _unknown_category,
        "expect_column_values_to_be_in_set",
        "market_segment",
        id="unknown-category",
    ),
    pytest.param(
        _edit(lambda df: df.drop(columns=["is_canceled"])),
        "expect_table_columns_to_match_set",
        "is_canceled",
        id="label-missing",
    ),
    pytest.param(
        _set("is_canceled", None),
        "expect_column_values_to_not_be_null",
        "is_canceled",
        id="label-null",
    ),
    pytest.param(
        _set("is_canceled", 2),
        "expect_column_values_to_be_in_set",
        "is_canceled",
        id="label-not-binary",
    ),
]


def _fingerprint(settings) -> dict[str, str]:
    """Content hashes of every offline partition and of the online store."""
    files = [*sorted(settings.offline_dir.rglob("*.parquet")), settings.feast_dir / "online.db"]
    return {
        str(p.relative_to(settings.home)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files
    }


@pytest.fixture(scope="module")
def good_state(features_dag, tmp_path_factory):
    """A home in which GOOD_DAY ran successfully (shared; each test copies it)."""
    root = tmp_path_factory.mktemp("good") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOSEDLOOP_HOME", str(root))
        settings = load_settings()
        write_batches(settings.landing_dir, GOOD_DAY, 2, rows_per_day=200)
        assert run_day(features_dag, GOOD_DAY).succeeded
    return root


@pytest.mark.parametrize(("corrupt", "expectation", "column"), BAD_INPUTS)
def test_bad_batch_is_quarantined_and_blocked(
    good_state, features_dag, home, corrupt, expectation, column
):
    shutil.copytree(good_state, home.home)
    before = _fingerprint(home)
    bad_path = home.landing_dir / f"{BAD_DAY}.csv"
    corrupt(bad_path)

    outcome = run_day(features_dag, BAD_DAY)

    assert outcome.state == "failed"
    failed = outcome.failed_tasks()[0]
    assert failed in ("extract", "validate")
    assert outcome.task_states[failed] == "failed"
    assert outcome.task_tries[failed] == 1, "a rejected batch must not be retried"
    for downstream in ("clean", "engineer", "load_offline_store", "materialize"):
        assert outcome.task_states[downstream] == "upstream_failed"
    # Quarantined, with a report that names the failed check.
    quarantined = home.quarantine_dir / str(BAD_DAY)
    assert not bad_path.exists()
    assert (quarantined / bad_path.name).exists()
    report = json.loads((quarantined / "report.json").read_text())
    assert report["success"] is False
    assert any(
        f["expectation"] == expectation and (column is None or column in json.dumps(f))
        for f in report["failed"]
    ), report["failed"]
    # Nothing of the batch reached the stores; the good day is intact.
    assert _fingerprint(home) == before
    assert not (home.offline_table_dir("events") / f"{BAD_DAY}.parquet").exists()


def test_rerun_of_a_quarantined_day_fails_with_the_stored_report(good_state, features_dag, home):
    shutil.copytree(good_state, home.home)
    _set("adr", -1.0)(home.landing_dir / f"{BAD_DAY}.csv")
    assert run_day(features_dag, BAD_DAY).state == "failed"
    report = (home.quarantine_dir / str(BAD_DAY) / "report.json").read_text()

    again = run_day(features_dag, BAD_DAY)

    assert again.task_states["extract"] == "failed"
    assert again.task_tries["extract"] == 1, "rejected data is a decision, not a transient error"
    assert (home.quarantine_dir / str(BAD_DAY) / "report.json").read_text() == report


def test_a_corrected_batch_after_quarantine_goes_through(good_state, features_dag, home):
    shutil.copytree(good_state, home.home)
    good = (home.landing_dir / f"{BAD_DAY}.csv").read_text()
    _set("adr", -1.0)(home.landing_dir / f"{BAD_DAY}.csv")
    assert run_day(features_dag, BAD_DAY).state == "failed"

    (home.landing_dir / f"{BAD_DAY}.csv").write_text(good)  # the source re-delivers
    assert run_day(features_dag, BAD_DAY).succeeded
    assert (home.offline_table_dir("events") / f"{BAD_DAY}.parquet").exists()
