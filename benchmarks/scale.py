"""Wall time and peak memory of the feature pipeline and of training at 10k, 100k and 1M
bookings, on the embedded and the production profile (the figures of docs/scaling.md).

For each profile and size: a fresh home (and, for production, fresh PostgreSQL databases,
an empty Redis database and an MLflow tracking server of its own), then three stages,
each in its own child process that reports its peak RSS (``VmHWM``):

* **generate** (set-up, not part of the pipeline): ``--days`` landed CSV batches of
  ``size / days`` bookings (the generator's weekday volume moves each day by ~10 %);
* **features**: ``closedloop.core.feature_pipeline.backfill`` over those days — the real
  steps (extract, GX validate, clean, engineer, load the offline Parquet partitions),
  then Feast apply and one ``materialize`` of the whole range into the online store;
* **training**: ``closedloop.core.training_pipeline.run_in_process`` at the end of the
  last day — Feast's point-in-time training set, GX, the model search, the MLflow run
  with the model, registration and the gate (the use case's own training config).

Each child imports the heavy libraries first and starts its clock after that (a task
forked from a preloaded worker does not pay them either); the import time and the RSS
after imports are printed too. The steps are timed by wrapping the pipeline's own
module functions, so the run is the real one and the breakdown says which step
dominates; after each step the child notes its peak RSS so far, which says which step
set the peak.

Production profile: Feast SQL registry on PostgreSQL, online store on Redis, the
promotion ledger on PostgreSQL, and MLflow through a real tracking server (``closedloop
stack``'s own ``mlflow`` component: PostgreSQL backend, basic-auth, proxied artifacts),
started per size with random credentials. Airflow is not involved: its per-task cost is
``benchmarks/loop.py``'s subject, and it does not grow with the data.

    .venv/bin/python benchmarks/scale.py                      # 10k, 100k, 1M; both profiles
    .venv/bin/python benchmarks/scale.py --sizes 10000 --profiles embedded
    .venv/bin/python benchmarks/scale.py --sizes 1000000 --profiles production,spark
    .venv/bin/python benchmarks/scale.py --sizes 1000000,10000000 --profiles spark \
        --search-rows 200000 --refit-rows 1000000

With ``--chunk-days K`` the days are generated and loaded K at a time (a backfill and a
materialization per chunk), each chunk's landed CSV removed once it is loaded: the
landed files on disk and each materialization bounded to K days (the CSV is ~126 bytes a
booking, 1.2 GB at 10M). The features stage's time leaves out the generation of the
later chunks.

With ``--day-tasks``, after the features stage the last day's feature tasks (extract,
validate, clean, engineer, load_offline, materialize) run once more, each in a process
of its own given the previous one's return value, as the DAG's tasks do: the peak RSS a
task process needs for one day, which the backfill's single process (all days, one
heap) does not tell.

A stage that fails (a process killed for memory, say) ends that profile's size and the
run goes on; the summary names the largest size each profile finished.

Profile ``spark``: the production profile's servers with ``compute: spark`` (Feast's Spark
offline store and engine, ``local[2]``); each stage also reports the peak RSS of its
Spark JVM and of the JVM's Python workers, which are not in the stage process's own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from _common import print_stage, run_json

FIRST = date(2026, 1, 1)
POSTGRES_URL = os.environ.get(
    "CLOSEDLOOP_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432"
)
REDIS_URL = os.environ.get("CLOSEDLOOP_TEST_REDIS_URL", "redis://127.0.0.1:6379")
CLAIM_KEY = "closedloop:bench-claim"


def _hwm_mib(status: Path = Path("/proc/self/status")) -> int:
    """Peak RSS (``VmHWM``) of a process in MiB."""
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return -1


def _spark_hwm_mib() -> dict[str, int] | None:
    """Peak RSS of this process's Spark JVM (pyspark's driver, with local executors in
    it) and of its Python workers (``pyspark.daemon`` and its forks), or None without
    Spark. Read before the stage ends: the JVM exits with its Python process."""
    import psutil

    jvm = None
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "org.apache.spark.deploy.SparkSubmit" in child.cmdline():
                jvm = child
    if jvm is None:
        return None
    workers = 0
    with contextlib.suppress(psutil.Error):
        for p in jvm.children(recursive=True):
            with contextlib.suppress(OSError):
                workers += _hwm_mib(Path(f"/proc/{p.pid}/status"))
    return {"jvm": _hwm_mib(Path(f"/proc/{jvm.pid}/status")), "python_workers": workers}


def _du_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


# -- stages, each run in a child process ------------------------------------------------
class _Steps:
    """Wraps module functions so each call's wall time and the peak RSS after it are
    recorded, without changing what the pipeline calls or in which order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, list[float]] = {}
        #: (step, peak RSS so far) in the order the steps ended
        self.peaks: list[tuple[str, int]] = []

    def peak_set_by(self) -> str:
        """The first step after which the peak RSS had its final value."""
        final = max((hwm for _, hwm in self.peaks), default=0)
        return next((step for step, hwm in self.peaks if hwm == final), "-")

    def wrap(self, module: object, name: str, label: str | None = None) -> None:
        label = label or name
        inner = getattr(module, name)

        def timed(*args: object, **kwargs: object) -> object:
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                took = time.perf_counter() - t0
                self.seconds[label] = self.seconds.get(label, 0.0) + took
                self.calls.setdefault(label, []).append(round(took, 3))
                self.peaks.append((label, _hwm_mib()))

        setattr(module, name, timed)


