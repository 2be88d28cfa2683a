"""Feast on Spark against Feast on Ray for closedloop's data path (issue 19): the
point-in-time join of a training set and the materialization into the online store, on
the same offline tables, with Spark as the baseline (what ``compute: spark`` runs).

For each size: ``--days`` landed batches of the hotel generator (``size / days``
bookings a day, the last one dated the day before the run: Feast's Ray engine drops the
rows older than its views' TTLs when it materializes), the feature pipeline's steps
(``feature_pipeline.backfill`` with ``compute: local``, its materialization left out)
writing the offline Parquet tables once; then four children, each in a process of its
own, a Feast registry and a fresh SQLite online store of its own over those tables:

* **retrieve**: closedloop's ``feature_store.historical_features`` for the training
  window's labelled events (``training_pipeline.labelled_entities``, read before the
  clock) and the feature service's refs: Feast's ``get_historical_features`` view by
  view, through Feast's Spark offline store (``SparkSource``, ``local[2]``) or Feast's
  Ray offline store (``FileSource`` of the same Parquet folders: the only kind it reads
  from files);
* **materialize**: ``feature_store.materialize_interval`` over every day, view by view,
  through Feast's Spark compute engine (``spark.engine``) or its Ray compute engine
  (``ray.engine``, reading through the Ray offline store).

The Spark side's ``RepoConfig`` is closedloop's (``feature_store.repo_config`` with
``CLOSEDLOOP_COMPUTE=spark``); the Ray side's is built here the same way with the Ray
store and engine: local Ray on 2 CPUs, no dashboard, no usage stats, its temporary
folder in the run's, its workers at niceness 0 (Ray's default is 15, which on a shared
machine leaves them a fraction of a core against Spark's). Each child imports the
libraries and reads its input (the labelled events) first, then starts its clock: the
start of its engine (the JVM and Spark session, or the local Ray cluster: a task pays
it too), Feast's apply (reported apart), then the operation, each view's seconds noted
as it ends. Memory: the child's own peak RSS (``VmHWM``), the summed ``VmHWM`` of its
live descendants at the end (Spark's JVM and Python workers; Ray's GCS, raylet, agents
and workers: shared pages are counted in each), and the peak of the summed PSS of the
child and its descendants sampled every half second (shared pages split: the footprint
of the side as a whole). Afterwards the parent compares the two sides' answers: the
joined frames cell by cell, the online stores row by row.

Ray is not in ``make env`` (nor in requirements.lock); install it into the venv first
(the ``ray`` extra of pyproject.toml pins the same):

    .venv/bin/pip install "ray[data]==2.60.0"
    .venv/bin/python benchmarks/spark_vs_ray.py                     # 1M bookings
    .venv/bin/python benchmarks/spark_vs_ray.py --sizes 100000,1000000 --json out.json

A child that fails (an error in Feast's Ray path, a process killed for memory) or runs
longer than ``--timeout`` seconds (its whole process tree is then killed) is reported
with its error and the views it finished, and the run goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _common import print_stage, print_table

if TYPE_CHECKING:
    from closedloop.core.settings import Settings

#: the shortest TTL of the hotel views (hotel_aggregates: its 30-day window and a day).
#: Feast 0.67's Ray engine drops, when it materializes, every row older than the wall
#: clock less its view's TTL (the Spark and local engines keep the range's rows), so the
#: batches are dated back from the run and ``--days`` must stay below this.
SHORTEST_TTL_DAYS = 31
ENGINES = ("spark", "ray")
OPERATIONS = ("retrieve", "materialize")
#: the local Ray cluster: the machine's two cores, as Spark's local[2]
RAY_CPUS = 2


def _hwm_mib(status: Path = Path("/proc/self/status")) -> int:
    """Peak RSS (``VmHWM``) of a process in MiB."""
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return -1


def _children_hwm_mib() -> tuple[int, int]:
    """Summed peak RSS of this process's live descendants, and how many there are."""
    import psutil

    total, count = 0, 0
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error, OSError):
            total += _hwm_mib(Path(f"/proc/{child.pid}/status"))
            count += 1
    return total, count


