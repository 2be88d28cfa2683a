"""The evidence of a loop: what the stores hold, collected as typed facts.

:func:`collect` reads, read-only, Airflow's metadata DB (tables ``dag_run`` and
``task_instance`` with SQLAlchemy at ``settings.airflow_sql_alchemy_conn``: it works with
no Airflow running and imports no Airflow, the same in both profiles), the MLflow
tracking store and registry, the decision log and promotion ledger, and the files
(Evidently reports and workspace, GX results and Data Docs, quarantine reports, training
sets, predictions, the CI definition). A store that does not exist reads as empty.

:func:`judge` applies the rules (``evidence_rules``: the principles; ``evidence_steps``:
the components and workflow steps); ``evidence_report`` writes the report.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from closedloop.core import tags as tag
from closedloop.core.settings import PROJECT_ROOT

if TYPE_CHECKING:
    from closedloop.core.ledger import LedgerEntry
    from closedloop.core.monitoring import Verdict
    from closedloop.core.settings import Settings

#: the repository's CI definition: what CI runs, and where GitHub runs it
CI_FILES = (".ci/run", ".github/workflows/ci.yml")


@dataclass(frozen=True)
class Link:
    """An artifact: ``kind`` is dag_run, mlflow_run, model_version, evidently, file or
    commit; ``target`` what identifies it in its store (the tests check each)."""

    kind: str
    label: str
    url: str
    target: tuple[str, ...]


@dataclass(frozen=True)
class Finding:
    """A rule's answer: exercised or not, why (from the facts, either way), the links."""

    id: str
    title: str
    exercised: bool
    why: str
    links: list[Link] = field(default_factory=list)


@dataclass(frozen=True)
class DagRun:
    """A row of Airflow's ``dag_run``, with its tasks' states."""

    dag_id: str
    run_id: str
    state: str
    run_type: str
    triggered_by: str
    user: str | None
    conf: dict[str, Any]
    tasks: dict[str, str] = field(default_factory=dict)

    def task_ok(self, task_id: str) -> bool:
        return self.tasks.get(task_id) == "success"


@dataclass(frozen=True)
class MlflowRun:
    run_id: str
    experiment_id: str
    tags: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelVersion:
    version: str
    run_id: str
    tags: dict[str, str]
    aliases: tuple[str, ...] = ()


@dataclass
class Facts:
    """Everything the rules judge. ``stages`` maps features/training/batch_inference/
    monitoring to the use case's DAG ids; ``files`` maps a kind of artifact to the
    existing files of that kind; ``commits`` each recorded commit to whether this
    repository has it."""

    settings: Settings
    stages: dict[str, str]
    dag_runs: list[DagRun] = field(default_factory=list)
    training_runs: list[MlflowRun] = field(default_factory=list)
    monitoring_runs: list[MlflowRun] = field(default_factory=list)
    versions: list[ModelVersion] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    ledger: list[LedgerEntry] = field(default_factory=list)
    files: dict[str, list[Path]] = field(default_factory=dict)
    commits: dict[str, bool] = field(default_factory=dict)
    #: Evidently snapshot file -> (project id, snapshot id)
    evidently: dict[Path, tuple[str, str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def runs(self, stage: str, state: str | None = "success") -> list[DagRun]:
        """The DAG runs of one stage's DAG (in ``state``; any state with None)."""
        dag_id = self.stages[stage]
        return [r for r in self.dag_runs if r.dag_id == dag_id and state in (None, r.state)]

    def dag_run(self, dag_id: str, run_id: str) -> DagRun | None:
        return next((r for r in self.dag_runs if (r.dag_id, r.run_id) == (dag_id, run_id)), None)

    def run_of_version(self, version: ModelVersion) -> MlflowRun | None:
        return next((r for r in self.training_runs if r.run_id == version.run_id), None)


def judge(facts: Facts) -> dict[str, list[Finding]]:
    """Every rule on ``facts``: the principles, components and workflow steps, in order."""
    from closedloop.core.evidence_rules import PRINCIPLES
    from closedloop.core.evidence_steps import COMPONENTS, STEPS

    return {
        kind: [rule(facts) for rule in rules]
        for kind, rules in (
            ("principles", PRINCIPLES),
            ("components", COMPONENTS),
            ("steps", STEPS),
        )
    }


def _missing_sqlite(url: str) -> bool:
    return url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file()


def _json(raw: Any) -> dict[str, Any]:
    if isinstance(raw, str | bytes):
        try:
            value = json.loads(raw)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}
    return dict(raw or {})


def read_dag_runs(url: str, dag_ids: list[str]) -> list[DagRun]:
    """The runs of ``dag_ids`` in the Airflow metadata DB at ``url``, with their tasks."""
    engine = sa.create_engine(url, future=True)
    try:
        meta = sa.MetaData()
        dag_run = sa.Table("dag_run", meta, autoload_with=engine)
        ti = sa.Table("task_instance", meta, autoload_with=engine)
        user = dag_run.c.get("triggering_user_name")
        columns = [dag_run.c[c] for c in ("dag_id", "run_id", "state", "run_type", "conf")]
        columns.append(dag_run.c.get("triggered_by", sa.literal(None)).label("triggered_by"))
        columns.append((user if user is not None else sa.literal(None)).label("user"))
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(*columns).where(dag_run.c.dag_id.in_(dag_ids)).order_by(dag_run.c.id)
            ).all()
            tasks = conn.execute(
                sa.select(ti.c.dag_id, ti.c.run_id, ti.c.task_id, ti.c.state).where(
                    ti.c.dag_id.in_(dag_ids)
                )
            ).all()
    finally:
        engine.dispose()
    states: dict[tuple[str, str], dict[str, str]] = {}
    for t in tasks:
        states.setdefault((t.dag_id, t.run_id), {})[t.task_id] = str(t.state)
    return [
        DagRun(
            dag_id=r.dag_id,
            run_id=r.run_id,
            state=str(r.state),
            run_type=str(r.run_type),
            triggered_by=str(r.triggered_by or ""),
            user=r.user,
            conf=_json(r.conf),
            tasks=states.get((r.dag_id, r.run_id), {}),
        )
        for r in rows
    ]