def _preload() -> float:
    """Import what the stages use, before their clocks start; returns the seconds."""
    t0 = time.perf_counter()
    import feast  # noqa: F401
    import great_expectations  # noqa: F401
    import mlflow  # noqa: F401
    import sklearn.ensemble  # noqa: F401

    return time.perf_counter() - t0


def generate(args: argparse.Namespace) -> dict:
    from closedloop.core.settings import load_settings
    from closedloop.usecases.hotel.generator import write_batches

    os.environ.setdefault("CLOSEDLOOP_USECASE_NAME", "hotel_bookings")  # its generator
    settings = load_settings()
    per_day = args.size // args.days
    t0 = time.perf_counter()
    days = args.chunk_days or args.days  # with --chunk-days, the first chunk only
    write_batches(settings.landing_dir, FIRST, days, rows_per_day=per_day)
    wall = time.perf_counter() - t0
    return {"wall": wall, "per_day": per_day, "peak_mib": _hwm_mib()}


def _chunks(args: argparse.Namespace) -> list[tuple[date, int]]:
    """The (first day, days) the features stage loads at a time: all days at once, or
    ``--chunk-days`` at a time."""
    step = args.chunk_days or args.days
    return [
        (FIRST + timedelta(days=d), min(step, args.days - d)) for d in range(0, args.days, step)
    ]