class _TreePeak:
    """The peak of the summed PSS of this process and its descendants, sampled in a
    thread every ``every`` seconds while the block runs (a process that lives less than
    that may be missed)."""

    def __init__(self, every: float = 0.5) -> None:
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _TreePeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error, OSError):
                total += proc.memory_full_info().pss
        self.peak = max(self.peak, total)

    @property
    def peak_mib(self) -> int:
        return self.peak // 2**20


def _du_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def first_day(days: int, today: date | None = None) -> date:
    """The first landed day: ``days`` days ending the day before ``today`` (the run's
    date), so that every row is younger than the views' TTLs when materialized."""
    if days + 1 >= SHORTEST_TTL_DAYS:
        raise SystemExit(
            f"--days {days}: at most {SHORTEST_TTL_DAYS - 2} (Ray's engine would drop the"
            f" rows older than the {SHORTEST_TTL_DAYS}-day TTL of hotel_aggregates)"
        )
    return (today or datetime.now(UTC).date()) - timedelta(days=days + 1)


def _interval(settings: Settings, first: date, days: int) -> tuple[datetime, datetime]:
    """From the first day's start to the last day's end."""
    intervals = settings.usecase.intervals(first, first + timedelta(days=days - 1))
    return intervals[0][0], intervals[-1][1]


def _window(settings: Settings, first: date, days: int) -> tuple[datetime, datetime]:
    """The training window of a model trained at the end of the last day."""
    from closedloop.core.training_pipeline import training_window

    end = datetime.combine(first + timedelta(days=days), datetime.min.time(), UTC)
    return training_window(settings, end)


# -- stages, each run in a child process ------------------------------------------------
def generate(args: argparse.Namespace) -> dict:
    from closedloop.core.settings import load_settings
    from closedloop.usecases.hotel.generator import write_batches

    settings = load_settings()
    per_day = args.size // args.days
    t0 = time.perf_counter()
    write_batches(settings.landing_dir, args.first, args.days, rows_per_day=per_day)
    return {"wall": time.perf_counter() - t0, "per_day": per_day}


def offline(args: argparse.Namespace) -> dict:
    """The offline tables: ``backfill``'s steps and Feast apply, without materializing."""
    from closedloop.core import feature_pipeline, feature_store
    from closedloop.core.settings import load_settings

    settings = load_settings()
    feature_store.materialize_interval = lambda store, start, end: []
    t0 = time.perf_counter()
    out = feature_pipeline.backfill(settings, args.first, args.days)
    wall = time.perf_counter() - t0
    tables = {p.name: len(list(p.glob("*.parquet"))) for p in settings.offline_dir.iterdir()}
    return {
        "wall": wall,
        "rows": out["rows"],
        "partitions": tables,
        "offline_mib": _du_mib(settings.offline_dir),
    }


#: what each side imports before its clock starts
MODULES = {
    "spark": [
        "pyspark.sql",
        "feast.infra.offline_stores.contrib.spark_offline_store.spark",
        "feast.infra.compute_engines.spark.compute",
    ],
    "ray": [
        "ray.data",
        "feast.infra.offline_stores.contrib.ray_offline_store.ray",
        "feast.infra.compute_engines.ray.compute",
    ],
}


def _preload(engine: str) -> float:
    """Import what the side uses, before its clock starts; returns the seconds."""
    import importlib

    t0 = time.perf_counter()
    for name in ["feast", *MODULES[engine]]:
        importlib.import_module(name)
    return time.perf_counter() - t0


