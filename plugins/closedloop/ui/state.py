"""What the closedloop view shows, read from the stores: the champion and challenger
(MLflow registry), the promotion ledger, the monitoring verdicts, the approvals waiting
in Airflow, and what a DAG run produced (its XComs, with links to their evidence).

Read-only: a store that does not exist yet (no SQLite file) reads as empty rather than
being created. Airflow's metadata is read through its models, in the API server's
process and session. URLs come from :mod:`closedloop.core.links`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from closedloop.core import links
from closedloop.core.settings import usecase_files

if TYPE_CHECKING:
    from closedloop.core.ledger import LedgerEntry
    from closedloop.core.monitoring import Verdict
    from closedloop.core.settings import Settings

#: the metrics shown for a model version, in this order
KEY_METRICS = ("roc_auc", "pr_auc", "f1", "brier")
#: Airflow's state of a task waiting for a human (HITL)
AWAITING_INPUT = "awaiting_input"
#: the XCom key prefix under which Airflow keeps an operator's extra links
LINK_PREFIX = "_link_"


def _missing_sqlite(url: str) -> bool:
    """A SQLite database that does not exist yet (opening it would create it)."""
    return url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file()


def usecases(settings: Settings) -> list[str]:
    return list(usecase_files(settings.usecases_dir))


def usecase_of_dag(settings: Settings, dag_id: str) -> str | None:
    """The declared use case one of whose four DAGs is ``dag_id``."""
    for name in usecases(settings):
        if dag_id in settings.for_usecase(name).usecase.dag_ids.values():
            return name
    return None


# -- the model registry -----------------------------------------------------------------


@dataclass(frozen=True)
class VersionView:
    alias: str
    version: str
    run_id: str
    metrics: dict[str, float]
    run_url: str
    version_url: str


def aliased_versions(settings: Settings) -> list[VersionView]:
    """The champion and the challenger (those that exist), with their key metrics."""
    if _missing_sqlite(settings.mlflow_tracking_uri):
        return []
    from closedloop.core.registry import CHALLENGER, CHAMPION, alias_version, client_for

    client = client_for(settings)
    model = settings.model_name
    found = []
    for alias in (CHAMPION, CHALLENGER):
        version = alias_version(client, model, alias)
        if version is None:
            continue
        mv = client.get_model_version(model, version)
        run = client.get_run(mv.run_id)
        metrics = {k: run.data.metrics[k] for k in KEY_METRICS if k in run.data.metrics}
        found.append(
            VersionView(
                alias=alias,
                version=version,
                run_id=mv.run_id,
                metrics=metrics,
                run_url=links.mlflow_run(settings, run.info.experiment_id, mv.run_id),
                version_url=links.mlflow_model_version(settings, model, version),
            )
        )
    return found


def ledger(settings: Settings) -> list[LedgerEntry]:
    """The promotion ledger of the use case's model, newest first."""
    if _missing_sqlite(settings.closedloop_db):
        return []
    from closedloop.core.ledger import PromotionLedger

    store = PromotionLedger(settings.closedloop_db)
    try:
        return list(reversed(store.history(settings.model_name)))
    finally:
        store.dispose()


def verdicts(settings: Settings, last: int = 60) -> list[Verdict]:
    """The last ``last`` monitoring verdicts, oldest first."""
    if _missing_sqlite(settings.closedloop_db):
        return []
    from closedloop.core.monitoring import DecisionLog

    log = DecisionLog(settings.closedloop_db)
    try:
        return log.verdicts(settings.model_name)[-last:]
    finally:
        log.dispose()


# -- Airflow's metadata -----------------------------------------------------------------


@dataclass(frozen=True)
class Approval:
    dag_id: str
    run_id: str
    task_id: str
    subject: str
    body: str | None
    url: str


def pending_approvals(settings: Settings) -> list[Approval]:
    """Task instances of the use case's training DAG waiting for a human's answer."""
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    dag_id = settings.usecase.dag_ids["training"]
    query = (
        select(TaskInstance.dag_id, TaskInstance.run_id, TaskInstance.task_id, HITLDetail)
        .outerjoin(HITLDetail, HITLDetail.ti_id == TaskInstance.id)
        .where(TaskInstance.dag_id == dag_id, TaskInstance.state == AWAITING_INPUT)
        .order_by(TaskInstance.run_id, TaskInstance.task_id)
    )
    with create_session() as session:
        rows = session.execute(query).all()
        return [
            Approval(
                dag_id=d,
                run_id=r,
                task_id=t,
                subject=detail.subject if detail is not None else t,
                body=detail.body if detail is not None else None,
                url=links.airflow_task(settings, d, r, t) + "/required_actions",
            )
            for d, r, t, detail in rows
        ]