def features(args: argparse.Namespace) -> dict:
    imports = _preload()
    from closedloop.core import feature_pipeline, feature_store
    from closedloop.core.settings import load_settings
    from closedloop.usecases.hotel.generator import write_batches

    os.environ.setdefault("CLOSEDLOOP_USECASE_NAME", "hotel_bookings")  # its generator
    settings = load_settings()
    steps = _Steps()
    for name in ("extract", "validate", "clean", "engineer", "load_offline"):
        steps.wrap(feature_pipeline, name)
    steps.wrap(feature_store, "apply_definitions", "feast_apply")
    steps.wrap(feature_store, "materialize_interval", "materialize")
    before = _hwm_mib()
    rows, generating = 0, 0.0
    t0 = time.perf_counter()
    chunks = _chunks(args)
    for i, (first, days) in enumerate(chunks):
        if i:  # the first chunk was generated by the generate stage
            g0 = time.perf_counter()
            write_batches(settings.landing_dir, first, days, rows_per_day=args.size // args.days)
            generating += time.perf_counter() - g0
        rows += feature_pipeline.backfill(settings, first, days)["rows"]
        if i < len(chunks) - 1:  # loaded: off the disk (the last day's stay for --day-tasks)
            for path in settings.landing_dir.glob("*.csv"):
                path.unlink()
    wall = time.perf_counter() - t0 - generating
    online = settings.feast_dir / "online.db"
    return {
        "wall": wall,
        "chunks": len(chunks),
        "generating": generating,
        "imports": imports,
        "rss_after_imports_mib": before,
        "peak_mib": _hwm_mib(),
        "rows": rows,
        "steps": steps.seconds,
        "peak_set_by": steps.peak_set_by(),
        "peaks": steps.peaks,
        "engineer_calls": steps.calls.get("engineer", []),
        "offline_mib": _du_mib(settings.offline_dir),
        "spark_peak_mib": _spark_hwm_mib(),
        "sqlite_online_mib": online.stat().st_size / 2**20 if online.exists() else None,
    }


def training(args: argparse.Namespace) -> dict:
    imports = _preload()
    from closedloop.core import feature_store, training_pipeline
    from closedloop.core.settings import load_settings

    os.environ.setdefault("CLOSEDLOOP_USECASE_NAME", "hotel_bookings")  # its generator
    settings = load_settings()
    steps = _Steps()
    # build_training_set = reading the labelled rows + Feast's join (timed on its own)
    steps.wrap(feature_store, "historical_features", "feast_join")
    for name in ("build_training_set", "validate_training", "train", "register", "gate"):
        steps.wrap(training_pipeline, name)
    end = datetime.combine(FIRST + timedelta(days=args.days), datetime.min.time(), UTC)
    start, end = training_pipeline.training_window(settings, end)
    overrides = {"trials": args.trials} if args.trials else {}
    for cap in ("search_rows", "refit_rows"):  # training at scale: seeded samples
        if getattr(args, cap):
            overrides[cap] = getattr(args, cap)
    # A new MLflow store creates its schema on first use (~5-20 s for SQLite): once per
    # deployment, not per run, so it is paid here, outside the clock.
    t0 = time.perf_counter()
    from closedloop.core.registry import client_for

    client_for(settings).search_experiments()
    warm_up = time.perf_counter() - t0
    before = _hwm_mib()
    t0 = time.perf_counter()
    out = training_pipeline.run_in_process(
        settings, start, end, "scale/1", reason="scale benchmark", dag_id="scale", **overrides
    )
    wall = time.perf_counter() - t0
    return {
        "wall": wall,
        "imports": imports,
        "rss_after_imports_mib": before,
        "peak_mib": _hwm_mib(),
        "mlflow_warm_up": warm_up,
        "training_rows": out["built"].rows,
        "family": out["trained"].family,
        "action": out["action"],
        "roc_auc": out["trained"].metrics.get("roc_auc"),
        "steps": steps.seconds,
        "peak_set_by": steps.peak_set_by(),
        "peaks": steps.peaks,
        # what a training run leaves: the MLflow artifacts (model, trials, dataset
        # metadata; on the server's store in production) and closedloop's snapshot of
        # the training set
        "artifacts_mib": _du_mib(Path(settings.mlflow_artifacts_destination)),
        "snapshot_mib": _du_mib(settings.training_dir),
        "spark_peak_mib": _spark_hwm_mib(),
    }


#: the feature DAG's tasks of one day, in its order (feast_apply left out: it reads no rows)
DAY_TASKS = ("extract", "validate", "clean", "engineer", "load_offline", "materialize")


def day_task(args: argparse.Namespace) -> dict:
    """One task of the feature DAG for the last day, in a process of its own as Airflow
    runs a task: the call its operator makes (a rerun: the backfill loaded the day, and
    every step is idempotent), given the previous task's XCom (``BENCH_TASK_INPUT``)."""
    imports = _preload()
    from closedloop.core import feature_pipeline, feature_store
    from closedloop.core.settings import load_settings

    os.environ.setdefault("CLOSEDLOOP_USECASE_NAME", "hotel_bookings")  # its generator
    settings = load_settings()
    last = FIRST + timedelta(days=args.days - 1)
    start, end = settings.usecase.intervals(last, last)[0]
    given = json.loads(os.environ.get("BENCH_TASK_INPUT", "null"))
    before = _hwm_mib()
    t0 = time.perf_counter()
    if args.task == "extract":
        out: object = feature_pipeline.extract(settings, start, end)
    elif args.task == "validate":
        out = feature_pipeline.validate(settings, start, end, run_name="scale-day")
    elif args.task == "clean":
        out = feature_pipeline.clean(settings, start)
    elif args.task == "engineer":
        out = feature_pipeline.engineer(settings, start, end, given)
    elif args.task == "load_offline":
        out = feature_pipeline.load_offline(settings, start, given)
    else:
        store = feature_store.open_store(settings)
        out = feature_store.materialize_interval(store, start, end)
    return {
        "task": args.task,
        "wall": time.perf_counter() - t0,
        "imports": imports,
        "rss_after_imports_mib": before,
        "peak_mib": _hwm_mib(),
        "spark_peak_mib": _spark_hwm_mib(),
        "output": out,
    }


STAGES = {
    "generate": generate,
    "features": features,
    "training": training,
    "day_task": day_task,
}


def _child(
    stage: str,
    env: dict[str, str],
    args: argparse.Namespace,
    size: int,
    task: str | None = None,
    given: object = None,
) -> dict:
    argv = [sys.executable, __file__, "--stage", stage, "--size", str(size)]
    argv += ["--days", str(args.days), "--trials", str(args.trials or 0)]
    argv += ["--search-rows", str(args.search_rows), "--refit-rows", str(args.refit_rows)]
    argv += ["--chunk-days", str(args.chunk_days)]
    if task is not None:
        argv += ["--task", task]
        env = {**env, "BENCH_TASK_INPUT": json.dumps(given)}
    profile = "spark" if env.get("CLOSEDLOOP_COMPUTE") == "spark" else env["CLOSEDLOOP_PROFILE"]
    failure = f"stage {stage}{f' {task}' if task else ''} failed ({profile}, {size:,})"
    result, result["process_wall"] = run_json(argv, env, failure)
    return result


# -- the production profile's servers, per size ------------------------------------------
def _claim_redis_db() -> int:
    """An empty Redis database, marked as this run's (``SET NX`` of a marker key)."""
    import redis

    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{REDIS_URL.rstrip('/')}/{db}")
        try:
            if client.dbsize() == 0 and client.set(CLAIM_KEY, "1", nx=True, ex=6 * 3600):
                if client.dbsize() == 1:
                    return db
                client.delete(CLAIM_KEY)
        finally:
            client.close()
    raise SystemExit("no empty Redis database (1-15) to run the production profile in")


def _redis_usage(db: int) -> dict:
    """Keys and bytes of the run's Redis database: ``MEMORY USAGE`` of a sample of keys
    times the key count (``INFO memory`` is server-wide, and the server is shared)."""
    import redis

    client = redis.Redis.from_url(f"{REDIS_URL.rstrip('/')}/{db}")
    try:
        keys = client.dbsize()
        sample = [k for _, k in zip(range(2000), client.scan_iter(count=1000), strict=False)]
        used = [client.memory_usage(k, samples=0) or 0 for k in sample]
        mean = sum(used) / max(len(used), 1)
        return {"keys": keys, "mib": keys * mean / 2**20, "bytes_per_key": mean}
    finally:
        client.close()


def _release_redis_db(db: int) -> None:
    import redis

    client = redis.Redis.from_url(f"{REDIS_URL.rstrip('/')}/{db}")
    try:
        client.flushdb()
    finally:
        client.close()


def _tree_hwm_mib(pid: int) -> int:
    """Sum of the peak RSS of a process and its children (the MLflow server forks)."""
    import psutil

    total = 0
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(OSError):
                total += _hwm_mib(Path(f"/proc/{p.pid}/status"))
    return total


@contextlib.contextmanager
def _production(home: Path, env: dict[str, str]):
    """Fresh databases, a Redis database and an MLflow server; all removed afterwards.
    Yields the Redis database number and a callable giving the server's peak RSS."""
    from cryptography.fernet import Fernet

    from closedloop.core.settings import load_settings
    from closedloop.platform.local_airflow import free_port
    from closedloop.platform.stack import (
        component_command,
        drop_databases,
        ensure_databases,
        prepare,
    )

    db = _claim_redis_db()
    env.update(
        CLOSEDLOOP_PROFILE="production",
        CLOSEDLOOP_STORES__POSTGRES_URL=POSTGRES_URL,
        CLOSEDLOOP_STORES__DATABASE_PREFIX=f"clbench_{secrets.token_hex(4)}_",
        CLOSEDLOOP_STORES__REDIS_URL=f"{REDIS_URL.rstrip('/')}/{db}",
        CLOSEDLOOP_STORES__MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}",
        MLFLOW_TRACKING_USERNAME=f"bench_{secrets.token_hex(3)}",
        MLFLOW_TRACKING_PASSWORD=secrets.token_urlsafe(24),
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_urlsafe(32),
        MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY=Fernet.generate_key().decode(),
    )
    saved = dict(os.environ)
    os.environ.update(env)
    server = None
    databases: list[str] = []
    try:
        os.environ.setdefault("CLOSEDLOOP_USECASE_NAME", "hotel_bookings")  # its generator
        settings = load_settings()
        databases = list(settings.databases.values())
        ensure_databases(settings)
        server_env = prepare(settings, "mlflow", env)
        log = (home / "mlflow-server.log").open("w")
        server = subprocess.Popen(
            component_command(settings, "mlflow"),
            env=server_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{settings.mlflow_tracking_uri}/health", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        "the MLflow server did not start:\n"
                        + (home / "mlflow-server.log").read_text()[-3000:]
                    ) from None
                time.sleep(1)
        yield db, lambda: _tree_hwm_mib(server.pid)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if server is not None:
            os.killpg(server.pid, 15)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, 9)
                server.wait()
        if databases:
            drop_databases(databases)
        _release_redis_db(db)