def _ray_repo_config(settings: Settings) -> Any:
    """``feature_store.repo_config`` of ``compute: local`` with Feast's Ray offline store
    and Ray compute engine in place of the file store and the local engine."""
    from feast.repo_config import RepoConfig

    from closedloop.core.feature_store import ONLINE_WRITE_BATCH

    ray_dir = settings.home / "ray"
    ray_conf = {
        "num_cpus": RAY_CPUS,
        "include_dashboard": False,
        # beside the run's other files, removed with them (and a short socket path)
        "_temp_dir": str(ray_dir / "tmp"),
    }
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    return RepoConfig(
        project=settings.usecase.name,
        provider="local",
        registry=settings.feast_registry,
        online_store=settings.feast_online_store,
        entity_key_serialization_version=3,
        materialization_config={"online_write_batch_size": ONLINE_WRITE_BATCH},
        repo_path=settings.feature_repo,
        offline_store={
            "type": "ray",
            "storage_path": str(ray_dir / "storage"),
            "ray_conf": ray_conf,
        },
        batch_engine={"type": "ray.engine", "ray_conf": ray_conf},
    )


def _repo_config(engine: str, settings: Settings) -> Any:
    from closedloop.core import feature_store

    if engine == "spark":
        return feature_store.repo_config(settings)
    return _ray_repo_config(settings)


def _start_engine(engine: str, config: Any) -> dict[str, Any]:
    """Start the side's session as Feast does on first use: Spark's (the JVM, from the
    store's properties: ``feature_store.spark_started``) or the local Ray cluster."""
    if engine == "spark":
        from feast.infra.offline_stores.contrib.spark_offline_store.spark import (
            get_spark_session_or_start_new_with_repoconfig,
        )

        session = get_spark_session_or_start_new_with_repoconfig(config.offline_store)
        return {"arrow_pyspark": session.conf.get("spark.sql.execution.arrow.pyspark.enabled")}
    import ray
    from feast.infra.ray_initializer import ensure_ray_initialized

    ensure_ray_initialized(config)
    return {"ray_cpus": ray.cluster_resources().get("CPU")}


def _error(exc: BaseException) -> dict[str, str]:
    """What failed and where (the innermost frames), for the report."""
    traceback.print_exc()
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    where = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames]
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return {"error": text[:600], "where": " <- ".join(reversed(where))}


