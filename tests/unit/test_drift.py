"""The drift check of the monitoring DAG (no Airflow), on generated hotel bookings.

The reference is 10 days of ``generate_day`` (~3,900 bookings) through ``event_table``;
current windows are 3 days (~1,100 bookings). All scenarios use one policy: the use
case's 14 comparable columns with the default methods. Its dataset-drift threshold is
0.2 instead of the default 0.3: the generator's covariate drift moves 3 of the 14
columns directly (lead_time, adr, market_segment; 3/14 = 0.21) and 0-3 more through
them, so at 0.3 only some seeds and seasons reach dataset drift, while a stable 3-day
window drifts at most one column (adr, which follows the season).

Evidently is imported once (seconds); its reports are computed once per module.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from closedloop.core.derive import event_table
from closedloop.core.drift import (
    DriftPolicy,
    DriftResult,
    add_to_workspace,
    detect_drift,
    run_drift,
    sample,
)
from closedloop.core.drift_report import COLUMN_TYPE, SHARE_TYPE
from closedloop.core.settings import PACKAGE_USECASES
from closedloop.core.usecase import UseCase
from closedloop.usecases.hotel.generator import DriftSpec, generate_day

MAY = date(2024, 5, 1)
SEPTEMBER = date(2024, 9, 1)
REFERENCE_DAYS, CURRENT_DAYS = 10, 3
COVARIATE_COLUMNS = {"lead_time", "adr", "market_segment"}

HOTEL = UseCase.from_yaml(PACKAGE_USECASES / "hotel_bookings.yaml")


def window(start: date, days: int, seed: int, drift: DriftSpec | None = None) -> pd.DataFrame:
    frames = [generate_day(start + timedelta(d), seed=seed, drift=drift) for d in range(days)]
    return event_table(pd.concat(frames, ignore_index=True), HOTEL)


def reference(start: date, seed: int) -> pd.DataFrame:
    return window(start, REFERENCE_DAYS, seed)


def current(start: date, seed: int, offset: int = 0, **drift: object) -> pd.DataFrame:
    begin = start + timedelta(days=REFERENCE_DAYS + offset)
    spec = DriftSpec(start=begin, **drift) if drift else None  # type: ignore[arg-type]
    return window(begin, CURRENT_DAYS, seed, spec)


def with_score(frame: pd.DataFrame, shift: float = 0.0) -> pd.DataFrame:
    """A stand-in model score (a fixed function of the features), optionally shifted on
    the logit scale as a miscalibrated or changed model would be."""
    logit = (
        -2.0
        + 0.5 * np.log1p(frame["lead_time"].to_numpy(float))
        + 2.0 * (frame["deposit_type"] == "Non Refund").to_numpy()
        - 0.4 * frame["total_of_special_requests"].to_numpy()
        + shift
    )
    return frame.assign(score=1.0 / (1.0 + np.exp(-logit)))


@pytest.fixture(scope="module")
def usecase() -> UseCase:
    return UseCase.from_yaml(PACKAGE_USECASES / "hotel_bookings.yaml")


@pytest.fixture(scope="module")
def policy(usecase: UseCase) -> DriftPolicy:
    return DriftPolicy.for_usecase(usecase, drift_share_threshold=0.2)


@pytest.fixture(scope="module")
def may_reference() -> pd.DataFrame:
    return reference(MAY, seed=7)


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("drift-reports")


@pytest.fixture(scope="module")
def covariate_run(may_reference, policy, reports) -> tuple[DriftResult, object]:
    return run_drift(
        may_reference,
        current(MAY, seed=7, covariate=1.0),
        policy,
        html_path=reports / "covariate" / "drift.html",
        json_path=reports / "covariate" / "drift.json",
    )


@pytest.fixture(scope="module")
def stable_run(may_reference, policy) -> tuple[DriftResult, object]:
    return run_drift(may_reference, current(MAY, seed=7), policy)


# -- the policy -----------------------------------------------------------------------------


def test_policy_for_usecase_types_columns_by_declaration(usecase: UseCase) -> None:
    policy = DriftPolicy.for_usecase(usecase)
    assert len(policy.columns) == 14
    assert "customer_id" not in policy.columns  # an id, not a feature
    assert "arrival_date" not in policy.columns  # a time
    assert usecase.label.column not in policy.columns
    assert set(policy.categorical) == {
        "hotel",
        "market_segment",
        "distribution_channel",
        "deposit_type",
        "customer_type",
    }
    assert (policy.drift_share_threshold, policy.max_rows) == (0.3, 50_000)
    with pytest.raises(ValueError, match="arrival_date"):
        DriftPolicy.for_usecase(usecase, columns=("lead_time", "arrival_date"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param({"columns": ()}, "at least one column", id="no-columns"),
        pytest.param({"columns": ("a", "a")}, "twice", id="duplicate"),
        pytest.param({"columns": ("a", "score")}, "prediction column", id="score-as-feature"),
        pytest.param({"columns": ("a",), "categorical": ("b",)}, "not checked", id="stray-cat"),
        pytest.param({"columns": ("a",), "max_rows": 0}, "max_rows", id="max-rows"),
        pytest.param({"columns": ("a",), "drift_share_threshold": 0}, "share", id="share"),
    ],
)
def test_policy_rejects_inconsistent_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DriftPolicy(**kwargs)


# -- verdicts on generated data ---------------------------------------------------------------


@pytest.mark.parametrize(
    "start, seed, offset",
    [
        pytest.param(MAY, 7, 0, id="may-next-3-days"),
        pytest.param(MAY, 7, 7, id="may-a-week-later"),
        pytest.param(SEPTEMBER, 23, 0, id="september-other-seed"),
    ],
)
def test_stable_window_raises_no_alarm(start, seed, offset, may_reference, policy) -> None:
    ref = may_reference if (start, seed) == (MAY, 7) else reference(start, seed)
    result, _ = run_drift(ref, current(start, seed, offset), policy)
    assert not result.dataset_drift, result.summary()
    assert len(result.drifted_columns) <= 1, result.summary()
    assert result.prediction_drift is None  # no score in the windows
    assert not result.sampled


def test_covariate_drift_is_dataset_drift(covariate_run, policy) -> None:
    result, _ = covariate_run
    assert set(result.drifted_columns) >= COVARIATE_COLUMNS, result.summary()
    assert result.dataset_drift
    assert result.drift_share == pytest.approx(len(result.drifted_columns) / len(policy.columns))
    assert result.drift_share >= policy.drift_share_threshold
    # the statistic is the one each kind of column is tested with, and it crossed the bar
    assert result.column_kinds["market_segment"] == "categorical"
    assert result.column_kinds["lead_time"] == "numerical"
    for column in COVARIATE_COLUMNS:
        assert result.column_scores[column] >= 0.1
    assert "wasserstein" in result.method and "psi" in result.method


def test_covariate_drift_in_another_season_and_seed(policy) -> None:
    result, _ = run_drift(
        reference(SEPTEMBER, seed=23), current(SEPTEMBER, seed=23, covariate=1.0), policy
    )
    assert set(result.drifted_columns) >= COVARIATE_COLUMNS, result.summary()
    assert result.dataset_drift


def test_new_category_drifts_its_column(may_reference, policy, stable_run) -> None:
    result, _ = run_drift(may_reference, current(MAY, seed=7, new_category=True), policy)
    stable, _ = stable_run
    assert "market_segment" in result.drifted_columns, result.summary()
    assert "market_segment" not in stable.drifted_columns
    # 10 % of the bookings in a segment the reference never saw
    assert result.column_scores["market_segment"] > 0.3
    assert result.column_scores["market_segment"] > 10 * stable.column_scores["market_segment"]
    # quarantine is the hotel's declared policy: a batch with it never gets here
    assert result.new_categories == {}


def test_a_column_declared_to_flag_new_categories_names_them_in_the_result(
    usecase, may_reference
) -> None:
    raw = usecase.model_dump(mode="json", exclude_defaults=True)
    raw["columns"]["market_segment"]["new_categories"] = "flag"
    flagging = DriftPolicy.for_usecase(UseCase.from_dict(raw), drift_share_threshold=0.2)
    assert flagging.flagged == {
        "market_segment": tuple(usecase.columns["market_segment"].categories)
    }
    drifted = current(MAY, seed=7, new_category=True)
    want = drifted["market_segment"].value_counts()
    want = {
        k: int(v) for k, v in want.items() if k not in usecase.columns["market_segment"].categories
    }
    assert want, "the generator's new category is in the window"
    # counted over every row, even when the comparison samples
    small = DriftPolicy.for_usecase(UseCase.from_dict(raw), drift_share_threshold=0.2, max_rows=50)
    for policy in (flagging, small):
        result = detect_drift(may_reference, drifted, policy)
        assert result.new_categories == {"market_segment": want}
        assert f"new market_segment categories: {', '.join(want)}" in result.summary()
        assert DriftResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    assert detect_drift(may_reference, current(MAY, seed=7), flagging).new_categories == {}


@pytest.mark.parametrize(
    "shift, drifted",
    [
        pytest.param(0.0, False, id="same-model"),
        pytest.param(1.0, True, id="score-shifted"),
    ],
)
def test_prediction_drift_follows_the_score(shift, drifted, may_reference, policy, stable_run):
    result, _ = run_drift(
        with_score(may_reference), with_score(current(MAY, seed=7), shift), policy
    )
    assert result.prediction_drift is drifted
    assert result.prediction_score is not None
    assert (result.prediction_score >= policy.num_threshold) is drifted
    # the score is not a feature: the feature verdicts are those without it
    stable, _ = stable_run
    assert result.drifted_columns == stable.drifted_columns
    assert "score" not in result.column_scores


def test_prediction_drift_needs_a_reference_score(may_reference, policy) -> None:
    small = DriftPolicy(columns=("lead_time", "market_segment"))
    result, _ = run_drift(may_reference, with_score(current(MAY, seed=7)), small)
    assert result.prediction_drift is None  # a training set carries no score
    with pytest.raises(ValueError, match=r"'score'.*missing from current"):
        run_drift(with_score(may_reference), current(MAY, seed=7), policy)


# -- sampling ---------------------------------------------------------------------------------


def test_sample_is_deterministic_and_keeps_order() -> None:
    frame = pd.DataFrame({"x": np.arange(10_000)})
    same, sampled = sample(frame, 10_000, seed=1)
    assert same is frame and not sampled
    a, sampled = sample(frame, 1_000, seed=1)
    b, _ = sample(frame, 1_000, seed=1)
    c, _ = sample(frame, 1_000, seed=2)
    assert sampled and len(a) == 1_000
    assert a.index.equals(b.index)
    assert not a.index.equals(c.index)
    assert a.index.is_monotonic_increasing and a.index.is_unique
    with pytest.raises(ValueError, match="max_rows"):
        sample(frame, 0, seed=1)


def test_run_drift_samples_large_windows_reproducibly(may_reference) -> None:
    columns = ("lead_time", "adr", "market_segment")
    policy = DriftPolicy(columns=columns, max_rows=500, seed=11)
    cur = current(MAY, seed=7, covariate=1.0)
    first, _ = run_drift(may_reference, cur, policy)
    again, _ = run_drift(may_reference, cur, policy)
    assert first == again
    assert first.sampled and first.seed == 11
    assert (first.reference_rows, first.current_rows) == (500, 500)
    assert (first.reference_rows_total, first.current_rows_total) == (
        len(may_reference),
        len(cur),
    )
    assert set(first.drifted_columns) == set(columns)  # still seen on 500 rows


# -- outputs ----------------------------------------------------------------------------------


def test_html_and_json_are_written(covariate_run, reports) -> None:
    result, _ = covariate_run
    html = (reports / "covariate" / "drift.html").read_text()
    assert html.lstrip().lower().startswith("<html") or "<!doctype html" in html[:200].lower()
    assert "market_segment" in html
    data = json.loads((reports / "covariate" / "drift.json").read_text())
    _, failed, share, _ = _checked(data)
    assert share == pytest.approx(result.drift_share)
    assert failed == set(result.drifted_columns)
    # Evidently's own ValueDrift (the distributions) of exactly the drifted columns
    shown = {
        t["metric_config"]["params"]["column"]: t["status"]
        for t in data["tests"]
        if t["metric_config"]["params"]["type"].endswith(":ValueDrift")
    }
    assert shown == dict.fromkeys(result.drifted_columns, "FAIL")


@pytest.mark.parametrize(
    "covariate", [pytest.param(0.0, id="stable"), pytest.param(1.0, id="covariate-drift")]
)
def test_the_verdict_without_a_report_is_the_reports_verdict(covariate, may_reference, policy):
    """detect_drift calls Evidently's stat tests directly; the report runs them through
    its metrics. Every column's statistic and test outcome must be the report's."""
    cur = with_score(current(MAY, seed=7, covariate=covariate), shift=0.5 * covariate)
    verdict = detect_drift(with_score(may_reference), cur, policy)
    always = dataclasses.replace(policy, full_report="always")  # the preset on a calm day too
    reported, snapshot = run_drift(with_score(may_reference), cur, always)
    assert verdict == reported
    data = snapshot.dict()
    values = {
        m["config"]["column"]: m["value"]
        for m in data["metrics"]
        if m["config"]["type"].endswith(":ValueDrift")
    }
    failed = {
        t["metric_config"]["params"]["column"]
        for t in data["tests"]
        if t["metric_config"]["params"]["type"].endswith(":ValueDrift") and t["status"] == "FAIL"
    }
    assert set(values) == {*policy.columns, "score"}
    for column in policy.columns:
        assert verdict.column_scores[column] == pytest.approx(values[column], rel=1e-12), column
    assert verdict.prediction_score == pytest.approx(values["score"], rel=1e-12)
    assert failed == set(verdict.drifted_columns) | (
        {"score"} if verdict.prediction_drift else set()
    )


def _checked(data: dict) -> tuple[dict[str, float], set[str], float, str]:
    """The check's own metrics in a snapshot's JSON: each column's score, the columns
    whose test failed, the share and the share test's status."""
    scores = {
        m["config"]["column"]: m["value"]
        for m in data["metrics"]
        if m["config"]["type"] == COLUMN_TYPE
    }
    failed = {
        t["metric_config"]["params"]["column"]
        for t in data["tests"]
        if t["metric_config"]["params"]["type"] == COLUMN_TYPE and t["status"] == "FAIL"
    }
    (share,) = [m["value"] for m in data["metrics"] if m["config"]["type"] == SHARE_TYPE]
    (status,) = [
        t["status"] for t in data["tests"] if t["metric_config"]["params"]["type"] == SHARE_TYPE
    ]
    return scores, failed, share, status