# -- the parent --------------------------------------------------------------------------
def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def run_one(profile: str, size: int, args: argparse.Namespace) -> dict:
    home = Path(tempfile.mkdtemp(prefix=f"closedloop-bench-scale-{profile}-"))
    env = {
        **os.environ,
        "CLOSEDLOOP_HOME": str(home),
        "CLOSEDLOOP_PROFILE": "embedded",
        "PYTHONWARNINGS": "ignore",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
    }
    result: dict = {"profile": profile, "size": size, "load_before": _load()}
    try:
        with contextlib.ExitStack() as stack:
            server_peak = None
            if profile in ("production", "spark"):
                db, server_peak = stack.enter_context(_production(home, env))
            if profile == "spark":
                env["CLOSEDLOOP_COMPUTE"] = "spark"
            result["generate"] = _child("generate", env, args, size)
            result["features"] = _child("features", env, args, size)
            if profile in ("production", "spark"):
                result["features"]["redis"] = _redis_usage(db)
            if args.day_tasks:
                result["day_tasks"] = _day_tasks(env, args, size)
            if not args.skip_training:
                result["training"] = _child("training", env, args, size)
            if server_peak is not None:
                result["mlflow_server_peak_mib"] = server_peak()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    result["load_after"] = _load()
    return result


def _day_tasks(env: dict[str, str], args: argparse.Namespace, size: int) -> list[dict]:
    """The last day's feature tasks again, each in a process of its own, each given what
    the one before returned (clean's file to engineer, engineer's tables to the load)."""
    done: list[dict] = []
    given: object = None
    for task in DAY_TASKS:
        done.append(_child("day_task", env, args, size, task=task, given=given))
        given = done[-1]["output"]
    return done


