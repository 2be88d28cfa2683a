"""The monitoring DAG's drift check: has the data the model sees moved away from the data
it was trained on?

:func:`detect_drift` compares a reference window (typically the champion's training set)
with a current window (the latest events, with the model's ``score``) column by column
through Evidently's registered stat tests, pinned so a verdict does not change character
with the window's size: normed Wasserstein distance for numbers and the score, PSI for
categories, each drifted at ``>= 0.1``; windows above ``max_rows`` are sampled with a
recorded seed. :func:`run_drift` adds Evidently's ``DataDriftPreset`` report (HTML, JSON,
workspace) and checks its tests agree with the verdict. A column declared
``new_categories: flag`` has its unseen values counted in the result. Why these methods,
and what the report costs: docs/monitoring.md. Evidently is imported inside functions only.

One module of this size: the verdict and the report must clean and test alike.
"""

from __future__ import annotations

import fcntl
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from closedloop.core.monitoring import FULL_REPORT

if TYPE_CHECKING:
    from closedloop.core.drift_report import ColumnTest
    from closedloop.core.usecase import UseCase

#: use-case column types a drift check can compare (ids, text and times cannot)
NUMERICAL_TYPES = ("int", "float")
CATEGORICAL_TYPES = ("category",)


@dataclass(frozen=True)
class DriftPolicy:
    """What is compared and when a column or the whole window counts as drifted."""

    #: feature columns to check (numerical and categorical; a column's kind comes from
    #: its dtype, see ``categorical``)
    columns: tuple[str, ...]
    #: the model's score: checked for prediction drift when both windows have it
    prediction_column: str | None = "score"
    #: a window with more rows is sampled down to this many (each window separately)
    max_rows: int = 50_000
    #: the sampling seed (recorded in the result)
    seed: int = 0
    #: the window drifted when at least this share of ``columns`` drifted
    drift_share_threshold: float = 0.3
    #: Evidently stattest of numerical columns and the score, and its drift threshold
    num_method: str = "wasserstein"
    num_threshold: float = 0.1
    #: Evidently stattest of categorical columns, and its drift threshold
    cat_method: str = "psi"
    cat_threshold: float = 0.1
    #: numeric columns to compare as categories (e.g. integer codes); columns of a
    #: non-numeric or boolean dtype are categorical anyway
    categorical: tuple[str, ...] = ()
    #: column -> its declared categories, for the columns that accept a new category
    #: and flag it (``new_categories: flag``): the result names the new values
    flagged: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: when ``run_drift`` adds Evidently's full ``DataDriftPreset`` report (every
    #: column's distribution) to the check's own: "on_drift" (a drifted column or score)
    #: or "always"
    full_report: str = "on_drift"

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(self, "categorical", tuple(self.categorical))
        object.__setattr__(self, "flagged", {c: tuple(v) for c, v in dict(self.flagged).items()})
        if not self.columns:
            raise ValueError("a drift policy needs at least one column")
        duplicated = sorted({c for c in self.columns if self.columns.count(c) > 1})
        if duplicated:
            raise ValueError(f"columns listed twice: {duplicated}")
        if self.prediction_column is not None and self.prediction_column in self.columns:
            raise ValueError(
                f"the prediction column {self.prediction_column!r} must not also be a feature"
            )
        unknown = sorted(set(self.categorical) - set(self.columns))
        if unknown:
            raise ValueError(f"categorical columns that are not checked: {unknown}")
        if self.max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {self.max_rows}")
        if not 0.0 < self.drift_share_threshold <= 1.0:
            raise ValueError(
                f"drift_share_threshold must lie in (0, 1], got {self.drift_share_threshold}"
            )
        if self.num_threshold <= 0 or self.cat_threshold <= 0:
            raise ValueError("drift thresholds must be positive")
        if self.full_report not in FULL_REPORT:
            raise ValueError(
                f"full_report is one of {', '.join(FULL_REPORT)}, got {self.full_report!r}"
            )

    @classmethod
    def for_usecase(
        cls, usecase: UseCase, columns: tuple[str, ...] | None = None, **overrides: Any
    ) -> DriftPolicy:
        """A policy over the use case's comparable columns (``int``/``float`` ones as
        numbers, ``category`` ones as categories; ids, text, times and the label are
        skipped), or over ``columns`` of them, typed by the declarations."""
        comparable = [
            c
            for c in usecase.feature_columns
            if usecase.columns[c].type in NUMERICAL_TYPES + CATEGORICAL_TYPES
        ]
        chosen = tuple(columns) if columns is not None else tuple(comparable)
        undeclared = sorted(set(chosen) - set(comparable))
        if undeclared:
            raise ValueError(f"not comparable columns of use case {usecase.name!r}: {undeclared}")
        categorical = tuple(c for c in chosen if usecase.columns[c].type in CATEGORICAL_TYPES)
        flagged = {
            c: tuple(usecase.columns[c].categories or ())
            for c in categorical
            if usecase.columns[c].new_categories == "flag"
        }
        return cls(columns=chosen, categorical=categorical, flagged=flagged, **overrides)

    def describe(self) -> str:
        return (
            f"evidently stat tests (numerical: {self.num_method} >= {self.num_threshold:g}, "
            f"categorical: {self.cat_method} >= {self.cat_threshold:g})"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["columns"], d["categorical"] = list(self.columns), list(self.categorical)
        d["flagged"] = {c: list(v) for c, v in self.flagged.items()}
        return d


@dataclass(frozen=True)
class DriftResult:
    """The verdict of one drift check (JSON-safe through ``to_dict``)."""

    #: share of the checked columns whose drift test failed
    drift_share: float
    drifted_columns: list[str]
    #: the drift statistic per checked column (None where it is not a finite number)
    column_scores: dict[str, float | None]
    dataset_drift: bool
    #: whether the score drifted; None when the windows carry no score to compare
    prediction_drift: bool | None
    reference_rows: int  # rows compared (after sampling)
    current_rows: int
    sampled: bool  # whether either window was sampled down to ``max_rows``
    seed: int
    method: str
    prediction_score: float | None = None
    #: rows of the windows before sampling
    reference_rows_total: int = 0
    current_rows_total: int = 0
    #: per checked column, "numerical" or "categorical"
    column_kinds: dict[str, str] = field(default_factory=dict)
    #: per column declared ``new_categories: flag``, the current window's values outside
    #: its declared categories (all rows, before sampling), with their row counts
    new_categories: dict[str, dict[str, int]] = field(default_factory=dict)

    def summary(self) -> str:
        verdict = "dataset drift" if self.dataset_drift else "no dataset drift"
        drifted = ", ".join(self.drifted_columns) or "none"
        score = {True: "; prediction drift", False: "; no prediction drift", None: ""}
        new = "".join(
            f"; new {column} categories: {', '.join(sorted(values))}"
            for column, values in self.new_categories.items()
        )
        return (
            f"{verdict}: {len(self.drifted_columns)} of {len(self.column_scores)} columns "
            f"drifted ({self.drift_share:.0%}: {drifted}){score[self.prediction_drift]}{new}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DriftResult:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        values["drifted_columns"] = list(values.get("drifted_columns", []))
        values["column_scores"] = {
            k: None if v is None else float(v) for k, v in values["column_scores"].items()
        }
        return cls(**values)


def sample(df: pd.DataFrame, max_rows: int, seed: int) -> tuple[pd.DataFrame, bool]:
    """``df`` itself when it has at most ``max_rows`` rows, else ``max_rows`` of its rows
    drawn uniformly without replacement (in their original order); the same ``seed``
    and frame always give the same rows. Returns the frame and whether it was sampled."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    if len(df) <= max_rows:
        return df, False
    positions = np.random.default_rng(seed).choice(len(df), size=max_rows, replace=False)
    return df.iloc[np.sort(positions)], True


def detect_drift(
    reference: pd.DataFrame, current: pd.DataFrame, policy: DriftPolicy
) -> DriftResult:
    """The verdict of comparing ``current`` with ``reference`` under ``policy``, without
    a report (see the module: a report costs ~10x its statistics).

    Raises ``ValueError`` naming the column when a checked column is missing, has no
    values, or is numeric in one window and not in the other.
    """
    return _verdict(_windows(reference, current, policy))[0]


def run_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    policy: DriftPolicy,
    *,
    html_path: Path | None = None,
    json_path: Path | None = None,
) -> tuple[DriftResult, Any]:
    """:func:`detect_drift` and its Evidently report.

    The report always holds the check's own statistics (:mod:`closedloop.core.
    drift_report`: each column's score and test, the share of drifted columns), which
    cost no second computation. Evidently's own drift metrics, which run the stat tests
    again and draw each column's distributions, are added for what a person will look
    into: with ``full_report="on_drift"`` a ``ValueDrift`` of each drifted column (and of
    the score, if it drifted), none on a calm day; with ``"always"`` the whole
    ``DataDriftPreset``. Their tests must agree with the verdict (``RuntimeError``
    otherwise: they run the same tests on the same rows, so they never should).

    Returns the verdict and Evidently's snapshot (for a workspace: ``add_to_workspace``);
    writes the snapshot's HTML report and JSON (metrics and tests) when paths are given.
    """
    from evidently import Report

    from closedloop.core import drift_report

    windows = _windows(reference, current, policy)
    result, tests = _verdict(windows)
    checked = drift_report.metrics(tests, len(policy.columns), policy.drift_share_threshold)
    results = drift_report.results_dataset(tests, result.drift_share)
    if policy.full_report == "always":
        evidently, shown = _preset(policy, windows.score), [*windows.compared]
    else:
        shown = [t.column for t in tests if t.drifted]
        evidently = [_value_drift(policy, c, windows.compared[c]) for c in shown]
    with warnings.catch_warnings():
        # Evidently 0.7 calls ``Series.replace([inf, -inf], nan)`` on object columns
        warnings.filterwarnings("ignore", "Downcasting behavior in `replace`", FutureWarning)
        # ... and correlates the numerical columns: a constant one has no correlation
        warnings.filterwarnings("ignore", "invalid value encountered in divide", RuntimeWarning)
        # the check's metrics read its results, Evidently's the windows: two reports,
        # merged into one snapshot (one workspace run, one file)
        snapshot = Report(checked, include_tests=True).run(results, results)
        if evidently:
            own = Report(evidently, include_tests=True).run(
                _dataset(windows.current[shown], _only(windows.compared, shown)),
                _dataset(windows.reference[shown], _only(windows.compared, shown)),
            )
            snapshot = _merged(snapshot, own)
            _agrees(snapshot.dict(), shown, windows.score, result, policy)
    if html_path is not None:
        Path(html_path).parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(html_path))  # a Path is silently ignored by Evidently 0.7
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_json(str(json_path))
    return result, snapshot


def _only(kinds: dict[str, str], columns: list[str]) -> dict[str, str]:
    return {c: kinds[c] for c in columns}


def _merged(first: Any, second: Any) -> Any:
    """One Evidently snapshot of two reports' results, widgets and tests, ``first``'s
    first (Evidently runs one report on one pair of datasets; the check's metrics read
    its results, the preset reads the windows)."""
    from evidently.core.report import Snapshot

    a, b = first.to_snapshot_model(), second.to_snapshot_model()
    a.metric_results = {**a.metric_results, **b.metric_results}
    a.top_level_metrics = [*a.top_level_metrics, *b.top_level_metrics]
    a.widgets = [*a.widgets, *b.widgets]
    a.tests_widgets = [*a.tests_widgets, *b.tests_widgets]
    return Snapshot.load_model(a)


def _agrees(
    data: dict[str, Any],
    shown: list[str],
    score: str | None,
    result: DriftResult,
    policy: DriftPolicy,
) -> None:
    """Raise unless Evidently's tests in the snapshot ``data`` (on the ``shown``
    columns; with the preset, the share too) give ``result``'s verdict."""
    verdicts, share, count = _read_snapshot(data, shown)
    drifted = {*result.drifted_columns, *([score] if result.prediction_drift else [])}
    disagree = sorted(c for c in shown if verdicts[c] != (c in drifted))
    share_differs = share is not None and (
        count != len(result.drifted_columns) or not math.isclose(share, result.drift_share)
    )
    if disagree or share_differs:
        raise RuntimeError(
            f"Evidently's report disagrees with the check on {disagree or 'the share'} "
            f"(count {count}, share {share}); the check gave {result.summary()}"
        )


@dataclass(frozen=True)
class _Windows:
    """Both windows sampled, cut to the compared columns and cleaned, as compared."""

    reference: pd.DataFrame
    current: pd.DataFrame
    #: column -> "numerical" / "categorical" of the checked feature columns
    kinds: dict[str, str]
    #: ``kinds`` plus the score column (numerical) when it is compared
    compared: dict[str, str]
    score: str | None
    sampled: bool
    policy: DriftPolicy
    reference_rows_total: int
    current_rows_total: int
    new_categories: dict[str, dict[str, int]]


def _new_categories(current: pd.DataFrame, policy: DriftPolicy) -> dict[str, dict[str, int]]:
    """The values of each flagged column outside its declared categories, counted."""
    out = {}
    for column, declared in policy.flagged.items():
        values = current[column].dropna().astype(str)
        counts = values[~values.isin(declared)].value_counts()
        if len(counts):
            out[column] = {str(k): int(v) for k, v in sorted(counts.items())}
    return out


def _windows(reference: pd.DataFrame, current: pd.DataFrame, policy: DriftPolicy) -> _Windows:
    for name, frame in (("reference", reference), ("current", current)):
        if len(frame) == 0:
            raise ValueError(f"the {name} window has no rows")
        missing = [c for c in policy.columns if c not in frame.columns]
        if missing:
            raise ValueError(f"columns missing from the {name} window: {missing}")
    score = _prediction_column(reference, current, policy)
    wanted = [*policy.columns, *([score] if score else [])]
    ref, ref_sampled = sample(reference, policy.max_rows, policy.seed)
    cur, cur_sampled = sample(current, policy.max_rows, policy.seed)
    ref, cur = ref[wanted], cur[wanted]  # after sampling: no copy of a large window
    kinds = _column_kinds(ref, cur, policy)
    compared = {**kinds, **({score: "numerical"} if score else {})}
    return _Windows(
        reference=_prepared(ref, compared, "reference"),
        current=_prepared(cur, compared, "current"),
        kinds=kinds,
        compared=compared,
        score=score,
        sampled=ref_sampled or cur_sampled,
        policy=policy,
        reference_rows_total=len(reference),
        current_rows_total=len(current),
        new_categories=_new_categories(current, policy),
    )


def _verdict(windows: _Windows) -> tuple[DriftResult, list[ColumnTest]]:
    """Each compared column through Evidently's stat test, as its ``ValueDrift`` metric
    runs it (``get_one_column_drift``: infinities and nulls dropped, the test looked up
    by name and column type, called with the threshold); the verdict, and each test."""
    from evidently.legacy.calculations.stattests import get_stattest
    from evidently.legacy.core import ColumnType

    from closedloop.core.drift_report import ColumnTest

    policy = windows.policy

    def one(column: str, kind: str) -> ColumnTest:
        if kind == "numerical":
            kind_type, method, threshold = (
                ColumnType.Numerical,
                policy.num_method,
                policy.num_threshold,
            )
        else:
            kind_type, method, threshold = (
                ColumnType.Categorical,
                policy.cat_method,
                policy.cat_threshold,
            )
        ref = windows.reference[column].dropna()  # infinities are nulls already
        cur = windows.current[column].dropna()
        test = get_stattest(ref, cur, kind_type, method)
        outcome = test(ref, cur, kind_type, threshold)
        return ColumnTest(column, kind, method, float(threshold), float(outcome.drift_score),
                          bool(outcome.drifted))  # fmt: skip

    # The tests sort and bin in numpy, which releases the GIL: columns side by side on
    # the machine's cores (the unsampled 1M x 20 check: 9.5 s -> see docs/benchmarks.md).
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        tests = list(pool.map(one, windows.compared, windows.compared.values()))
    scores = {t.column: t.score for t in tests}
    verdicts = {t.column: t.drifted for t in tests}
    drifted = [c for c in policy.columns if verdicts[c]]
    share = len(drifted) / len(policy.columns)
    score = windows.score
    result = DriftResult(
        drift_share=share,
        drifted_columns=drifted,
        column_scores={c: _finite(scores[c]) for c in policy.columns},
        dataset_drift=bool(share >= policy.drift_share_threshold),
        prediction_drift=verdicts[score] if score else None,
        reference_rows=len(windows.reference),
        current_rows=len(windows.current),
        sampled=windows.sampled,
        seed=policy.seed,
        method=policy.describe(),
        prediction_score=_finite(scores[score]) if score else None,
        reference_rows_total=windows.reference_rows_total,
        current_rows_total=windows.current_rows_total,
        column_kinds=windows.kinds,
        new_categories=windows.new_categories,
    )
    return result, tests


class WorkspaceRun(NamedTuple):
    """Where a report sits in an Evidently workspace."""

    project_id: str
    run_id: str


def add_to_workspace(
    workspace_dir: Path,
    project_name: str,
    snapshot: Any,
    *,
    timestamp: datetime | None = None,
) -> WorkspaceRun:
    """Add ``snapshot`` as a run of the project named ``project_name`` in the local
    Evidently workspace at ``workspace_dir`` (created, like the project, on first use)
    and return the project's and the run's ids; ``evidently ui --workspace <dir>`` shows
    it at ``/projects/<project_id>/reports/<run_id>``.

    ``timestamp`` (e.g. the end of the monitored interval) replaces the snapshot's own
    (the wall-clock time of the run); Evidently keeps naive timestamps, so an aware one
    is stored as naive UTC.
    """
    from evidently.core.report import Snapshot
    from evidently.ui.workspace import Workspace

    workspace_dir = Path(workspace_dir)
    workspace_dir.mkdir(parents=True, exist_ok=True)
    if timestamp is not None:
        if timestamp.tzinfo is not None:
            timestamp = timestamp.astimezone(UTC).replace(tzinfo=None)
        model = snapshot.to_snapshot_model()
        model.timestamp = timestamp
        snapshot = Snapshot.load_model(model)
    # find-or-create the project under a lock: two runs must not create two projects
    with open(workspace_dir / ".closedloop.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        workspace = Workspace.create(str(workspace_dir))
        found = sorted(workspace.search_project(project_name), key=lambda p: str(p.id))
        project = found[0] if found else _create_project(workspace, project_name)
        if found:
            _share_panel(workspace, project)
        ref = workspace.add_run(project.id, snapshot, include_data=False)
    return WorkspaceRun(str(project.id), str(ref.id))


# -- helpers --------------------------------------------------------------------------------


def _create_project(workspace: Any, name: str) -> Any:
    """A workspace project whose dashboard plots the share of drifted columns per run."""
    project = workspace.create_project(name, description="closedloop drift checks")
    _share_panel(workspace, project)
    return project


def _share_panel(workspace: Any, project: Any) -> None:
    """The dashboard panel of the check's share of drifted columns (every report has
    it), added to a project that lacks it: a project made before the check's own
    metrics plotted Evidently's ``DriftedColumnsCount``, which only a full report has."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel

    from closedloop.core.drift_report import SHARE_TYPE

    panels = workspace.get_dashboard(project.id).panels
    if any(v.metric == SHARE_TYPE for panel in panels for v in panel.values):
        return
    share = PanelMetric(legend="share of drifted columns", metric=SHARE_TYPE)
    project.dashboard.add_panel(line_plot_panel(title="Share of drifted columns", values=[share]))


def _prediction_column(
    reference: pd.DataFrame, current: pd.DataFrame, policy: DriftPolicy
) -> str | None:
    """The score column to check, or None. A score in the reference but not in the
    current window is an error; a reference without scores (a training set) is not."""
    name = policy.prediction_column
    if name is None or name not in reference.columns:
        return None
    if name not in current.columns:
        raise ValueError(f"prediction column {name!r} is in the reference but missing from current")
    for frame in (reference, current):
        if _kind(frame[name], False) != "numerical":
            raise ValueError(f"prediction column {name!r} must be numeric, not {frame[name].dtype}")
    return name


def _kind(series: pd.Series, forced_categorical: bool) -> str:
    dtype = series.dtype
    if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
        return "time"
    if forced_categorical or pd.api.types.is_bool_dtype(dtype):
        return "categorical"
    if pd.api.types.is_numeric_dtype(dtype):
        return "numerical"
    return "categorical"


def _column_kinds(ref: pd.DataFrame, cur: pd.DataFrame, policy: DriftPolicy) -> dict[str, str]:
    """``numerical`` or ``categorical`` per checked column, from the dtypes (and the
    policy's ``categorical``); both windows must agree."""
    forced = set(policy.categorical)
    kinds: dict[str, str] = {}
    for column in policy.columns:
        ref_kind, cur_kind = (_kind(f[column], column in forced) for f in (ref, cur))
        if "time" in (ref_kind, cur_kind):
            raise ValueError(f"column {column!r} holds times; drift is checked on features only")
        if ref_kind != cur_kind:
            raise ValueError(
                f"column {column!r} is {ref_kind} in the reference ({ref[column].dtype}) "
                f"but {cur_kind} in the current window ({cur[column].dtype})"
            )
        kinds[column] = ref_kind
    return kinds


def _prepared(frame: pd.DataFrame, kinds: dict[str, str], name: str) -> pd.DataFrame:
    """Float64 numbers (nullable ints and floats included) and object-dtype categories;
    every checked column must have at least one value."""
    out = {}
    for column, kind in kinds.items():
        values = frame[column]
        if kind == "numerical":
            values = values.astype("float64").replace([np.inf, -np.inf], np.nan)
        else:
            values = values.astype(object).where(values.notna(), None)
        if values.notna().sum() == 0:
            raise ValueError(f"column {column!r} has no values in the {name} window")
        out[column] = values.to_numpy()
    return pd.DataFrame(out, index=pd.RangeIndex(len(frame)))


def _dataset(frame: pd.DataFrame, kinds: dict[str, str]) -> Any:
    from evidently import DataDefinition, Dataset

    definition = DataDefinition(
        numerical_columns=[c for c, k in kinds.items() if k == "numerical"],
        categorical_columns=[c for c, k in kinds.items() if k == "categorical"],
    )
    return Dataset.from_pandas(frame, data_definition=definition)


def _preset(policy: DriftPolicy, score: str | None) -> list[Any]:
    """Evidently's own drift metrics of the whole window: ``DataDriftPreset`` over the
    checked columns, and ``ValueDrift`` of the score."""
    from evidently.presets import DataDriftPreset

    metrics: list[Any] = [
        DataDriftPreset(
            columns=list(policy.columns),
            drift_share=policy.drift_share_threshold,
            num_method=policy.num_method,
            num_threshold=policy.num_threshold,
            cat_method=policy.cat_method,
            cat_threshold=policy.cat_threshold,
        )
    ]
    if score:
        metrics.append(_value_drift(policy, score, "numerical"))
    return metrics


def _value_drift(policy: DriftPolicy, column: str, kind: str) -> Any:
    """Evidently's ``ValueDrift`` of one column, with the check's method and threshold."""
    from evidently.metrics import ValueDrift

    if kind == "numerical":
        return ValueDrift(column=column, method=policy.num_method, threshold=policy.num_threshold)
    return ValueDrift(column=column, method=policy.cat_method, threshold=policy.cat_threshold)


def _read_snapshot(
    data: dict[str, Any], columns: list[str]
) -> tuple[dict[str, bool], float | None, int | None]:
    """From a snapshot's JSON form (``Snapshot.dict()``): whether each of ``columns``
    failed its ``ValueDrift`` test, and the preset's share and count of drifted columns
    (None without the preset)."""
    share = count = None
    for metric in data["metrics"]:
        if metric["config"]["type"].endswith(":DriftedColumnsCount"):
            share, count = float(metric["value"]["share"]), int(metric["value"]["count"])
    verdicts: dict[str, bool] = {}
    for test in data["tests"]:
        params = test["metric_config"]["params"]
        if params["type"].endswith(":ValueDrift"):
            verdicts[params["column"]] = test["status"] == "FAIL"
    absent = [c for c in columns if c not in verdicts]
    if absent:
        raise RuntimeError(f"Evidently's snapshot lacks the drift results of {absent}")
    return verdicts, share, count


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