@pytest.mark.parametrize(
    ("covariate", "methods"),
    [
        pytest.param(0.0, {}, id="stable"),
        pytest.param(1.0, {}, id="covariate-drift"),
        # p-values: a column drifts below the threshold, and the test says so
        pytest.param(1.0, {"num_method": "ks", "num_threshold": 0.05}, id="p-values"),
    ],
)
def test_every_report_holds_the_checks_own_statistics(covariate, methods, may_reference, policy):
    """The report is built from the check's statistics: each column's score and test
    outcome, and the share, are the verdict's. Evidently's preset is added only when
    the verdict flags something."""
    policy = dataclasses.replace(policy, **methods)
    cur = with_score(current(MAY, seed=7, covariate=covariate), shift=0.5 * covariate)
    result, snapshot = run_drift(with_score(may_reference), cur, policy)
    data = snapshot.dict()
    scores, failed, share, status = _checked(data)
    assert set(scores) == {*policy.columns, "score"}
    for column in policy.columns:
        assert scores[column] == pytest.approx(result.column_scores[column], rel=1e-12)
    assert scores["score"] == pytest.approx(result.prediction_score, rel=1e-12)
    assert failed == set(result.drifted_columns) | ({"score"} if result.prediction_drift else set())
    assert share == pytest.approx(result.drift_share)
    assert status == ("FAIL" if result.dataset_drift else "SUCCESS")
    shown = {
        m["config"]["column"]
        for m in data["metrics"]
        if m["config"]["type"].endswith(":ValueDrift")
    }
    assert bool(failed) == (covariate > 0)  # the cases are what they claim
    assert shown == failed  # Evidently's own distributions: of what drifted, only