def _print_day_tasks(r: dict) -> None:
    tasks = r.get("day_tasks")
    if not tasks:
        return
    rows = tasks[0]["output"]["rows"]
    parts = []
    for t in tasks:
        spark = f" + Spark {_jvm(t)}" if t.get("spark_peak_mib") else ""
        parts.append(
            f"{t['task']} {t['wall']:.1f} s {t['peak_mib']:,} MiB "
            f"(+{t['peak_mib'] - t['rss_after_imports_mib']:,}){spark}"
        )
    print(f"    the last day's tasks ({rows:,} rows), each its own process: " + "; ".join(parts))


def _jvm(stage: dict) -> str:
    spark = stage.get("spark_peak_mib")
    return f"{spark['jvm']:,}+{spark['python_workers']:,}" if spark else "-"


def _print_row(r: dict) -> None:
    if "failed" in r:
        print(f"{r['profile']:<10} {r['size']:>9,} | did not finish: {r['failed']}", flush=True)
        return
    f, t = r["features"], r.get("training")
    trained = (
        f"{t['training_rows']:>8,} {t['wall']:>8.1f} {t['peak_mib']:>7,} {_jvm(t):>11}"
        if t
        else f"{'(not run)':>38}"
    )
    print(
        f"{r['profile']:<10} {f['rows']:>9,} | {f['wall']:>8.1f} {f['peak_mib']:>7,} "
        f"{_jvm(f):>11} | {trained} | {r['load_before']:>15} {r['load_after']:>15}",
        flush=True,
    )


