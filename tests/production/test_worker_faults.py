"""``kill -9`` of the Celery worker in the middle of a task, on the production profile
(Airflow on PostgreSQL with the CeleryExecutor and a Redis broker, MLflow server on
PostgreSQL, Feast SQL registry and Redis online store): Airflow retries the task on the
restarted worker, and nothing is lost or doubled.

How a kill lands *in the middle* of a step: the step stops at a fault-injection point
(:mod:`closedloop.core.failpoints`, armed by a file, off in production) where it has
begun writing and not finished — one feature view in Redis and not the others; a model
logged to an MLflow run that has not ended; aliases moved and the ledger not told; both
batch outputs in temporary files, not yet in place. The test sees the point taken (the
task process writes its pid there), checks the half-done state it wanted, and kills the
worker's whole process tree (pool, supervisors and the task processes, which sit in
process groups of their own) as a dead machine or container would, then starts a new
worker. Airflow finds the task without a heartbeat and retries it.

The stack runs with short timings so that takes ~30 s, not ~6 min (Airflow's defaults:
300 s heartbeat timeout, closedloop's 30 s retry delay): see :data:`FAST_FAILURE`.
Celery needs nothing: ``task_acks_late`` keeps the killed task's message unacknowledged
in Redis, to be redelivered only after the visibility timeout (24 h) — never while the
retry runs — and a redelivered message names a task-instance try that no longer exists,
so the execution API refuses to run it.

The invariants are computed here, from the files and servers, not by the code under test:
row counts and a content hash of every output equal to a clean run's of the same
interval, the online store equal to the newest offline rows (pandas), no temporary file
left, one model version per successful training run, and no alias ever on a version the
gate did not bless (a ``challenger`` is a version the gate judged and rejected).
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from closedloop.core import failpoints
from closedloop.core.settings import load_settings
from closedloop.platform.stack import session_processes

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]

FIRST = date(2026, 1, 1)
HISTORY_DAYS, ROWS_PER_DAY = 21, 150
DAY = FIRST + timedelta(days=HISTORY_DAYS)  # the day the DAGs process
START = datetime.combine(DAY, datetime.min.time(), UTC)
END = START + timedelta(days=1)

#: Fail fast: a task whose heartbeat stops is failed after 20 s (the supervisor beats
#: every 2 s) and retried 2 s later — by then the new worker is about ready (it imports
#: the heavy libraries before it takes tasks: ~25 s here). Set for every component.
FAST_FAILURE = {
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "2",
    "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "2",
}


@pytest.fixture(scope="module")
def stack(production_env):
    """The started stack (fast failure detection, fault points enabled), with the
    history loaded in this process while it starts."""
    from closedloop.core.feature_pipeline import backfill
    from closedloop.platform.stack import ProductionStack, ensure_databases
    from closedloop.usecases.hotel.generator import write_batches

    settings = load_settings()
    ensure_databases(settings)
    points = settings.home / "failpoints"
    points.mkdir(parents=True)
    processes = ProductionStack(
        settings,
        use_job_schedule=False,
        environ_extra={**FAST_FAILURE, failpoints.ENV: str(points)},
    )
    with processes.starting(timeout=240):
        write_batches(settings.landing_dir, FIRST, HISTORY_DAYS + 1, rows_per_day=ROWS_PER_DAY)
        backfill(settings, FIRST, HISTORY_DAYS)
        step("history loaded")
    step("stack started")
    try:
        processes.wait_for_dags(
            ["hotel_bookings_features", "hotel_bookings_training", "hotel_bookings_batch_inference"]
        )
        # Training runs when a test triggers it, not on the features runs' Asset events.
        processes.set_paused("hotel_bookings_training", True)
        yield processes
    finally:
        # kill -9, not a graceful stop: the databases go next anyway, and a task held at
        # a fault point (a test that failed before its kill) would keep the worker's warm
        # shutdown waiting and outlive it (its process group is its own, not the worker's).
        for name, proc in list(processes.processes.items()):
            if proc.poll() is None:
                processes.kill(name)
        processes.stop()


# -- driving a fault -------------------------------------------------------------------


def task_instance(stack, dag_id: str, run_id: str, task_id: str) -> dict:
    return stack._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")


def failure_report(stack, dag_id: str, run_id: str) -> str:
    states = stack.task_states(dag_id, run_id)
    report = [str(states)]
    logs = stack.settings.airflow_home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
    for task, state in states.items():
        if state not in ("success", "skipped"):
            for path in sorted(logs.glob(f"task_id={task}/*.log")):
                report.append(f"--- {path.name}\n" + path.read_text()[-3000:])
    return "\n".join(report)


_CLOCK = [time.monotonic()]


def step(what: str) -> None:
    """Print how long the previous step took (shown with ``-s`` or on failure)."""
    now = time.monotonic()
    print(f"+{now - _CLOCK[0]:5.1f}s {what}")
    _CLOCK[0] = now


def wait_for_point(stack, point: str, dag_id: str, run_id: str, task_id: str) -> int:
    """Wait until ``task_id`` of the run stops at ``point``; return the task process's pid
    after checking it is the running first attempt and a process of the worker."""
    folder = stack.settings.home / "failpoints"
    deadline = time.monotonic() + 180
    while (pid := failpoints.held_by(folder, point)) is None:
        stack.check_alive()
        assert stack.run(dag_id, run_id)["state"] not in ("success", "failed"), failure_report(
            stack, dag_id, run_id
        )
        assert time.monotonic() < deadline, f"{dag_id}.{task_id} never reached {point}"
        time.sleep(0.2)
    step(f"{dag_id}.{task_id} stopped at {point}")
    ti = task_instance(stack, dag_id, run_id, task_id)
    assert (ti["state"], ti["try_number"]) == ("running", 1), ti
    assert os.getsid(pid) == stack.processes["worker"].pid, "the task runs in the worker"
    return pid


def crash_worker(stack, task_pid: int, also: int | None = None) -> None:
    """``kill -9`` every process of the Celery worker, then start a new worker."""
    worker = stack.processes["worker"].pid
    killed = stack.kill("worker")
    assert task_pid in killed and len(killed) >= 3, killed  # main, pool, task process
    assert also is None or also in killed, (also, killed)
    assert session_processes(worker) == []  # the task process too (gone, or a zombie)
    step(f"killed the worker's {len(killed)} processes")
    stack.restart("worker")


def rerun_clean(stack, dag_id: str, run_id: str) -> None:
    """Run the run's interval again, every task once more and no fault (Airflow's
    *clear*: an interval has one run — one logical date), and wait for it to succeed."""
    stack._request(
        "POST",
        f"/api/v2/dags/{dag_id}/clearTaskInstances",
        {"dry_run": False, "dag_run_id": run_id, "only_failed": False, "reset_dag_runs": True},
    )
    assert stack.run(dag_id, run_id)["state"] != "success"
    state = stack.wait(dag_id, run_id, timeout=300)
    step(f"{dag_id} {run_id} rerun: {state}")
    assert state == "success", failure_report(stack, dag_id, run_id)


def finish(stack, dag_id: str, run_id: str, task_id: str, attempts: int = 2) -> None:
    """Wait for the run to succeed with ``task_id`` done on attempt ``attempts``."""
    deadline = time.monotonic() + 300
    while True:
        ti = task_instance(stack, dag_id, run_id, task_id)
        if ti["try_number"] >= attempts and ti["state"] in ("running", "success", "failed"):
            break
        assert time.monotonic() < deadline, ti
        time.sleep(0.5)
    step(f"{dag_id}.{task_id} attempt {ti['try_number']} started")
    state = stack.wait(dag_id, run_id, timeout=300)
    step(f"{dag_id} {run_id} finished: {state}")
    tis = stack._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
    print("   ", {t["task_id"]: round(t["duration"] or 0, 1) for t in tis["task_instances"]})
    assert state == "success", failure_report(stack, dag_id, run_id)
    ti = task_instance(stack, dag_id, run_id, task_id)
    assert (ti["state"], ti["try_number"]) == ("success", attempts), ti


# -- what the outputs are, computed here -----------------------------------------------


def content(path: Path) -> tuple[int, str]:
    """Rows and a hash of a Parquet file's content: its columns, their types and its rows
    as a set (row order is not content)."""
    frame = pd.read_parquet(path)
    frame = frame.sort_values(list(frame.columns), kind="stable").reset_index(drop=True)
    digest = hashlib.sha256(repr([(c, str(t)) for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return len(frame), digest.hexdigest()


def folder_contents(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``folder`` (hidden ones too): Parquet content, or None."""
    return {
        str(p.relative_to(folder)): content(p) if p.suffix == ".parquet" else None
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def temporaries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*.tmp"))


def day_outputs(settings) -> dict[str, tuple[int, str]]:
    """The offline partitions of DAY of every table."""
    return {
        table: content(settings.offline_table_dir(table) / f"{DAY}.parquet")
        for table in settings.usecase.offline_tables
    }


def online_mismatches(settings, view_name: str) -> list[str]:
    """Entities of ``view_name`` stamped in [START, END] whose Redis values differ from the
    newest offline row stamped by END (read with pandas from the Parquet partitions)."""
    from closedloop.core.feature_store import open_store

    store = open_store(settings)
    view = store.get_feature_view(view_name)
    [key] = [c.name for c in view.entity_columns]
    ts = view.batch_source.timestamp_field
    names = [f.name for f in view.features]
    frame = pd.concat(
        [pd.read_parquet(p) for p in sorted(Path(view.batch_source.path).glob("*.parquet"))],
        ignore_index=True,
    )
    frame = frame[frame[ts] <= END]
    keys = sorted(frame.loc[frame[ts] >= START, key].unique())
    assert keys, f"{view_name}: no rows in the interval"
    newest = frame.sort_values(ts, kind="stable").groupby(key).tail(1).set_index(key).loc[keys]
    online = (
        store.get_online_features(
            features=[f"{view_name}:{n}" for n in names],
            entity_rows=[{key: k} for k in keys],
        )
        .to_df()
        .set_index(key)
        .loc[keys]
    )
    wrong = []
    for name in names:
        want, got = newest[name], online[name]
        if pd.api.types.is_numeric_dtype(want):
            same = np.isclose(
                want.to_numpy(float), pd.to_numeric(got).to_numpy(float), equal_nan=True
            )
        else:
            same = (want.astype(object) == got.astype(object)).to_numpy()
        wrong += [f"{view_name}.{name}[{k}]" for k in np.asarray(keys)[~same]]
    return wrong


# -- the faults ------------------------------------------------------------------------


class AliasWatcher(threading.Thread):
    """Samples the registered model's aliases and the gate's tag of each aliased version
    twice a second, recording every (alias, version, blessed) it sees. (The gate tags a
    version before it moves an alias to it, so a sample never races the move.)"""

    def __init__(self, settings) -> None:
        super().__init__(daemon=True)
        from closedloop.core.registry import client_for

        self.client, self.model = client_for(settings), settings.model_name
        self.seen: set[tuple[str, str, str | None]] = set()
        self.errors: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        from mlflow.exceptions import MlflowException

        while not self._halt.wait(0.5):
            try:
                aliases = self.client.get_registered_model(self.model).aliases
                for alias, version in aliases.items():
                    tags = self.client.get_model_version(self.model, str(version)).tags
                    self.seen.add((alias, str(version), tags.get("closedloop.blessed")))
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # no model yet
                    self.errors.append(str(exc))
            except OSError as exc:  # the server is under load; the next sample counts
                self.errors.append(str(exc))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)


