"""The closed loop under a real Airflow scheduler: the scenario of ``make demo`` and of the
end-to-end test, and ``closedloop loop`` on landed batches.

The history before the watched days is loaded in one bulk backfill; then the use case's
training DAG trains the first champion, and for each watched day :class:`ClosedLoop`
triggers over the REST API, with the day's logical date, the runs the daily schedules
would start: features, then batch inference and monitoring. The **monitoring DAG itself**
decides to retrain and triggers training; the gate promotes the challenger or not. The
next day's features overlap the current day's scoring. ``LoopResult.problems`` says
whether the loop closed: no alarm while stable, a detection after the drift, one
retraining triggered by monitoring, promoted through the gate and better than the old
champion on post-drift data.

One module of this size: the scenario, its driver and its verdict are read together.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from closedloop.core.settings import Settings
    from closedloop.platform.local_airflow import LocalAirflow

RETRAIN_PREFIX = "retrain__"
#: run ids of the day runs the loop starts (the schedule's own would be ``scheduled__``)
DAY_PREFIX = "loop__"


def midnight(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), UTC)


@dataclass(frozen=True)
class Scenario:
    """What the loop is shown on: ``history_days`` loaded before Airflow watches, then
    ``stable_days`` like the history and ``drift_days`` with covariate and concept drift.
    """

    first_day: date = date(2026, 1, 1)
    history_days: int = 35
    stable_days: int = 4
    drift_days: int = 9
    rows_per_day: int = 300
    covariate: float = 1.0
    concept: float = 1.0
    seed: int = 7

    def __post_init__(self) -> None:
        if self.history_days < 14:
            raise ValueError("history_days: the first model needs at least 14 days")
        if self.stable_days < 1 or self.drift_days < 2:
            raise ValueError("the loop needs >= 1 stable and >= 2 drift days to watch")

    @property
    def drift_start(self) -> date:
        return self.first_day + timedelta(days=self.history_days + self.stable_days)

    @property
    def watched(self) -> list[date]:
        start = self.first_day + timedelta(days=self.history_days)
        return [start + timedelta(days=i) for i in range(self.stable_days + self.drift_days)]

    @property
    def history_end(self) -> datetime:
        """The as-of time of the first training: midnight after the history."""
        return midnight(self.first_day + timedelta(days=self.history_days))

    def phase(self, day: date) -> str:
        return "drift" if day >= self.drift_start else "stable"


@dataclass(frozen=True)
class Replay:
    """Landed batches replayed through the DAGs: ``history_days`` from ``first_day``
    loaded before Airflow watches (the first champion is trained on them), then
    ``watched_days`` run day by day. Nothing is injected: whatever the data shows is
    what monitoring sees."""

    first_day: date
    history_days: int
    watched_days: int

    def __post_init__(self) -> None:
        if self.history_days < 1 or self.watched_days < 1:
            raise ValueError("a replay needs at least one history day and one watched day")

    @property
    def watched(self) -> list[date]:
        start = self.first_day + timedelta(days=self.history_days)
        return [start + timedelta(days=i) for i in range(self.watched_days)]

    @property
    def history_end(self) -> datetime:
        return midnight(self.first_day + timedelta(days=self.history_days))

    def phase(self, day: date) -> str:
        return "watched"


@dataclass
class DayReport:
    """What one watched day looked like."""

    day: date
    phase: str
    runs: dict[str, str] = field(default_factory=dict)  # dag_id -> state
    rows: int = 0
    scored_by: str | None = None
    drift_share: float | None = None
    drifted_columns: list[str] = field(default_factory=list)
    live_auc: float | None = None
    labelled_rows: int = 0
    retrain: bool = False
    reasons: list[str] = field(default_factory=list)
    retrain_run: str | None = None
    retrain_state: str | None = None
    champion_after: str | None = None

    def succeeded(self) -> bool:
        return all(state == "success" for state in self.runs.values())


@dataclass
class LoopResult:
    scenario: Scenario | Replay
    days: list[DayReport]
    initial_version: str | None
    retrain_runs: dict[str, str]  # run id -> state, every training run monitoring started
    ledger: list[Any]
    seconds: float
    runs_failed: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Why the loop did not close; empty when it did. A replay of real data closes
        when every run succeeded and a champion served: whether drift is detected and a
        retrain promoted is what the data shows, reported, not required."""
        found = [f"run failed: {r}" for r in self.runs_failed]
        if self.initial_version is None:
            found.append("the initial training registered no champion")
        if isinstance(self.scenario, Replay):
            return found
        false_alarms = [d.day for d in self.days if d.phase == "stable" and d.retrain]
        if false_alarms:
            found.append(f"retraining requested in the stable period: {false_alarms}")
        detected = [d for d in self.days if d.phase == "drift" and d.retrain]
        if not detected:
            found.append("the drift was never detected")
        if len(self.retrain_runs) != 1:
            found.append(f"expected exactly one retraining run, got {sorted(self.retrain_runs)}")
        elif set(self.retrain_runs.values()) != {"success"}:
            found.append(f"the retraining run did not succeed: {self.retrain_runs}")
        promotion = self.promotion()
        if promotion is None:
            found.append("no version was promoted by the retraining run")
        else:
            old, new = self.holdout_comparison()
            if old is None or new is None or new <= old:
                found.append(f"the new champion is not better on post-drift data ({new} vs {old})")
            after = [d for d in self.days if d.scored_by == promotion.version]
            if not after:
                found.append("no day was scored by the new champion")
        return found

    @property
    def closed(self) -> bool:
        return not self.problems()

    def promotion(self) -> Any | None:
        """The ledger's promotion made by the retraining run."""
        for entry in self.ledger:
            if entry.action == "promote" and (entry.run_id or "").startswith(RETRAIN_PREFIX):
                return entry
        return None

    def holdout_comparison(self) -> tuple[float | None, float | None]:
        """Old and new champion's primary metric on the retrained model's holdout — the
        most recent, post-drift days — as the gate measured them."""
        entry = self.promotion()
        if entry is None or not entry.numbers.get("champion"):
            return None, None
        key = "roc_auc"
        return entry.numbers["champion"].get(key), entry.numbers["candidate"].get(key)