@dataclass
class TaskOutput:
    task_id: str
    state: str | None
    value: Any = None
    links: list[tuple[str, str]] = field(default_factory=list)


def _decoded(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def run_outputs(settings: Settings, dag_id: str, run_id: str) -> list[TaskOutput] | None:
    """Each task of the run with its return value and its links; None: no such run."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        found = session.scalar(
            select(DagRun.id).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
        )
        if found is None:
            return None
        tis = session.execute(
            select(TaskInstance.task_id, TaskInstance.state)
            .where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
            .order_by(TaskInstance.start_date, TaskInstance.task_id)
        ).all()
        xcoms = session.execute(
            select(XComModel.task_id, XComModel.key, XComModel.value).where(
                XComModel.dag_id == dag_id, XComModel.run_id == run_id
            )
        ).all()
    outputs = {t: TaskOutput(t, None if s is None else str(s)) for t, s in tis}
    for task_id, key, raw in xcoms:
        out = outputs.setdefault(task_id, TaskOutput(task_id, None))
        value = _decoded(raw)
        if key == "return_value":
            out.value = value
            out.links += derived_links(settings, value)
        elif key.startswith(LINK_PREFIX) and isinstance(value, str) and value:
            out.links.append((_link_label(key), value))
        elif key == "trigger_conf":
            out.links += derived_links(settings, value)
    for out in outputs.values():
        out.links = list(dict.fromkeys(out.links))
    return list(outputs.values())


def _link_label(key: str) -> str:
    """The button's name of an extra link's XCom (``_link_<class>``), else the class's
    name spaced out."""
    cls = key.removeprefix(LINK_PREFIX)
    try:
        from closedloop.operators.links import LINKS
    except ImportError:
        LINKS = ()
    named = {link.__name__: link.name for link in LINKS}
    if cls in named:
        return named[cls]
    name = cls.removesuffix("Link")
    return "".join(f" {c}" if c.isupper() and i else c for i, c in enumerate(name)).strip()


def derived_links(settings: Settings, value: Any) -> list[tuple[str, str]]:
    """The links an XCom value names: served files (validation results, quarantine and
    drift reports), the MLflow run and model version, the Evidently report, the
    training run a verdict triggered."""
    found: list[tuple[str, str]] = []
    if isinstance(value, str) and value.isdigit():  # a registered version
        return [(f"model version {value}", _version(settings, value))]
    if not isinstance(value, dict):
        return found
    for key, item in value.items():
        if isinstance(item, str) and (url := _served(settings, item)):
            found.append((key.replace("_", " "), url))
    if isinstance(value.get("run_id"), str) and "model_uri" in value:
        url = _mlflow_run(settings, value["run_id"])
        if url:
            found.append(("MLflow run", url))
    if "version" in value and "action" in value:
        version = str(value["version"])
        found.append((f"model version {version}", _version(settings, version)))
    if value.get("evidently_project") and value.get("evidently_run"):
        url = links.evidently_report(
            settings, str(value["evidently_project"]), str(value["evidently_run"])
        )
        found.append(("Evidently report", url))
    if value.get("retrain") and value.get("trigger_run_id"):
        training = settings.usecase.dag_ids["training"]
        url = links.airflow_dag_run(settings, training, str(value["trigger_run_id"]))
        found.append(("triggered training run", url))
    return found


def _served(settings: Settings, text: str) -> str | None:
    """The URL of a file the app serves, when ``text`` is the path of one."""
    path = Path(text.removeprefix("file://"))
    if not path.is_absolute() or not path.is_file():
        return None
    try:
        return links.file_url(settings, path)
    except ValueError:
        return None


def _version(settings: Settings, version: str) -> str:
    return links.mlflow_model_version(settings, settings.model_name, version)


def _mlflow_run(settings: Settings, run_id: str) -> str | None:
    if _missing_sqlite(settings.mlflow_tracking_uri):
        return None
    from mlflow.exceptions import MlflowException

    from closedloop.core.registry import client_for

    try:
        run = client_for(settings).get_run(run_id)
    except MlflowException:
        return None
    return links.mlflow_run(settings, run.info.experiment_id, run_id)
