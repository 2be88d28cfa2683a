"""The same DAGs on the production profile: Airflow on PostgreSQL with the CeleryExecutor
(Redis broker) and a separate Celery worker process, the MLflow tracking server on
PostgreSQL with basic-auth and proxied artifacts, the Feast SQL registry on PostgreSQL and
its online store on Redis, the promotion ledger on PostgreSQL.

One story, in order, on one stack: 21 days of history are loaded in this process while
the stack starts; then ``hotel_bookings_features`` runs two more days and
``hotel_bookings_training`` trains as of their end — each run triggered over the
authenticated REST API, each task run by the Celery worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from closedloop.core import offline
from closedloop.core.settings import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]

FIRST = date(2026, 1, 1)
HISTORY_DAYS, WATCHED_DAYS = 21, 2
ROWS_PER_DAY = 150
WATCHED = [FIRST + timedelta(days=HISTORY_DAYS + i) for i in range(WATCHED_DAYS)]
AS_OF = datetime.combine(WATCHED[-1] + timedelta(days=1), datetime.min.time(), UTC)


def midnight_after(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC)


@pytest.fixture(scope="module")
def stack(production_env):
    """The started stack, with the history already in the stores."""
    from closedloop.core.feature_pipeline import backfill
    from closedloop.platform.stack import ProductionStack, ensure_databases
    from closedloop.usecases.hotel.generator import write_batches

    settings = load_settings()
    ensure_databases(settings)
    processes = ProductionStack(settings, use_job_schedule=False)
    with processes.starting(timeout=240):
        write_batches(
            settings.landing_dir, FIRST, HISTORY_DAYS + WATCHED_DAYS, rows_per_day=ROWS_PER_DAY
        )
        backfill(settings, FIRST, HISTORY_DAYS)
    try:
        processes.wait_for_dags(["hotel_bookings_features", "hotel_bookings_training"])
        # Training is triggered explicitly below, not by each features run's Asset event.
        processes.set_paused("hotel_bookings_training", True)
        yield processes
    finally:
        processes.stop()


def failure_report(stack, dag_id: str, run_id: str) -> str:
    """Task states, and the end of each failed task's log (the worker writes them under
    the home folder, which is gone after the session)."""
    states = stack.task_states(dag_id, run_id)
    report = [str(states)]
    logs = stack.settings.airflow_home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
    for task, state in states.items():
        if state in ("failed", "up_for_retry"):
            for path in sorted(logs.glob(f"task_id={task}/*.log")):
                report.append(f"--- {path.name}\n" + path.read_text()[-3000:])
    return "\n".join(report)


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_mlflow_and_airflow_require_login(stack, production_env):
    settings = stack.settings
    search = f"{settings.mlflow_tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1"
    user, password = (
        production_env["MLFLOW_TRACKING_USERNAME"],
        production_env["MLFLOW_TRACKING_PASSWORD"],
    )
    basic = b64encode(f"{user}:{password}".encode()).decode()
    wrong = b64encode(f"{user}:not-{password}".encode()).decode()
    assert _status(search) == 401
    assert _status(search, {"Authorization": f"Basic {wrong}"}) == 401
    assert _status(search, {"Authorization": f"Basic {basic}"}) == 200

    dags = f"{settings.airflow_api_url}/api/v2/dags"
    assert _status(dags) == 401
    assert _status(dags, {"Authorization": f"Bearer {stack.token()}"}) == 200
    with pytest.raises(RuntimeError, match="401"):
        stack._request(
            "POST", "/auth/token", {"username": "admin", "password": "admin"}, auth=False
        )


@pytest.mark.parametrize("component", ["scheduler", "dag-processor", "triggerer", "worker"])
def test_compose_health_checks_pass_on_the_running_stack(stack, component):
    """The commands compose's health checks run (``closedloop stack health``)."""
    closedloop = str(Path(sys.executable).with_name("closedloop"))
    done = subprocess.run(
        [closedloop, "stack", "health", component],
        # as in a container: the settings, none of this test process's Airflow config
        env={k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_hotel_features_on_celery_fills_offline_store_and_redis(stack):
    import redis
    from sqlalchemy import create_engine, text

    from closedloop.core.feature_store import open_store

    settings = stack.settings
    started = time.monotonic()
    runs = [stack.trigger("hotel_bookings_features", midnight_after(day)) for day in WATCHED]
    states = [stack.wait("hotel_bookings_features", run, timeout=300) for run in runs]
    seconds = time.monotonic() - started
    assert states == ["success"] * len(runs), [
        failure_report(stack, "hotel_bookings_features", r) for r in runs
    ]
    print(f"hotel_bookings_features x{len(runs)} under Celery: {seconds:.1f}s")
    # The worker imported the heavy libraries before forking its pool: no task pays
    # 10-20 s of imports (closedloop.platform.celery_config).
    durations = sorted(
        ti["duration"]
        for r in runs
        for ti in stack._request(
            "GET", f"/api/v2/dags/hotel_bookings_features/dagRuns/{r}/taskInstances?limit=100"
        )["task_instances"]
    )
    print(f"task durations: {[round(d, 1) for d in durations]}")
    # (Preloaded, the slowest task took 5 s here; without it, six took 10-17 s.)
    assert sum(d > 8 for d in durations) <= 1, durations

    # Offline: every landed booking of the watched days is in its partition.
    counts = offline.row_counts(settings.offline_table_dir("events"))
    for day in WATCHED:
        landed = len(pd.read_csv(settings.landing_dir / f"{day}.csv"))
        assert counts[str(day)] == landed

    # Online: Redis serves the latest offline row of each of the last day's customers.
    history = offline.read_partitions(settings.offline_table_dir("customer_aggregates"))
    latest = history.sort_values("event_ts").groupby("customer_id").tail(1).set_index("customer_id")
    customers = sorted(pd.read_csv(settings.landing_dir / f"{WATCHED[-1]}.csv")["customer_id"])
    customers = sorted(set(customers))[:40]
    store = open_store(settings)
    online = (
        store.get_online_features(
            features=["customer_aggregates:cust_bookings", "customer_aggregates:cust_cancel_rate"],
            entity_rows=[{"customer_id": c} for c in customers],
        )
        .to_df()
        .set_index("customer_id")
    )
    assert online["cust_bookings"].tolist() == latest.loc[customers, "cust_bookings"].tolist()
    assert online["cust_cancel_rate"].tolist() == pytest.approx(
        latest.loc[customers, "cust_cancel_rate"].tolist()
    )
    assert redis.Redis.from_url(settings.stores.redis_url).dbsize() > len(customers)
    assert not (settings.feast_dir / "online.db").exists(), "no SQLite online store"

    # The tasks went through Celery: one result per task instance in the result backend
    # (Airflow's PostgreSQL database; the worker may store the last one just after the
    # run is marked done), and the Feast registry is in PostgreSQL.
    tasks = sum(len(stack.task_states("hotel_bookings_features", r)) for r in runs)
    airflow_db = create_engine(settings.airflow_sql_alchemy_conn)
    deadline = time.monotonic() + 20
    with airflow_db.connect() as conn:
        while True:
            done = conn.execute(
                text("SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'")
            ).scalar()
            conn.commit()
            if done >= tasks or time.monotonic() > deadline:
                break
            time.sleep(1)
    airflow_db.dispose()
    assert done == tasks == 7 * len(runs)
    feast_db = create_engine(settings.feast_registry["path"])
    with feast_db.connect() as conn:
        views = conn.execute(text("SELECT count(*) FROM feature_views")).scalar()
    feast_db.dispose()
    assert views >= 3


def test_hotel_training_on_celery_registers_a_champion_in_mlflow_on_postgres(stack):
    from sqlalchemy import create_engine, text

    from closedloop.core.ledger import PromotionLedger
    from closedloop.core.registry import CHAMPION, alias_version, client_for

    settings = stack.settings
    stack.set_paused("hotel_bookings_training", False)
    started = time.monotonic()
    run_id = stack.trigger(
        "hotel_bookings_training", AS_OF, {"reason": "production-suite", "as_of": AS_OF.isoformat()}
    )
    state = stack.wait("hotel_bookings_training", run_id, timeout=420)
    print(f"hotel_bookings_training under Celery: {time.monotonic() - started:.1f}s")
    assert state == "success", failure_report(stack, "hotel_bookings_training", run_id)

    client = client_for(settings)
    version = alias_version(client, settings.model_name, CHAMPION)
    assert version is not None, "the first model clears the floors and becomes champion"
    model_version = client.get_model_version(settings.model_name, version)
    assert run_id in model_version.tags["closedloop.dag_run_id"]
    run = client.get_run(model_version.run_id)
    assert run_id in run.data.tags["closedloop.dag_run_id"]
    # Artifacts went through the server (proxied), not to a path of this process.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert any(settings.home.joinpath("mlflow", "artifacts").rglob("MLmodel"))

    # The tracking server keeps it in PostgreSQL; the ledger is there too.
    mlflow_db = create_engine(settings.mlflow_backend_store_uri)
    with mlflow_db.connect() as conn:
        aliases = conn.execute(
            text("SELECT alias, version FROM registered_model_aliases WHERE name = :n"),
            {"n": settings.model_name},
        ).all()
    mlflow_db.dispose()
    assert (CHAMPION, int(version)) in [(a, int(v)) for a, v in aliases]
    entries = PromotionLedger(settings.closedloop_db).history(settings.model_name)
    assert [(e.action, str(e.version)) for e in entries if e.action == "promote"] == [
        ("promote", version)
    ]