def test_worker_killed_mid_training_and_task_killed_mid_gate(stack):
    """The worker dies with the model logged to a run that has not ended; on the retry
    the gate's task process dies after the aliases moved, before the ledger heard of it.
    The run ends with one model version, one finished MLflow run (the killed attempt's
    run ended as KILLED), the move in the ledger once, and no alias was ever seen on a
    version the gate had not blessed."""
    from mlflow.entities import ViewType

    from closedloop.core.ledger import PromotionLedger
    from closedloop.core.registry import CHAMPION, client_for
    from closedloop.core.tags import BLESSED, DAG_RUN_ID

    settings = stack.settings
    points = settings.home / "failpoints"
    client = client_for(settings)
    step("training")
    watcher = AliasWatcher(settings)
    watcher.start()
    stack.set_paused("hotel_bookings_training", False)
    failpoints.arm(points, "train.model_logged")
    failpoints.arm(points, "gate.aliases_moved")
    # Trained on the history, as of the end of its last day.
    run_id = stack.trigger(
        "hotel_bookings_training",
        START,
        {"reason": "worker-faults", "as_of": START.isoformat()},
        run_id="fault-training",
    )
    key = f"hotel_bookings_training/{run_id}"

    def experiment_id() -> str:
        return client.get_experiment_by_name(f"closedloop/{settings.usecase.name}").experiment_id

    def parent_runs() -> dict[str, str]:
        runs = client.search_runs(
            [experiment_id()],
            filter_string=f"tags.`{DAG_RUN_ID}` = '{key}'",
            run_view_type=ViewType.ALL,
        )
        return {
            r.info.run_id: r.info.status for r in runs if "mlflow.parentRunId" not in r.data.tags
        }

    def versions() -> list:
        return [
            mv
            for mv in client.search_model_versions(f"name = '{settings.model_name}'")
            if mv.tags.get(DAG_RUN_ID) == key
        ]

    try:
        pid = wait_for_point(
            stack, "train.model_logged", "hotel_bookings_training", run_id, "train"
        )
        [killed_run] = parent_runs()
        assert parent_runs() == {killed_run: "RUNNING"}
        logged = client.search_logged_models([experiment_id()])
        assert [m.source_run_id for m in logged] == [killed_run], "the model is logged"
        assert versions() == []
        crash_worker(stack, pid)

        gate_pid = wait_for_point(
            stack, "gate.aliases_moved", "hotel_bookings_training", run_id, "gate"
        )
        [version] = versions()
        assert client.get_registered_model(settings.model_name).aliases.get(CHAMPION) == str(
            version.version
        ), "the first model ever is blessed and the alias has moved"
        ledger = PromotionLedger(settings.closedloop_db)
        assert [e for e in ledger.history(settings.model_name) if e.run_id == run_id] == []
        os.kill(gate_pid, signal.SIGKILL)  # the task process only, as the OOM killer would
        step("killed the gate's task process")
        finish(stack, "hotel_bookings_training", run_id, "gate")
    finally:
        watcher.stop()
    assert task_instance(stack, "hotel_bookings_training", run_id, "train")["try_number"] == 2

    # One model version for the run, from its one finished MLflow run; the killed
    # attempt's run no longer claims to be running.
    [version] = versions()
    runs = parent_runs()
    assert runs == {version.run_id: "FINISHED", killed_run: "KILLED"}, runs
    assert version.tags[BLESSED] == "true"

    # The ledger has the promotion once, as the first attempt made it.
    history = PromotionLedger(settings.closedloop_db).history(settings.model_name)
    mine = [(e.action, e.alias, e.version, e.from_version) for e in history if e.run_id == run_id]
    assert mine == [("promote", CHAMPION, version.version, None)]

    # Never an alias on an unblessed version; every move in the ledger matches the tag.
    assert watcher.seen, f"the watcher saw nothing: {watcher.errors[-3:]}"
    assert (CHAMPION, version.version, "true") in watcher.seen
    for alias, number, blessed in watcher.seen:
        assert blessed in ("true", "false"), (alias, number, blessed)
        assert blessed == "true" or alias != CHAMPION, (alias, number, blessed)
    for entry in history:
        tag = client.get_model_version(settings.model_name, entry.version).tags[BLESSED]
        assert tag == {"promote": "true", "challenger": "false"}.get(entry.action, tag), entry

    # One version per successful training run, and none without one.
    successful = {
        f"hotel_bookings_training/{r['dag_run_id']}"
        for r in stack.runs("hotel_bookings_training")
        if r["state"] == "success"
    }
    per_run: dict[str, int] = {}
    for mv in client.search_model_versions(f"name = '{settings.model_name}'"):
        per_run[mv.tags.get(DAG_RUN_ID)] = per_run.get(mv.tags.get(DAG_RUN_ID), 0) + 1
    assert per_run == dict.fromkeys(successful, 1)