def test_result_round_trips_through_json(covariate_run) -> None:
    result, _ = covariate_run
    text = json.dumps(result.to_dict(), allow_nan=False)
    assert DriftResult.from_dict(json.loads(text)) == result


def test_workspace_gets_one_project_and_every_run(covariate_run, stable_run, tmp_path) -> None:
    from evidently.ui.service.storage.local.base import LocalState
    from evidently.ui.workspace import Workspace

    workspace_dir = tmp_path / "evidently"
    when = datetime(2024, 5, 14, 6, 0, tzinfo=UTC)
    first = add_to_workspace(workspace_dir, "hotel drift", covariate_run[1], timestamp=when)
    second = add_to_workspace(workspace_dir, "hotel drift", stable_run[1])
    assert first != second

    workspace = Workspace(str(workspace_dir))
    (project,) = workspace.search_project("hotel drift")
    assert first.project_id == second.project_id == str(project.id)
    first, second = first.run_id, second.run_id
    assert {str(r) for r in workspace.list_runs(project.id)} == {first, second}
    stored = workspace.get_run(project.id, first)
    assert stored.timestamp == datetime(2024, 5, 14, 6, 0)  # naive UTC, as Evidently keeps it
    (panel,) = workspace.get_dashboard(project.id).panels  # created once, with the project
    assert panel.values[0].metric == SHARE_TYPE  # the check's own share: in every report
    for run in (first, second):
        types = {
            r.metric_value_location.metric.params["type"]
            for r in workspace.get_run(project.id, run).metric_results.values()
        }
        assert SHARE_TYPE in types
    # the dashboard's share panel: one series, a point per run, the check's shares
    import asyncio

    from evidently.ui.service.base import SeriesFilter
    from evidently.ui.service.storage.local.base import InMemoryDataStorage

    wanted = SeriesFilter(tags=[], metadata={}, metric=SHARE_TYPE, metric_labels={})
    storage = InMemoryDataStorage(str(workspace_dir))
    found = asyncio.run(storage.get_data_series(project.id, [wanted], None, None))
    (series,) = found.series
    assert sorted(series.values) == sorted(
        [covariate_run[0].drift_share, stable_run[0].drift_share]
    )
    # what `evidently ui --workspace <dir>` loads: every snapshot must parse
    state = LocalState.load(str(workspace_dir), None)
    assert [p.name for p in state.projects.values()] == ["hotel drift"]
    assert {str(s) for s in state.snapshots[project.id]} == {first, second}


