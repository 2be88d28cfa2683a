"""The production profile with ``compute: spark``: the same DAG files, each task run by
the Celery worker, the data path on Feast's Spark offline store and Spark compute engine
(pyspark in local mode: the task process is the Spark driver's client, its JVM the
driver) and Redis as the online store.

One story on one stack: the history is loaded in this process while the stack starts
(with ``compute: local``: it is not what is tested, and a JVM here costs a minute);
``hotel_bookings_features`` runs DAY and its Spark driver is killed (``kill -9``) between
two feature views of the materialization, and Airflow's retry leaves Redis complete with
nothing doubled; ``hotel_bookings_training`` trains as of DAY's end on Spark, and the run
is reproduced with ``compute: local``: the same training-set digest and the same metrics;
``hotel_bookings_batch_inference`` scores DAY with that champion on Spark, twice (a clear
of its run), and writes the very files ``compute: local`` writes for DAY.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import psutil
import pytest

from closedloop.core import failpoints
from closedloop.core.settings import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]

FIRST = date(2026, 1, 1)
HISTORY_DAYS, ROWS_PER_DAY = 14, 150
DAY = FIRST + timedelta(days=HISTORY_DAYS)
START = datetime.combine(DAY, datetime.min.time(), UTC)
END = START + timedelta(days=1)
FEATURES, TRAINING = "hotel_bookings_features", "hotel_bookings_training"
BATCH = "hotel_bookings_batch_inference"
ONLINE_VIEWS = ("event_features", "customer_aggregates", "hotel_aggregates")
#: a failed task is retried 2 s later, and a task without heartbeat failed after 20 s
FAST_RETRY = {
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
    "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "2",
}


@pytest.fixture(scope="module")
def stack(production_env):
    """The started stack on ``compute: spark``, the history loaded."""
    from closedloop.core.feature_pipeline import backfill
    from closedloop.platform.stack import ProductionStack, ensure_databases
    from closedloop.usecases.hotel.generator import write_batches

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOSEDLOOP_COMPUTE", "spark")
        settings = load_settings()
        assert settings.compute == "spark"
        ensure_databases(settings)
        points = settings.home / "failpoints"
        points.mkdir(parents=True)
        processes = ProductionStack(
            settings,
            use_job_schedule=False,
            environ_extra={**FAST_RETRY, failpoints.ENV: str(points)},
        )
        with processes.starting(timeout=240):
            write_batches(settings.landing_dir, FIRST, HISTORY_DAYS + 1, rows_per_day=ROWS_PER_DAY)
            backfill(settings.model_copy(update={"compute": "local"}), FIRST, HISTORY_DAYS)
        try:
            processes.wait_for_dags([FEATURES, TRAINING])
            processes.set_paused(TRAINING, True)  # trained when the test says so
            yield processes
        finally:
            processes.stop()


def failure_report(stack, dag_id: str, run_id: str) -> str:
    states = stack.task_states(dag_id, run_id)
    report = [str(states)]
    logs = stack.settings.airflow_home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
    for task, state in states.items():
        if state not in ("success", "skipped"):
            for path in sorted(logs.glob(f"task_id={task}/*.log")):
                report.append(f"--- {path.name}\n" + path.read_text()[-3000:])
    return "\n".join(report)


def spark_driver(task_pid: int) -> psutil.Process:
    """The JVM pyspark started for the task process: Spark's driver in local mode."""
    found = []
    for child in psutil.Process(task_pid).children(recursive=True):
        try:
            if "org.apache.spark.deploy.SparkSubmit" in child.cmdline():
                found.append(child)
        except (psutil.ZombieProcess, psutil.NoSuchProcess):  # e.g. `java -version`, done
            continue
    assert len(found) == 1, found
    return found[0]


def newest_offline(settings, view_name: str) -> pd.DataFrame:
    """Each entity's newest offline row of the view stamped by END (pandas)."""
    from closedloop.core.feature_store import open_store

    view = open_store(settings).get_feature_view(view_name)
    [key] = [c.name for c in view.entity_columns]
    ts = view.batch_source.timestamp_field
    frame = pd.concat(
        [pd.read_parquet(p) for p in sorted(Path(view.batch_source.path).glob("*.parquet"))],
        ignore_index=True,
    )
    frame = frame[frame[ts] <= END]
    return frame.sort_values(ts, kind="stable").groupby(key).tail(1).set_index(key)