#: The batch run scores the last day of the history (its features are in the stores);
#: the features run processes the day after.
SCORED = DAY - timedelta(days=1)
SCORED_START, SCORED_END = START - timedelta(days=1), START


@pytest.fixture(scope="module")
def killed_mid_materialization_and_scoring(stack):
    """One ``kill -9`` of the worker while it holds two tasks in the middle of writing:
    ``hotel_bookings_features``' materialize (one view of DAY online, the others not) and
    ``hotel_bookings_batch_inference``'s score (both outputs of SCORED in temporary files, neither
    in place). Waits for both runs to succeed on the retry; returns their run ids and
    what was seen at the kill."""
    from closedloop.core.batch_inference import predictions_dir

    settings = stack.settings
    points = settings.home / "failpoints"
    step("materialization and batch inference")
    failpoints.arm(points, "materialize.view_written")
    failpoints.arm(points, "batch.outputs_staged")
    features = stack.trigger("hotel_bookings_features", END, run_id=f"fault-{DAY}")
    scoring = stack.trigger("hotel_bookings_batch_inference", START, run_id=f"fault-{SCORED}")
    wait_for_point(
        stack, "batch.outputs_staged", "hotel_bookings_batch_inference", scoring, "score"
    )
    pid = wait_for_point(
        stack, "materialize.view_written", "hotel_bookings_features", features, "materialize"
    )
    seen = {
        "tries": {
            task_instance(stack, "hotel_bookings_features", features, "materialize")["id"],
            task_instance(stack, "hotel_bookings_batch_inference", scoring, "score")["id"],
        },
        "online": {v: not online_mismatches(settings, v) for v in ONLINE_VIEWS},
        "temporaries": temporaries(predictions_dir(settings))
        + temporaries(settings.prediction_log_dir),
        "outputs": [
            p.exists()
            for p in (
                predictions_dir(settings) / f"{SCORED}.parquet",
                settings.prediction_log_dir / "source=batch" / str(SCORED) / "batch.parquet",
            )
        ],
    }
    crash_worker(stack, pid, also=failpoints.held_by(points, "batch.outputs_staged"))
    finish(stack, "hotel_bookings_features", features, "materialize")
    finish(stack, "hotel_bookings_batch_inference", scoring, "score")
    return {"features": features, "scoring": scoring, "seen": seen}