# -- robustness -------------------------------------------------------------------------------


def test_missing_column_is_named(may_reference, policy) -> None:
    cur = current(MAY, seed=7).drop(columns=["market_segment"])
    with pytest.raises(ValueError, match=r"current window.*market_segment"):
        run_drift(may_reference, cur, policy)


def _small(n: int, shift: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x": rng.normal(shift, 1.0, n),
            "const_num": np.full(n, 3),
            "const_cat": np.full(n, "only", dtype=object),
            "flag": rng.random(n) < 0.3,  # boolean: compared as a category
            "nullable": pd.array(rng.integers(0, 4, n), dtype="Int64"),
            "cat": pd.Categorical(rng.choice(["a", "b", "c"], n)),
        }
    )


def test_constant_and_odd_dtypes_do_not_crash() -> None:
    policy = DriftPolicy(columns=("x", "const_num", "const_cat", "flag", "nullable", "cat"))
    ref, cur = _small(800, 0.0, seed=1), _small(600, 0.0, seed=2)
    cur.loc[:20, "nullable"] = pd.NA
    result, _ = run_drift(ref, cur, policy)
    assert result.drifted_columns == []
    assert result.column_scores["const_num"] == 0.0
    assert result.column_scores["const_cat"] == 0.0
    assert result.column_kinds["flag"] == "categorical"
    assert result.column_kinds["nullable"] == "numerical"

    # a constant that changes is drift
    changed = cur.assign(const_num=4, const_cat="other", x=cur["x"] + 1.0)
    result, _ = run_drift(ref, changed, policy)
    assert set(result.drifted_columns) == {"x", "const_num", "const_cat"}
    assert all(v is None or np.isfinite(v) for v in result.column_scores.values())