def _per_view(store: Any, views: list[dict[str, Any]]) -> None:
    """Make the store note each view's seconds (and the rows Feast returned for it) in
    ``views``, and print them as they end: a child stopped at ``--timeout`` still tells
    which views it finished."""
    join, materialize = store.get_historical_features, store.materialize

    def noted(view: str, t0: float, rows: int | None = None) -> None:
        views.append({"view": view, "seconds": round(time.perf_counter() - t0, 2), "rows": rows})
        print(f"{PROGRESS}{json.dumps(views[-1])}", flush=True)

    def joined(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        job = join(*args, **kwargs)
        to_df = job.to_df

        def frame(*a: Any, **k: Any) -> Any:
            out = to_df(*a, **k)
            noted(kwargs["features"][0].split(":", 1)[0], t0, len(out))
            return out

        job.to_df = frame
        return job

    def materialized(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = materialize(*args, **kwargs)
        noted(kwargs["feature_views"][0], t0)
        return out

    store.get_historical_features, store.materialize = joined, materialized


#: the start of a child's progress lines
PROGRESS = "view done: "


def _online_keys(db: Path) -> dict[str, int]:
    """Entity keys per table of a Feast SQLite online store."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {
            n: conn.execute(f'SELECT COUNT(DISTINCT entity_key) FROM "{n}"').fetchone()[0]
            for n in names
        }


def measure(args: argparse.Namespace) -> dict:
    """One operation (``args.stage``) on one side (``args.engine``)."""
    imports = _preload(args.engine)
    from feast import FeatureStore

    from closedloop.core.feature_store import (
        apply_definitions,
        feature_refs,
        historical_features,
        materialize_interval,
    )
    from closedloop.core.settings import load_settings
    from closedloop.core.training_pipeline import labelled_entities

    settings = load_settings()
    config = _repo_config(args.engine, settings)
    if args.stage == "retrieve":
        entities = labelled_entities(settings, *_window(settings, args.first, args.days))
    start, end = _interval(settings, args.first, args.days)
    views: list[dict[str, Any]] = []
    before = _hwm_mib()
    result: dict[str, Any] = {"imports": imports, "rss_before_mib": before}
    out = None
    with _TreePeak() as tree:
        t0 = time.perf_counter()
        try:
            result |= _start_engine(args.engine, config)
            result["startup"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            store = FeatureStore(config=config, repo_path=str(settings.feature_repo))
            apply_definitions(store, settings)
            result["apply"] = time.perf_counter() - t1
            _per_view(store, views)
            t2 = time.perf_counter()
            if args.stage == "retrieve":
                refs = feature_refs(store, settings.usecase.feature_service)
                out = historical_features(store, entities, refs)
            else:
                out = materialize_interval(store, start, end)
            result["wall"] = time.perf_counter() - t2
        except Exception as exc:  # a side that fails is a figure too
            result |= _error(exc)
            result["failed_after"] = time.perf_counter() - t0
        result["children_mib"], result["processes"] = _children_hwm_mib()
    result |= {"peak_mib": _hwm_mib(), "tree_pss_mib": tree.peak_mib, "views": views}
    if args.stage == "retrieve":
        result["entity_rows"] = len(entities)
        if out is not None:
            result["rows"] = len(out)
            out.to_parquet(settings.home / "retrieved.parquet", index=False)
    elif out is not None:
        keys = _online_keys(settings.feast_dir / "online.db")
        result |= {"keys": sum(keys.values()), "keys_by_table": keys}
    return result


STAGES = {"generate": generate, "offline": offline, "retrieve": measure, "materialize": measure}


# -- the parent --------------------------------------------------------------------------
def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def _kill_tree(pid: int) -> None:
    """Kill a child and everything it started (Spark's JVM, Ray's processes)."""
    import psutil

    with contextlib.suppress(psutil.Error):
        parent = psutil.Process(pid)
        for proc in [*parent.children(recursive=True), parent]:
            with contextlib.suppress(psutil.Error):
                proc.kill()
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


def _child(stage: str, env: dict[str, str], args: argparse.Namespace, size: int) -> dict:
    """Run a stage in a process of its own, stopped after ``--timeout`` seconds: its JSON
    result, or what failed (and, stopped, the views it had finished)."""
    argv = [sys.executable, __file__, "--stage", stage, "--size", str(size)]
    argv += ["--days", str(args.days), "--engine", env.get("BENCH_ENGINE", "-")]
    argv += ["--first", args.first.isoformat()]
    load = _load()
    t0 = time.perf_counter()
    # files, not pipes: a process Ray or Spark left behind cannot hold them open
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=err, text=True, start_new_session=True
        )
        try:
            code = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(proc.pid)
            proc.wait()
            code = None
        took = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        lines, errors = out.read().splitlines(), err.read()
    if code == 0:
        result = json.loads(lines[-1])
    else:
        sys.stderr.write(errors[-6000:])
        done = [json.loads(x[len(PROGRESS) :]) for x in lines if x.startswith(PROGRESS)]
        why = f"stopped after {args.timeout} s" if code is None else f"exit code {code}"
        result = {"error": f"did not finish: {why}", "where": "the child", "views": done}
    result |= {"process_wall": took, "load_before": load}
    return result


def _side_home(home: Path, data: Path, engine: str) -> Path:
    """A home of its own (registry, online store, staging) whose offline tables are the
    shared ones."""
    side = home / engine
    (side / "offline").mkdir(parents=True)
    for table in (data / "offline").iterdir():
        (side / "offline" / table.name).symlink_to(table)
    return side


def _same_frames(left: Path, right: Path) -> dict[str, Any]:
    """Cells that differ between the two joined frames (same entity rows, same order)."""
    import numpy as np
    import pandas as pd

    a, b = pd.read_parquet(left), pd.read_parquet(right)
    if len(a) != len(b) or set(a.columns) != set(b.columns):
        return {"same": False, "why": f"shapes {a.shape} / {b.shape}"}
    differ: dict[str, int] = {}
    for col in a.columns:
        x, y = a[col], b[col]
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            fx, fy = x.astype("float64").to_numpy(), y.astype("float64").to_numpy()
            equal = np.isclose(fx, fy, rtol=1e-9, atol=0, equal_nan=True)
        else:
            equal = (x.isna() & y.isna()) | (x.astype(str) == y.astype(str))
        if (~equal).sum():
            differ[col] = int((~equal).sum())
    return {"same": not differ, "differing_cells": differ}


def _same_online(left: Path, right: Path) -> dict[str, Any]:
    """Rows of the two online stores missing from the other or with another value."""
    with contextlib.closing(sqlite3.connect(left)) as conn:
        conn.execute("ATTACH DATABASE ? AS other", (str(right),))
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        differ = {}
        for n in names:
            one_way = conn.execute(
                f'SELECT COUNT(*) FROM main."{n}" a LEFT JOIN other."{n}" b '
                "USING (entity_key, feature_name) "
                "WHERE b.value IS NOT a.value OR b.event_ts IS NOT a.event_ts"
            ).fetchone()[0]
            counts = [
                conn.execute(f'SELECT COUNT(*) FROM {db}."{n}"').fetchone()[0]
                for db in ("main", "other")
            ]
            if one_way or counts[0] != counts[1]:
                differ[n] = {"differ": one_way, "rows": counts}
    return {"same": not differ, "tables": differ}


def run_one(size: int, args: argparse.Namespace) -> dict:
    home = Path(tempfile.mkdtemp(prefix="clsvr-"))  # short: Ray's socket paths live in it
    data = home / "data"
    base = {
        **os.environ,
        "CLOSEDLOOP_PROFILE": "embedded",
        "CLOSEDLOOP_USECASE_NAME": "hotel_bookings",
        "PYTHONWARNINGS": "ignore",
        "DO_NOT_TRACK": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        # Ray runs its workers at niceness 15 by default: on a machine shared with other
        # runs they then get a fraction of a core while Spark's JVM and workers, at 0, get
        # their share. Same priority for both sides.
        "RAY_worker_niceness": "0",
    }
    result: dict[str, Any] = {"size": size, "load_before": _load()}
    try:
        env = {**base, "CLOSEDLOOP_HOME": str(data), "CLOSEDLOOP_COMPUTE": "local"}
        result["generate"] = _child("generate", env, args, size)
        result["offline"] = _child("offline", env, args, size)
        if "error" in result["offline"]:
            return result
        sides = {}
        for engine in ENGINES:
            sides[engine] = {
                **base,
                "CLOSEDLOOP_HOME": str(_side_home(home, data, engine)),
                "CLOSEDLOOP_COMPUTE": "spark" if engine == "spark" else "local",
                "BENCH_ENGINE": engine,
            }
        for operation in OPERATIONS:
            for engine in ENGINES:
                got = _child(operation, sides[engine], args, size)
                result[f"{operation}/{engine}"] = got
                _print_line(operation, engine, got)
        frames = [home / e / "retrieved.parquet" for e in ENGINES]
        if all(f.exists() for f in frames):
            result["retrieve/same"] = _same_frames(*frames)
        online = [home / e / "feast" / "online.db" for e in ENGINES]
        if all("keys" in result[f"materialize/{e}"] for e in ENGINES):
            result["materialize/same"] = _same_online(*online)
    finally:
        shutil.rmtree(home, ignore_errors=True)
        result["load_after"] = _load()
    return result


def _print_line(operation: str, engine: str, r: dict) -> None:
    state = f"FAILED: {r['error']} at {r.get('where', '?')}" if "error" in r else "ok"
    print(f"  {operation:<11} {engine:<5} {state}", flush=True)
    print(f"    {json.dumps(r, default=str)}", flush=True)


def _seconds(r: dict, key: str) -> str:
    return f"{r[key]:.1f}" if key in r else "-"


def _total(r: dict) -> float | None:
    return r["startup"] + r["wall"] if "wall" in r else None


def _why(r: dict) -> str:
    return "stopped" if "stopped after" in r.get("error", "") else "failed"


def _ratio(r: dict, base: dict, value: Any) -> str:
    ours, theirs = value(r), value(base)
    return f"{ours / theirs:.2f}x" if ours and theirs else "-"


def _rows(results: list[dict]) -> list[list[str]]:
    rows = []
    for res in results:
        for operation in OPERATIONS:
            base = res.get(f"{operation}/spark", {})
            for engine in ENGINES:
                r = res.get(f"{operation}/{engine}")
                if r is None:
                    continue
                count = r.get("rows" if operation == "retrieve" else "keys")
                total = _total(r)
                rows.append(
                    [
                        f"{res['size']:,}",
                        operation,
                        engine,
                        _seconds(r, "startup"),
                        _seconds(r, "wall"),
                        f"{total:.1f}" if total is not None else _why(r),
                        f"{r.get('peak_mib', 0):,}",
                        f"{r.get('children_mib', 0):,}",
                        f"{r.get('tree_pss_mib', 0):,}",
                        f"{count:,}" if count is not None else "-",
                        _ratio(r, base, _total),
                        _ratio(r, base, lambda x: x.get("tree_pss_mib")),
                        r["load_before"],
                    ]
                )
    return rows


HEADER = [
    "bookings",
    "operation",
    "engine",
    "start s",
    "op s",
    "total s",
    "proc MiB",
    "children MiB",
    "tree PSS MiB",
    "rows/keys",
    "total vs spark",
    "PSS vs spark",
    "load before",
]


def _print_details(res: dict) -> None:
    print(f"{res['size']:,} bookings (load {res['load_before']} -> {res['load_after']})")
    if "offline" in res and "rows" in res["offline"]:
        o = res["offline"]
        print(
            f"  set-up: generate {res['generate']['wall']:.1f} s, offline tables "
            f"{o['wall']:.1f} s: {o['rows']:,} events, {o['offline_mib']:.0f} MiB of Parquet"
        )
    for operation in OPERATIONS:
        for engine in ENGINES:
            r = res.get(f"{operation}/{engine}", {})
            extra = {
                k: r[k]
                for k in (
                    "apply",
                    "entity_rows",
                    "views",
                    "keys_by_table",
                    "processes",
                    "imports",
                    "rss_before_mib",
                    "arrow_pyspark",
                    "ray_cpus",
                    "error",
                    "where",
                )
                if k in r
            }
            print(f"  {operation} {engine}: {json.dumps(extra, default=str)}")
        if f"{operation}/same" in res:
            print(f"  {operation}: same answer on both sides: {res[f'{operation}/same']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000")
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument(
        "--timeout", type=int, default=3600, help="seconds a child may take (default 3600)"
    )
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    # one date for every stage of a run, even across midnight
    parser.add_argument("--first", type=date.fromisoformat, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.first is None:
        args.first = first_day(args.days)

    if args.stage:
        print_stage(STAGES, args)
        return

    import feast
    import pyspark
    import ray

    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    print(
        f"{os.cpu_count()} CPUs, {memory:.0f} GiB; feast {feast.__version__}, pyspark "
        f"{pyspark.__version__}, ray {ray.__version__}; {args.days} days; load average "
        f"(1/5/15 min) at start {_load()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        flush=True,
    )
    results = []
    for size in [int(s) for s in args.sizes.split(",")]:
        print(f"{size:,} bookings", flush=True)
        results.append(run_one(size, args))
        if args.json:
            args.json.write_text(json.dumps(results, indent=1, default=str))
    print()
    print("start s = the engine's start (Spark session / local Ray cluster); op s = the")
    print("operation; proc MiB = the child's peak RSS; children MiB = summed peak RSS of its")
    print("live descendants (JVM and Python workers / Ray's processes); tree PSS MiB = peak of")
    print("the summed PSS of the child and its descendants; ratios against spark, this run")
    print_table(HEADER, _rows(results))
    for res in results:
        _print_details(res)
    print(f"load average at end {_load()}")


if __name__ == "__main__":
    main()