ONLINE_VIEWS = ("event_features", "customer_aggregates", "hotel_aggregates")


def test_worker_killed_mid_materialization(stack, killed_mid_materialization_and_scoring):
    """Killed with one feature view of the day in Redis and the others not: the retry
    leaves the offline partitions a clean run leaves and Redis serving the newest offline
    values of every entity of the interval."""
    settings = stack.settings
    fault = killed_mid_materialization_and_scoring
    # In the middle: one of the day's views was online, the others were not yet.
    assert sorted(fault["seen"]["online"].values()) == [False, False, True], fault["seen"]

    for view in ONLINE_VIEWS:
        assert online_mismatches(settings, view) == [], view
    after_fault = day_outputs(settings)
    landed = pd.read_csv(settings.landing_dir / f"{DAY}.csv")
    assert after_fault["events"][0] == len(landed)
    assert temporaries(settings.offline_dir) == []

    # A clean run of the same interval leaves exactly the same partitions.
    rerun_clean(stack, "hotel_bookings_features", fault["features"])
    assert day_outputs(settings) == after_fault
    for view in ONLINE_VIEWS:
        assert online_mismatches(settings, view) == [], view
    assert temporaries(settings.offline_dir) == []


def test_worker_killed_mid_batch_inference(stack, killed_mid_materialization_and_scoring):
    """Killed with both outputs complete in temporary files and neither in place: the
    retry writes each once, leaves no temporary file, and a clean run of the same interval
    leaves the very same predictions partition and prediction-log partition."""
    from closedloop.core.batch_inference import predictions_dir

    settings = stack.settings
    fault = killed_mid_materialization_and_scoring
    assert len(fault["seen"]["temporaries"]) == 2, fault["seen"]
    assert fault["seen"]["outputs"] == [False, False], fault["seen"]

    predictions, log = predictions_dir(settings), settings.prediction_log_dir
    after_fault = {"predictions": folder_contents(predictions), "log": folder_contents(log)}
    assert list(after_fault["predictions"]) == [f"{SCORED}.parquet"]
    assert list(after_fault["log"]) == [f"source=batch/{SCORED}/batch.parquet"]
    booked = pd.to_datetime(
        pd.read_csv(settings.landing_dir / f"{SCORED}.csv")["booking_ts"], utc=True
    )
    scored = int(((booked >= SCORED_START) & (booked < SCORED_END)).sum())
    assert scored > 100
    assert after_fault["predictions"][f"{SCORED}.parquet"][0] == scored
    assert after_fault["log"][f"source=batch/{SCORED}/batch.parquet"][0] == scored

    rerun_clean(stack, "hotel_bookings_batch_inference", fault["scoring"])
    assert {"predictions": folder_contents(predictions), "log": folder_contents(log)} == after_fault