class ClosedLoop:
    """Drive the scenario through a started :class:`LocalAirflow`."""

    def __init__(
        self,
        settings: Settings,
        scenario: Scenario | Replay,
        airflow: LocalAirflow,
        say: Callable[[str], None] = print,
        run_timeout: float = 600,
    ) -> None:
        self.settings = settings
        self.scenario = scenario
        self.airflow = airflow
        self.say = say
        self.run_timeout = run_timeout
        self.failed: list[str] = []
        self.dag_ids = settings.usecase.dag_ids

    # -- the steps ---------------------------------------------------------------------
    def _wait(self, dag_id: str, run_id: str, label: str) -> str:
        t0 = time.monotonic()
        state = self.airflow.wait(dag_id, run_id, self.run_timeout)
        mark = "ok" if state == "success" else state.upper()
        self.say(f"  {label:<34} {mark:<7} {time.monotonic() - t0:5.1f}s")
        if state != "success":
            failed = self.airflow.failed_tasks(dag_id, run_id)
            self.failed.append(f"{dag_id} {run_id} (tasks {failed})")
        return state

    def initial_training(self) -> str | None:
        """Train the first champion through the scheduler, unless there is one."""
        existing = self._champion()
        if existing is not None:
            self.say(f"champion v{existing} exists: no initial training")
            return existing
        as_of = self.scenario.history_end
        run_id = self.airflow.trigger(
            self.dag_ids["training"],
            as_of,
            {"reason": "initial", "as_of": as_of.isoformat()},
            run_id=f"initial__{as_of:%Y-%m-%d}",
        )
        self._wait(
            self.dag_ids["training"], run_id, f"{self.dag_ids['training']} as of {as_of:%Y-%m-%d}"
        )
        return self._champion()

    def _trigger_day(self, dag_id: str, day: date) -> list[str]:
        """The runs the schedule would start for ``day``: one at each of its intervals'
        ends in the use case's timezone (one a day, or one an hour; monitoring's is
        daily whatever the cadence)."""
        usecase = self.settings.usecase
        intervals = usecase.intervals(day, day)
        if dag_id == self.dag_ids["monitoring"] or usecase.batch.cadence == "daily":
            end = intervals[-1][1]
            return [self.airflow.trigger(dag_id, end, run_id=f"{DAY_PREFIX}{day:%Y-%m-%d}")]
        return [
            self.airflow.trigger(dag_id, end, run_id=f"{DAY_PREFIX}{usecase.interval_key(start)}")
            for start, end in intervals
        ]

    def _wait_all(self, dag_id: str, run_ids: list[str], label: str) -> str:
        """The state of a day's runs: success when every one succeeded, else the first
        other state."""
        states = [self._wait(dag_id, run_id, label) for run_id in run_ids]
        return next((s for s in states if s != "success"), "success")

    def watch(self) -> list[DayReport]:
        reports = []
        days = self.scenario.watched
        features = {days[0]: self._trigger_day(self.dag_ids["features"], days[0])}
        for i, day in enumerate(days):
            report = DayReport(day, self.scenario.phase(day))
            self.say(f"{day} ({report.phase}, day {i + 1}/{len(days)})")
            report.runs[self.dag_ids["features"]] = self._wait_all(
                self.dag_ids["features"], features[day], self.dag_ids["features"]
            )
            if i + 1 < len(days):  # tomorrow's features overlap today's scoring
                features[days[i + 1]] = self._trigger_day(self.dag_ids["features"], days[i + 1])
            for dag_id in (self.dag_ids["batch_inference"], self.dag_ids["monitoring"]):
                report.runs[dag_id] = self._wait_all(dag_id, self._trigger_day(dag_id, day), dag_id)
            self._read_day(report)
            if report.retrain:
                report.retrain_run = self._retrain_run_of(report)
                if report.retrain_run:
                    report.retrain_state = self._wait(
                        self.dag_ids["training"],
                        report.retrain_run,
                        f"{self.dag_ids['training']} (by monitoring)",
                    )
            report.champion_after = self._champion()
            self.say("  " + self.describe(report))
            reports.append(report)
        return reports

    def run(self) -> LoopResult:
        from closedloop.core.ledger import PromotionLedger

        started = time.monotonic()
        self.say("initial training through the scheduler")
        initial = self.initial_training()
        days = self.watch()
        retrains = {
            r["dag_run_id"]: r["state"]
            for r in self.airflow.runs(self.dag_ids["training"])
            if r["dag_run_id"].startswith(RETRAIN_PREFIX)
        }
        ledger = PromotionLedger(self.settings.closedloop_db).history(self.settings.model_name)
        return LoopResult(
            self.scenario,
            days,
            initial,
            retrains,
            ledger,
            time.monotonic() - started,
            list(self.failed),
        )

    # -- reading what happened -----------------------------------------------------------
    def _champion(self) -> str | None:
        from closedloop.core.registry import CHAMPION, alias_version, client_for

        return alias_version(client_for(self.settings), self.settings.model_name, CHAMPION)

    def _retrain_run_of(self, report: DayReport) -> str | None:
        """The training run the day's verdict triggered (its id is derived from the
        verdict, see ``Verdict.trigger_run_id``), if Airflow has it."""
        known = {r["dag_run_id"] for r in self.airflow.runs(self.dag_ids["training"])}
        return report.retrain_run if report.retrain_run in known else None

    def _read_day(self, report: DayReport) -> None:
        from closedloop.core.batch_inference import predictions_dir
        from closedloop.core.monitoring import DecisionLog

        # the day's file, or its intervals' (``<day>T<hour>``)
        paths = sorted(predictions_dir(self.settings).glob(f"{report.day:%Y-%m-%d}*.parquet"))
        if paths:
            import pyarrow.parquet as pq

            versions: set[str] = set()
            report.rows = 0
            for path in paths:
                table = pq.read_table(path, columns=["model_version"])
                report.rows += table.num_rows
                versions |= set(table.column("model_version").to_pylist())
            report.scored_by = ",".join(sorted(versions))
        log = DecisionLog(self.settings.closedloop_db)
        try:
            verdicts = log.verdicts(self.settings.model_name)
        finally:
            log.dispose()
        for verdict in verdicts:
            if verdict.day == report.day.isoformat():
                report.drift_share = verdict.drift_share
                report.drifted_columns = verdict.drifted_columns
                report.live_auc = verdict.live_auc
                report.labelled_rows = verdict.labelled_rows
                report.retrain = verdict.retrain
                report.reasons = verdict.reasons
                report.retrain_run = verdict.trigger_run_id if verdict.retrain else None

    @staticmethod
    def describe(report: DayReport) -> str:
        share = "n/a" if report.drift_share is None else f"{report.drift_share:.0%}"
        auc = "n/a" if report.live_auc is None else f"{report.live_auc:.3f}"
        action = "RETRAIN" if report.retrain else "no action"
        return (
            f"{report.rows} events scored by v{report.scored_by}, drift {share}, "
            f"live AUC {auc} -> {action}; champion v{report.champion_after}"
        )