def online_mismatches(settings, view_name: str) -> list[str]:
    """Entities of the view whose Redis values differ from their newest offline row."""
    from closedloop.core.feature_store import open_store

    store = open_store(settings)
    view = store.get_feature_view(view_name)
    [key] = [c.name for c in view.entity_columns]
    names = [f.name for f in view.features]
    newest = newest_offline(settings, view_name)
    keys = sorted(newest.index)
    online = (
        store.get_online_features(
            features=[f"{view_name}:{n}" for n in names], entity_rows=[{key: k} for k in keys]
        )
        .to_df()
        .set_index(key)
        .loc[keys]
    )
    wrong = []
    for k in keys:
        for n in names:
            want, got = newest.at[k, n], online.at[k, n]
            if not (pd.isna(want) and pd.isna(got)) and want != got:
                wrong.append(f"{k}.{n}: online {got!r}, offline {want!r}")
    return wrong


def feast_keys(settings) -> list[bytes]:
    """The online store's keys in Redis: one hash per entity key, named by the
    serialized key and the project (the broker's keys share the database)."""
    import redis

    client = redis.Redis.from_url(settings.stores.redis_url)
    try:
        suffix = settings.usecase.name.encode()
        return sorted(k for k in client.scan_iter(count=1000) if k.endswith(suffix))
    finally:
        client.close()


@pytest.fixture(scope="module")
def killed_mid_materialization(stack):
    """DAY's features run, its Spark driver killed between two views; retried."""
    points = stack.settings.home / "failpoints"
    failpoints.arm(points, "materialize.view_written", seconds=20)
    run_id = stack.trigger(FEATURES, END, run_id=f"spark-{DAY}")
    deadline = time.monotonic() + 300
    while (pid := failpoints.held_by(points, "materialize.view_written")) is None:
        stack.check_alive()
        assert stack.run(FEATURES, run_id)["state"] != "failed", failure_report(
            stack, FEATURES, run_id
        )
        assert time.monotonic() < deadline, "materialize never reached the fault point"
        time.sleep(0.2)
    online = {v: not online_mismatches(stack.settings, v) for v in ONLINE_VIEWS}
    driver = spark_driver(pid)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    state = stack.wait(FEATURES, run_id, timeout=600)
    assert state == "success", failure_report(stack, FEATURES, run_id)
    ti = stack._request(
        "GET", f"/api/v2/dags/{FEATURES}/dagRuns/{run_id}/taskInstances/materialize"
    )
    return {"online_at_kill": online, "materialize": ti, "run_id": run_id}


def test_the_spark_driver_killed_mid_materialization_is_retried(killed_mid_materialization):
    fault = killed_mid_materialization
    # In the middle: one view of DAY was in Redis, the others were not yet.
    assert sorted(fault["online_at_kill"].values()) == [False, False, True], fault
    # The killed driver failed the try; the retry (a new driver) finished the interval.
    assert fault["materialize"]["try_number"] == 2, fault["materialize"]


def test_after_the_retry_redis_is_complete_and_nothing_is_doubled(
    stack, killed_mid_materialization
):
    settings = stack.settings
    for view in ONLINE_VIEWS:
        assert online_mismatches(settings, view) == [], view
    # One Redis hash per entity key of every view, no more: the events' ids, the
    # customers and the hotels with an offline row stamped by END.
    expected = sum(len(newest_offline(settings, v)) for v in ONLINE_VIEWS)
    keys = feast_keys(settings)
    assert len(keys) == expected == len(set(keys))


def xcom(stack, dag_id: str, run_id: str, task_id: str):
    """What the task returned (its ``return_value`` XCom)."""
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries"
    return stack._request("GET", f"{path}/return_value")["value"]


def on_local_compute(settings, folder: Path, **update):
    """``settings`` with ``compute: local`` (and ``update``): it reads the same offline
    tables through Feast's file store, whose file sources live in a registry of their own
    in ``folder`` (the stack's holds Spark sources)."""
    from closedloop.core.feature_store import apply_definitions, open_store

    stores = settings.stores.model_copy(
        update={"feast_registry": f"sqlite:///{folder / 'local-registry.db'}"}
    )
    local = settings.model_copy(update={"compute": "local", "stores": stores, **update})
    apply_definitions(open_store(local), local)
    return local