def _mlflow(settings: Settings, facts: Facts) -> None:
    from closedloop.core.registry import client_for

    client = client_for(settings)
    name = settings.usecase.name
    for suffix, target in (("", facts.training_runs), ("/monitoring", facts.monitoring_runs)):
        experiment = client.get_experiment_by_name(f"closedloop/{name}{suffix}")
        if experiment is None:
            continue
        runs = client.search_runs([experiment.experiment_id], max_results=5000)
        wanted = tag.DATA_DIGEST if not suffix else tag.MONITORING_DAY
        target += [
            MlflowRun(r.info.run_id, experiment.experiment_id, dict(r.data.tags), r.data.metrics)
            for r in runs
            if wanted in r.data.tags
        ]
    model = settings.model_name
    found = client.search_model_versions(f"name = '{model}'")
    aliases: dict[str, list[str]] = {}
    if found:
        for alias, version in client.get_registered_model(model).aliases.items():
            aliases.setdefault(str(version), []).append(alias)
    facts.versions = sorted(
        (
            ModelVersion(
                str(v.version), v.run_id, dict(v.tags), tuple(aliases.get(str(v.version), ()))
            )
            for v in found
        ),
        key=lambda v: int(v.version),
    )


def _closedloop_db(settings: Settings, facts: Facts) -> None:
    from closedloop.core.ledger import PromotionLedger
    from closedloop.core.monitoring import DecisionLog

    log = DecisionLog(settings.closedloop_db)
    ledger = PromotionLedger(settings.closedloop_db)
    try:
        facts.verdicts = log.verdicts(settings.model_name)
        facts.ledger = ledger.history(settings.model_name)
    finally:
        log.dispose()
        ledger.dispose()


def _evidently(settings: Settings) -> dict[Path, tuple[str, str]]:
    found = {}
    root = settings.evidently_workspace
    for meta in sorted(root.glob("*/metadata.json")) if root.is_dir() else []:
        if _json(meta.read_text()).get("name") != f"closedloop {settings.usecase.name}":
            continue
        for snapshot in sorted((meta.parent / "snapshots").glob("*.json")):
            found[snapshot] = (meta.parent.name, snapshot.stem)
    return found


def _files(settings: Settings, facts: Facts) -> dict[str, list[Path]]:
    from closedloop.core.batch_inference import predictions_dir

    name = settings.usecase.name
    docs = settings.gx_dir / "gx" / "uncommitted" / "data_docs" / "local_site"
    recorded = {
        Path(r.tags[tag.PREFIX + "training_set_uri"])
        for r in facts.training_runs
        if tag.PREFIX + "training_set_uri" in r.tags
    }

    def glob(root: Path, pattern: str) -> list[Path]:
        return sorted(root.glob(pattern)) if root.is_dir() else []

    files = {
        "ci": [PROJECT_ROOT / f for f in CI_FILES],
        "drift_reports": glob(settings.reports_dir, "*/drift.html"),
        "data_docs": [docs / "index.html"],
        "gx_batch": glob(docs / "validations" / f"{name}_batch", "**/*.html"),
        "gx_training_set": glob(docs / "validations" / f"{name}_training_set", "**/*.html"),
        "quarantine": glob(settings.quarantine_dir, "*/report.json"),
        "training_sets": sorted(recorded),
        "reproduced_sets": glob(settings.training_dir, "reproduce-*/training_set.parquet"),
        "predictions": glob(predictions_dir(settings), "*.parquet"),
        "feast_registry": [settings.feast_dir / "registry.db"],
    }
    return {kind: [p for p in paths if p.is_file()] for kind, paths in files.items()}


def commit_known(commit: str) -> bool:
    """Whether this checkout's repository has ``commit`` (its head, before ``-dirty-``)."""
    head = commit.split("-dirty-")[0]
    if not head or head == "unknown":
        return False
    try:
        done = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "cat-file", "-e", f"{head}^{{commit}}"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def collect(settings: Settings) -> Facts:
    """The facts of the use case of ``settings``, from its stores."""
    facts = Facts(settings, dict(settings.usecase.dag_ids))
    if _missing_sqlite(settings.airflow_sql_alchemy_conn):
        facts.problems.append("no Airflow metadata DB: no DAG run is known")
    else:
        try:
            facts.dag_runs = read_dag_runs(
                settings.airflow_sql_alchemy_conn, list(facts.stages.values())
            )
        except sa.exc.SQLAlchemyError as exc:
            facts.problems.append(f"Airflow metadata DB unreadable: {exc}")
    if _missing_sqlite(settings.mlflow_tracking_uri):
        facts.problems.append("no MLflow store: no run or model version is known")
    else:
        try:
            _mlflow(settings, facts)
        except Exception as exc:  # a server down or refusing: reported, judged as absent
            facts.problems.append(f"MLflow unreadable: {exc}")
    if not _missing_sqlite(settings.closedloop_db):
        try:
            _closedloop_db(settings, facts)
        except sa.exc.SQLAlchemyError as exc:
            facts.problems.append(f"closedloop's database unreadable: {exc}")
    facts.files = _files(settings, facts)
    facts.evidently = _evidently(settings)
    for run in facts.training_runs:
        commit = run.tags.get(tag.GIT_COMMIT)
        if commit and commit not in facts.commits:
            facts.commits[commit] = commit_known(commit)
    return facts
