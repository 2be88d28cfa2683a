"""The DAG folder parses cleanly, fast, and builds four correct DAGs per use case."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from closedloop.core.settings import PACKAGE_USECASES, PROJECT_ROOT, usecase_files
from closedloop.core.usecase import UseCase
from closedloop.platform.runtime import TASK_RETRY_DELAY_SECONDS

DAG_FILES = sorted((PROJECT_ROOT / "dags").glob("*.py"))
HEAVY = ("feast", "mlflow", "great_expectations", "evidently", "sklearn", "pandas", "numpy")
USECASES = {name: UseCase.from_yaml(path) for name, path in usecase_files(PACKAGE_USECASES).items()}
STAGES = ("features", "training", "batch_inference", "monitoring")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT_ROOT / "dags"))


def test_no_import_errors_and_four_dags_per_declared_usecase(dagbag):
    assert dagbag.import_errors == {}
    assert USECASES, "closedloop ships at least one use case"
    expected = {f"{name}_{stage}" for name in USECASES for stage in STAGES}
    assert set(dagbag.dags) == expected


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in USECASES])
def test_each_usecase_gets_tagged_documented_retried_dags(dagbag, name: str):
    usecase = USECASES[name]
    for stage in STAGES:
        dag = dagbag.dags[f"{name}_{stage}"]
        assert {"closedloop", name} <= set(dag.tags)
        assert dag.doc_md and name in dag.doc_md
        # the declared start is enforced by the tasks (a DAG start date would make a run
        # for an earlier interval an empty success)
        assert dag.start_date is None
        # training runs on its features Asset or its cron, whichever comes first
        timetable = getattr(dag.timetable, "timetable", dag.timetable)
        timezone = timetable.timezone  # a name, or a tzinfo once deserialized
        assert getattr(timezone, "name", timezone) == usecase.schedule.timezone
        for task in dag.tasks:
            assert task.retries >= 1, f"{task.task_id} has no retries"
            # from [core] default_task_retry_delay, which closedloop.platform.runtime sets
            assert task.retry_delay == timedelta(seconds=TASK_RETRY_DELAY_SECONDS)
            if task.task_type != "TriggerDagRunOperator":
                assert Path(task.usecase_file).stem == name, task.task_id


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in USECASES])
def test_assets_chain_features_to_training_and_monitoring_triggers_its_own(dagbag, name: str):
    features = dagbag.dags[f"{name}_features"]
    assert str(USECASES[name].schedule.start) in features.doc_md
    materialize = features.get_task("materialize")
    assert [a.uri for a in materialize.outlets] == [f"closedloop://{name}/features"]
    training = dagbag.dags[f"{name}_training"]
    condition = getattr(training.timetable, "asset_condition", None)
    assert condition is not None, "training schedules on the features Asset"
    assert [a.uri for a in condition.objects] == [f"closedloop://{name}/features"]
    score = dagbag.dags[f"{name}_batch_inference"].get_task("score")
    assert [a.uri for a in score.outlets] == [f"closedloop://{name}/predictions"]
    trigger = dagbag.dags[f"{name}_monitoring"].get_task("trigger_training")
    assert trigger.trigger_dag_id == f"{name}_training"


def test_a_bad_declaration_is_the_files_import_error_naming_the_field(tmp_path: Path):
    from airflow.dag_processing.dagbag import DagBag

    raw = yaml.safe_load((PACKAGE_USECASES / "hotel_bookings.yaml").read_text())
    raw["features"]["passthrough"].append("no_such_column")
    (tmp_path / "hotel_bookings.yaml").write_text(yaml.safe_dump(raw))
    old = os.environ.get("CLOSEDLOOP_USECASES_DIR")
    os.environ["CLOSEDLOOP_USECASES_DIR"] = str(tmp_path)
    try:
        bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    finally:
        if old is None:
            del os.environ["CLOSEDLOOP_USECASES_DIR"]
        else:
            os.environ["CLOSEDLOOP_USECASES_DIR"] = old
    assert bag.dags == {}
    (error,) = bag.import_errors.values()
    assert "features.passthrough[14]" in error and "no_such_column" in error


_PARSE_PROBE = """
import json, sys, time, importlib.util
# Airflow itself is paid once by the DAG processor, not per file
import airflow.sdk, airflow.dag_processing.dagbag
t0 = time.perf_counter()
spec = importlib.util.spec_from_file_location("probe", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
took = time.perf_counter() - t0
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2].split(",")))
dags = sorted(k for k, v in vars(module).items() if type(v).__name__ == "DAG")
print(json.dumps({"seconds": took, "heavy": heavy, "dags": dags}))
"""


@pytest.fixture(scope="module")
def several_usecases(tmp_path_factory) -> Path:
    """The shipped declarations plus three more (renamed copies of the first)."""
    folder = tmp_path_factory.mktemp("usecases")
    for name, path in usecase_files(PACKAGE_USECASES).items():
        (folder / f"{name}.yaml").write_text(path.read_text())
    raw = yaml.safe_load(next(iter(usecase_files(PACKAGE_USECASES).values())).read_text())
    for i in range(3):
        (folder / f"copy{i}.yaml").write_text(yaml.safe_dump({**raw, "name": f"copy{i}"}))
    return folder


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in DAG_FILES])
def test_dag_file_parses_fast_without_heavy_imports(path: Path, several_usecases: Path):
    env = {**os.environ, "CLOSEDLOOP_USECASES_DIR": str(several_usecases)}
    out = subprocess.run(
        [sys.executable, "-c", _PARSE_PROBE, str(path), ",".join(HEAVY)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(probe["dags"]) == 4 * len(usecase_files(several_usecases))
    assert probe["heavy"] == [], f"{path.name} imports {probe['heavy']} at parse time"
    assert probe["seconds"] < 1.0, f"{path.name} took {probe['seconds']:.2f}s to parse"