def unacknowledged_tries(settings) -> set[str]:
    """Task-instance ids of the Celery messages the Redis broker holds unacknowledged
    (kombu's ``unacked`` hash: the raw message, whose body holds Airflow's workload)."""
    import base64
    import json

    import redis

    client = redis.Redis.from_url(settings.celery_broker_url)
    try:
        ids = set()
        for raw in client.hvals("unacked"):
            message = json.loads(raw)[0]
            args = json.loads(base64.b64decode(message["body"]))[0]
            ids.add(json.loads(args[0])["ti"]["id"])
        return ids
    finally:
        client.close()


def test_the_broker_neither_loses_nor_redelivers_a_killed_task(
    stack, killed_mid_materialization_and_scoring
):
    """``task_acks_late``: the messages of the killed tries were never acknowledged, so
    Redis keeps them (to redeliver after the visibility timeout, when the execution API
    refuses them: those tries are over); nothing was put back in the queue to run a
    second time beside Airflow's retry."""
    import redis

    from closedloop.platform.celery_config import CELERY_CONFIG

    assert CELERY_CONFIG["task_acks_late"] is True
    assert CELERY_CONFIG["broker_transport_options"]["visibility_timeout"] >= 6 * 3600
    killed = killed_mid_materialization_and_scoring["seen"]["tries"]
    assert killed <= unacknowledged_tries(stack.settings)
    client = redis.Redis.from_url(stack.settings.celery_broker_url)
    try:
        assert client.llen("default") == 0
    finally:
        client.close()