def _print_steps(r: dict) -> None:
    f, t = r["features"], r.get("training")
    fs = ", ".join(f"{k} {v:.1f}" for k, v in sorted(f["steps"].items(), key=lambda kv: -kv[1]))
    calls = f["engineer_calls"]
    print(f"  {r['profile']} {f['rows']:,} bookings")
    print(f"    features s: {fs}")
    print(
        f"      peak set by {f['peak_set_by']}; engineer first/last day "
        f"{calls[0]:.2f}/{calls[-1]:.2f} s"
    )
    store = (
        f"Redis {f['redis']['keys']:,} keys ~{f['redis']['mib']:.0f} MiB "
        f"({f['redis']['bytes_per_key']:.0f} B/key)"
        if "redis" in f
        else f"SQLite online store {f['sqlite_online_mib']:.0f} MiB"
    )
    print(f"      offline Parquet {f['offline_mib']:.0f} MiB; {store}")
    if f.get("chunks", 1) > 1:
        print(
            f"      loaded in {f['chunks']} chunks of days; generating the later ones took "
            f"{f['generating']:.1f} s (not counted)"
        )
    if t:
        ts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(t["steps"].items(), key=lambda kv: -kv[1]))
        print(f"    training s (nested: feast_join inside build_training_set): {ts}")
        server = r.get("mlflow_server_peak_mib")
        print(
            f"      peak set by {t['peak_set_by']}; chose {t['family']} (holdout ROC AUC "
            f"{t['roc_auc']:.3f}, {t['action']})"
            + (f"; MLflow server peak RSS {server:,} MiB" if server else "")
        )
        print(
            f"      MLflow artifacts {t['artifacts_mib']:.1f} MiB, training-set snapshot "
            f"{t['snapshot_mib']:.1f} MiB"
        )
        print(
            f"    set-up: generate {r['generate']['wall']:.1f} s; imports per child "
            f"{f['imports']:.1f}/{t['imports']:.1f} s, RSS after imports "
            f"{f['rss_after_imports_mib']:,}/{t['rss_after_imports_mib']:,} MiB; "
            f"MLflow store's first request {t['mlflow_warm_up']:.1f} s",
            flush=True,
        )
    else:
        print(
            f"    set-up: generate {r['generate']['wall']:.1f} s; imports "
            f"{f['imports']:.1f} s, RSS after imports {f['rss_after_imports_mib']:,} MiB",
            flush=True,
        )


HEADER = (
    f"{'profile':<10} {'bookings':>9} | {'feat. s':>8} {'MiB':>7} {'Spark MiB':>11} | "
    f"{'train rows':>8} {'train s':>8} {'MiB':>7} {'Spark MiB':>11} | "
    f"{'load before':>15} {'load after':>15}"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--profiles", default="embedded,production")
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--trials", type=int, default=0, help="0: the use case's own")
    parser.add_argument(
        "--search-rows", type=int, default=0, help="cap the model search's rows (0: all)"
    )
    parser.add_argument("--refit-rows", type=int, default=0, help="cap the refit's rows (0: all)")
    parser.add_argument(
        "--day-tasks",
        action="store_true",
        help="after the features, run the last day's feature tasks again, each in a "
        "process of its own as Airflow runs them, with each one's peak RSS",
    )
    parser.add_argument("--skip-training", action="store_true", help="the feature pipeline only")
    parser.add_argument(
        "--chunk-days",
        type=int,
        default=0,
        help="generate and load this many days at a time (a materialization each), "
        "removing each loaded chunk's CSV; 0: all at once",
    )
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--task", choices=DAY_TASKS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.stage:
        print_stage(STAGES, args)
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    profiles = args.profiles.split(",")
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    print(
        f"{os.cpu_count()} CPUs, {memory:.0f} GiB; {args.days} days; "
        f"load average (1/5/15 min) at start {_load()}; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        flush=True,
    )
    results = []
    print(HEADER, flush=True)
    for size in sizes:
        for profile in profiles:
            try:
                results.append(run_one(profile, size, args))
            except SystemExit as failed:  # a stage that fails (e.g. out of memory) ends its size
                results.append({"profile": profile, "size": size, "failed": str(failed)})
            _print_row(results[-1])
            if "failed" not in results[-1]:
                _print_steps(results[-1])
                _print_day_tasks(results[-1])
            if args.json:
                args.json.write_text(json.dumps(results, indent=1, default=str))
    print()
    print("feature pipeline = backfill (validate, clean, engineer, offline, apply, materialize);")
    print("training = run_in_process (Feast join, GX, model search, MLflow, register, gate);")
    print("seconds after imports; MiB = peak RSS (VmHWM) of the stage's process;")
    print("Spark MiB = peak RSS of its Spark JVM + its Python workers (compute: spark)")
    print(HEADER)
    for r in results:
        _print_row(r)
    for profile in profiles:
        done = [r["size"] for r in results if r["profile"] == profile and "failed" not in r]
        print(f"{profile}: largest size finished {max(done):,}" if done else f"{profile}: none")


if __name__ == "__main__":
    main()