@pytest.mark.parametrize(
    "change, message",
    [
        pytest.param(lambda f: f.assign(x=np.nan), "'x' has no values", id="all-null"),
        pytest.param(lambda f: f.assign(x=f["x"].astype(str)), "'x' is numerical", id="dtype"),
        pytest.param(lambda f: f.iloc[:0], "no rows", id="empty"),
    ],
)
def test_unusable_current_window_is_explained(change, message) -> None:
    policy = DriftPolicy(columns=("x", "cat"))
    with pytest.raises(ValueError, match=message):
        run_drift(_small(200, 0.0, seed=1), change(_small(200, 0.0, seed=2)), policy)


def test_a_project_of_an_older_closedloop_gains_the_share_panel(stable_run, tmp_path) -> None:
    """Projects made before the check's own metrics plotted Evidently's
    DriftedColumnsCount, which a report without the preset lacks."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel
    from evidently.ui.workspace import Workspace

    workspace = Workspace.create(str(tmp_path))
    project = workspace.create_project("old drift")
    old = PanelMetric(metric="DriftedColumnsCount", metric_labels={"value_type": "share"})
    project.dashboard.add_panel(line_plot_panel(title="old", values=[old]))
    add_to_workspace(tmp_path, "old drift", stable_run[1])
    add_to_workspace(tmp_path, "old drift", stable_run[1])
    metrics = [v.metric for p in workspace.get_dashboard(project.id).panels for v in p.values]
    assert metrics == ["evidently:metric_v2:DriftedColumnsCount", SHARE_TYPE]  # added once