@pytest.fixture(scope="module")
def trained_on_spark(stack, killed_mid_materialization):
    """The training DAG's run as of DAY's end, on Spark; its version made champion."""
    stack.set_paused(TRAINING, False)
    run_id = stack.trigger(
        TRAINING, END, {"reason": "manual", "as_of": END.isoformat()}, run_id=f"spark-{DAY}"
    )
    state = stack.wait(TRAINING, run_id, timeout=600)
    assert state == "success", failure_report(stack, TRAINING, run_id)
    gate = xcom(stack, TRAINING, run_id, "gate")
    assert gate["action"] == "promoted", gate
    return {"run_id": run_id, "version": str(xcom(stack, TRAINING, run_id, "register"))}


def test_training_on_spark_reproduces_on_local_compute(stack, trained_on_spark, tmp_path):
    """The training DAG builds its training set on Spark in the worker; rebuilt and
    retrained in this process with ``compute: local``, the digest and metrics agree."""
    from closedloop.core import tags
    from closedloop.core.registry import client_for, experiment_name
    from closedloop.core.training_pipeline import reproduce

    settings = stack.settings
    client = client_for(settings)
    experiment = client.get_experiment_by_name(experiment_name(settings))
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{tags.DAG_RUN_ID}` = '{TRAINING}/{trained_on_spark['run_id']}'",
    )
    [trained] = [r for r in runs if tags.DATA_DIGEST in r.data.tags]
    again = reproduce(on_local_compute(settings, tmp_path), trained.info.run_id)
    assert again["data_digest"] == trained.data.tags[tags.DATA_DIGEST]
    assert again["identical"], again


def scored_files(settings) -> dict[str, bytes]:
    """Every file of the predictions table and the prediction log, by path: their bytes."""
    from closedloop.core.batch_inference import predictions_dir

    folders = {"predictions": predictions_dir(settings), "log": settings.prediction_log_dir}
    return {
        f"{name}/{path.relative_to(folder)}": path.read_bytes()
        for name, folder in folders.items()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def scored_on_spark(stack, trained_on_spark):
    """DAY scored by the batch DAG on Spark, then again (Airflow's clear of the run: the
    same interval, the task once more): each time what the task returned and the files
    of both outputs' folders."""
    run_id = stack.trigger(BATCH, END, run_id=f"spark-{DAY}")

    def finished():
        state = stack.wait(BATCH, run_id, timeout=600)
        assert state == "success", failure_report(stack, BATCH, run_id)
        return xcom(stack, BATCH, run_id, "score"), scored_files(stack.settings)

    first = finished()
    stack._request(
        "POST",
        f"/api/v2/dags/{BATCH}/clearTaskInstances",
        {"dry_run": False, "dag_run_id": run_id, "only_failed": False},
    )
    assert stack.run(BATCH, run_id)["state"] != "success"
    rerun = finished()
    ti = stack._request("GET", f"/api/v2/dags/{BATCH}/dagRuns/{run_id}/taskInstances/score")
    assert ti["try_number"] == 2, ti
    return first, rerun


def test_batch_inference_on_spark_writes_what_local_compute_writes(
    stack, trained_on_spark, scored_on_spark, tmp_path
):
    """The batch DAG scores DAY with the champion on Spark in the worker; scored in this
    process with ``compute: local`` from the same offline tables and registry into
    another home, both outputs are the same bytes."""
    from closedloop.core.batch_inference import score_interval

    (out, files), _ = scored_on_spark
    # Spark's Python workers scored the chunks, having loaded the champion.
    assert out["spark"]["chunks"] == out["chunks"] >= 1, out
    assert out["spark"]["workers"] >= 1 and out["spark"]["model_loads"] >= 1, out
    assert out["model_version"] == trained_on_spark["version"], out
    assert out["rows"] > ROWS_PER_DAY / 2, out
    # batch inference writes under its home: another one, whose offline tables are the
    # stack's (a link), and a registry of file sources (on_local_compute)
    home = tmp_path / "home"
    (home / "offline").mkdir(parents=True)
    (home / "offline" / stack.settings.usecase.name).symlink_to(stack.settings.offline_dir)
    local = on_local_compute(stack.settings, tmp_path, home=home)
    mine = score_interval(local, START, END)
    assert "spark" not in mine
    assert (mine["rows"], mine["chunks"]) == (out["rows"], out["chunks"])
    assert mine["model_version"] == out["model_version"]  # still the champion
    assert list(files) == [
        f"predictions/{DAY}.parquet",
        f"log/source=batch/{DAY}/batch.parquet",
    ]
    assert scored_files(local) == files


def test_batch_inference_rerun_on_spark_leaves_the_same_files(scored_on_spark):
    (first, files), (rerun, files_again) = scored_on_spark
    assert "spark" in rerun and rerun["rows"] == first["rows"]
    assert files_again == files