def summary_table(result: LoopResult) -> list[str]:
    """One line per watched day: the table ``make demo`` ends with."""
    lines = [
        f"{'day':<11} {'phase':<7} {'rows':>5} {'scored by':>9} {'drift':>6} "
        f"{'live AUC':>9} {'labelled':>8}  {'decision':<10} champion after",
    ]
    for d in result.days:
        share = "-" if d.drift_share is None else f"{d.drift_share:.0%}"
        auc = "-" if d.live_auc is None else f"{d.live_auc:.3f}"
        decision = "retrain" if d.retrain else ("cooldown" if _cooled(d) else "-")
        lines.append(
            f"{d.day!s:<11} {d.phase:<7} {d.rows:>5} {'v' + str(d.scored_by):>9} "
            f"{share:>6} {auc:>9} {d.labelled_rows:>8}  {decision:<10} v{d.champion_after}"
        )
    return lines


def _cooled(report: DayReport) -> bool:
    return any(r.startswith("cooldown") for r in report.reasons)


def to_json(result: LoopResult) -> str:
    """The result as JSON (``<home>/loop.json``), for tools and the test."""
    return json.dumps(
        {
            "closed": result.closed,
            "problems": result.problems(),
            "seconds": round(result.seconds, 1),
            "initial_version": result.initial_version,
            "retrain_runs": result.retrain_runs,
            "holdout_roc_auc": dict(
                zip(("old_champion", "new_champion"), result.holdout_comparison(), strict=True)
            ),
            "days": [
                {
                    "day": d.day.isoformat(),
                    "phase": d.phase,
                    "rows": d.rows,
                    "scored_by": d.scored_by,
                    "drift_share": d.drift_share,
                    "live_auc": d.live_auc,
                    "retrain": d.retrain,
                    "reasons": d.reasons,
                    "retrain_run": d.retrain_run,
                    "champion_after": d.champion_after,
                    "runs": d.runs,
                }
                for d in result.days
            ],
        },
        indent=2,
    )
