"""Online serving latency and throughput: ``closedloop serve`` against its limit and
against ``mlflow models serve``.

Three ways to answer "score this one event", each measured here in the same run:

* **in-process** — the service's own lookup + predict
  (:meth:`closedloop.serving.scorer.OnlineScorer.score`: the derived features computed
  from the request, Feast ``get_online_features`` of the entity aggregates, defaults,
  ``predict_proba``), called in a loop: the limit;
* **closedloop serve** — the same over HTTP (uvicorn subprocess on loopback), the event's
  declared request columns in, prediction logged;
* **mlflow models serve** of the same model version, given the feature values directly
  (``dataframe_split``): no lookup, no log.

Sequential one-event requests on one connection (p50/p99 latency, req/s) are measured
in ``--rounds`` interleaved rounds: each round runs the in-process loop, then each
``closedloop serve`` for ``--seconds / --rounds``, and each one's latencies are pooled
over the rounds. The machine's speed drifts by tens of percent over minutes (it shares
its host); measured one after the other, the limit and the server would be compared at
different speeds. Each server also reports how long its own lookup + predict took (the
``closedloop_predict_latency_seconds`` histogram of its ``/metrics``), which splits its
latency into the work the limit does and what HTTP adds; an **HTTP floor** (uvicorn as
the server runs it, answering a fixed body: ``_http_floor.py``) runs in the same rounds,
and the share of slow answers on the client is set against the share of slow handler
times in the server's own histogram. Then ``--connections``
concurrent keep-alive connections per server (req/s, p50/p99), ``--seconds`` each. The
load generator is a minimal asyncio HTTP/1.1 client written here, on uvloop: a general
client (httpx) spends about a millisecond of CPU per request on these two shared
cores, which would be measured as server time.

Set-up (not timed): ``--home DIR`` reuses a home with a champion; without it a temporary
home gets 20 generated days through the feature pipeline and a trained champion.

``--shadow`` also runs ``closedloop serve --shadow`` (one worker) in the same rounds and
compares its p99 with the plain one-worker server's (goal <= 1.1x, PASS or MISS); without
a ``challenger`` alias the champion's model is registered again as the challenger.

    .venv/bin/python benchmarks/serving.py [--home DIR] [--seconds 10] [--rounds 5]
        [--connections 16] [--workers 1,2] [--shadow]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
from _common import first_champion

FIRST, DAYS = date(2026, 1, 1), 20
#: the sequential tail's goals (issue 20): over the in-process p99, and absolute
TAIL_GOAL_MS, P99_GOAL_MS = 0.5, 5.0
VENV_BIN = Path(sys.executable).parent
SHADOW_GOAL = 1.1  # p99 with --shadow / without, sequential
SHADOW_NAME = "closedloop serve x1 --shadow (event in)"
FLOOR_NAME = "HTTP floor (uvicorn, fixed answer)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(settings) -> None:
    """Generated history through the feature pipeline, and a promoted champion."""
    from closedloop.core.feature_pipeline import backfill
    from closedloop.usecases.hotel.generator import write_batches

    write_batches(settings.landing_dir, FIRST, DAYS, rows_per_day=150)
    backfill(settings, FIRST, DAYS)
    end = datetime(2026, 1, DAYS - 1, tzinfo=UTC)
    first_champion(settings, end)


def ensure_challenger(settings) -> str:
    """The ``challenger`` version; the champion's model registered again if none."""
    from closedloop.core.registry import CHALLENGER, CHAMPION, alias_version, client_for

    client, name = client_for(settings), settings.model_name
    found = alias_version(client, name, CHALLENGER)
    if found is not None:
        return found
    champion = client.get_model_version(name, alias_version(client, name, CHAMPION))
    again = client.create_model_version(name, champion.source, run_id=champion.run_id)
    client.set_registered_model_alias(name, CHALLENGER, again.version)
    return str(again.version)


def events(settings, n: int = 500) -> list[dict]:
    """Requests for the newest days' events (their entities are in the online store)."""
    from closedloop.core import offline
    from closedloop.serving.schema import as_requests

    table_dir = settings.offline_table_dir("events")
    keys = offline.partition_keys(table_dir)[-4:]
    frame = offline.read_partitions(table_dir, keys=keys)
    return as_requests(frame.head(n), settings.usecase)


# -- the load generator -----------------------------------------------------------------
class _Connection:
    def __init__(self, port: int) -> None:
        self.port = port

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        # the head in one read, then the body: two awaits per answer
        head_in = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head_in.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return int(head_in.split(b" ", 2)[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def _load(port: int, path: str, bodies: list[bytes], seconds: float, connections: int):
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal errors
        conn = _Connection(port)
        await conn.open()
        i = offset
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            status, _ = await conn.post(path, bodies[i % len(bodies)])
            latencies.append(time.perf_counter() - t0)
            errors += status != 200
            i += connections
        conn.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(connections)))
    return _Run(latencies, time.perf_counter() - began, errors)


class _Run:
    """Latencies (s) of one or more measured stretches, their time, refused answers."""

    def __init__(self, latencies=None, elapsed: float = 0.0, errors: int = 0) -> None:
        self.latencies: list[float] = list(latencies or [])
        self.elapsed, self.errors = elapsed, errors

    def add(self, other: _Run) -> None:
        self.latencies += other.latencies
        self.elapsed += other.elapsed
        self.errors += other.errors

    def summary(self) -> dict:
        ms = np.asarray(self.latencies) * 1000
        return {
            "requests": len(ms),
            "errors": self.errors,
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "req_s": len(ms) / self.elapsed,
        }


async def _answer(port: int, body: bytes) -> bytes:
    """The server's answer to ``body`` (the floor answers with it)."""
    conn = _Connection(port)
    await conn.open()
    status, answer = await conn.post("/predict", body)
    conn.close()
    if status != 200:
        raise RuntimeError(f"/predict answered {status}: {answer[:200]!r}")
    return answer


def _wait(port: int, path: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"no answer on {path} in {timeout} s")


def _wait_all(port: int, workers: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Until every worker process has answered /ready (each names its pid): the kernel
    gives a new connection only to a worker that has started."""
    import http.client

    deadline, seen = time.time() + timeout, set()
    while len(seen) < workers:
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"{workers} workers not ready in {timeout} s")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)  # a new connection
        conn.request("GET", "/ready")
        answer = conn.getresponse()
        body = answer.read()
        conn.close()
        if answer.status == 200:
            seen.add(json.loads(body)["worker_pid"])
        time.sleep(0.05)


def _run(coro):
    """``asyncio.run`` on uvloop (installed with uvicorn's extras), whose loop costs the
    client less per request than asyncio's own: the client's time is in every latency
    measured here, and it shares the two cores with the server."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _scoring_time(port: int) -> tuple[float, int, dict[float, float]]:
    """The server's own figures so far (all workers' under ``--workers``): sum (s) and
    count of its lookup + predict (``closedloop_predict_latency_seconds``), and the
    cumulative buckets of its ``/predict`` handler's time
    (``closedloop_request_latency_seconds``: validation, batcher, scoring, log record)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    total, count, buckets = 0.0, 0, {}
    for family in text_string_to_metric_families(text):
        if family.name == "closedloop_predict_latency_seconds":
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    total += sample.value
                elif sample.name.endswith("_count"):
                    count += int(sample.value)
        elif family.name == "closedloop_request_latency_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket") and sample.labels["endpoint"] == "/predict":
                    le = float(sample.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + sample.value
    return total, count, buckets


def _tail_inside(latencies: list[float], handler: dict[float, float]) -> str:
    """Where the slow answers are: the share of the client's latencies over each bucket
    bound against the share of the server's handler times over it (same requests)."""
    total = handler.get(float("inf"), 0.0)
    shares = []
    for le in (0.0015, 0.002, 0.003, 0.005):
        client = float(np.mean(np.asarray(latencies) > le)) if latencies else 0.0
        inside = 1 - handler.get(le, total) / total if total else 0.0
        shares.append(f"> {le * 1000:g} ms: {100 * client:.2f} % / {100 * inside:.2f} %")
    return "share of answers (client / the server's handler): " + "; ".join(shares)


def _in_process(score, keys: list[dict], seconds: float) -> _Run:
    latencies, i = [], 0
    began = time.perf_counter()
    stop = began + seconds
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        score([keys[i % len(keys)]])
        latencies.append(time.perf_counter() - t0)
        i += 1
    return _Run(latencies, time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase (default 10)")
    parser.add_argument(
        "--rounds", type=int, default=5,
        help="interleaved rounds the sequential phases are split into (default 5)",
    )  # fmt: skip
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--workers",
        type=lambda text: [int(w) for w in text.split(",")],
        default=[1, 2],
        help="closedloop serve --workers values to measure, comma-separated (default 1,2)",
    )
    parser.add_argument(
        "--shadow", action="store_true",
        help="also measure closedloop serve --shadow against the plain server (one worker)",
    )  # fmt: skip
    parser.add_argument(
        "--variant", action="append", default=[], metavar="NAME=OPTIONS",
        help="also measure `closedloop serve OPTIONS` (one worker) in the same rounds, e.g. "
        "'no flush=--log-flush-seconds 3600': where the plain server's time goes",
    )  # fmt: skip
    args = parser.parse_args()
    if args.shadow and 1 not in args.workers:
        args.workers = [1, *args.workers]
    warnings.filterwarnings("ignore")
    tmp = None
    if args.home is None:
        tmp = Path(tempfile.mkdtemp(prefix="closedloop-bench-serving-"))
        args.home = tmp / "home"
    os.environ["CLOSEDLOOP_HOME"] = str(args.home.resolve())
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"
    import prometheus_client  # noqa: F401  (before Feast, as the server does)

    from closedloop.core.feature_store import open_store
    from closedloop.core.registry import load_model
    from closedloop.core.settings import load_settings
    from closedloop.platform.runtime import stop_process
    from closedloop.serving.scorer import Deployment, OnlineScorer

    os.environ.setdefault("CLOSEDLOOP_USECASE_NAME", "hotel_bookings")  # its generator
    settings = load_settings()
    procs: list[subprocess.Popen] = []
    load_before = os.getloadavg()[0]
    limit_name = "in-process lookup+predict"
    try:
        if tmp is not None:
            print("preparing a home with a champion ...", flush=True)
            prepare(settings)
        keys = events(settings)
        model = load_model(settings)
        if args.shadow:
            print(f"challenger for --shadow: v{ensure_challenger(settings)}", flush=True)
        results: dict[str, dict] = {}

        # (a) in-process: the limit
        scorer = OnlineScorer(settings, open_store(settings))
        deployment = Deployment(model)
        # the events as the server scores them: validated by its request model (dates
        # and times as datetime objects), not the JSON text's strings
        from pydantic import TypeAdapter

        from closedloop.serving.schema import event_model

        validated = TypeAdapter(list[event_model(settings.usecase)]).validate_python(keys)
        requests = keys
        keys = [event.model_dump() for event in validated]
        for k in keys:  # warm, as the server's warm-up phase warms it
            scorer.score(deployment, [k])
        # the features each event has, for the server that is given them
        features = [scorer.score(deployment, [k])[0]["_record"] for k in keys]
        # the process tuning the server applies after start-up (closedloop.serving.app)
        gc.collect()
        gc.freeze()

        # (b) closedloop serve, with each number of worker processes asked for: all
        # started and warmed first, then measured in interleaved rounds with the limit
        bodies = [json.dumps(k).encode() for k in requests]
        servers: dict[str, int] = {}
        for workers in args.workers:
            port = _free_port()
            proc = subprocess.Popen(
                [
                    str(VENV_BIN / "closedloop"), "serve", "--port", str(port),
                    "--workers", str(workers),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            procs.append(proc)
            _wait(port, "/ready", proc)
            if workers > 1:  # every worker loaded, not just the first to answer
                _wait_all(port, workers, proc)
            servers[f"closedloop serve x{workers} (event in)"] = port
        if args.shadow:  # measured in the same rounds as the others
            port = _free_port()
            proc = subprocess.Popen(
                [str(VENV_BIN / "closedloop"), "serve", "--port", str(port), "--shadow"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(proc)
            _wait(port, "/ready", proc)
            servers[SHADOW_NAME] = port
        for variant in args.variant:
            name, _, options = variant.partition("=")
            port = _free_port()
            proc = subprocess.Popen(
                [str(VENV_BIN / "closedloop"), "serve", "--port", str(port), *options.split()],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(proc)
            _wait(port, "/ready", proc)
            servers[f"closedloop serve x1 ({name})"] = port
        # HTTP's floor, in the same rounds: uvicorn answering with one of the server's
        # own answers, doing nothing else (benchmarks/_http_floor.py)
        answer = _run(_answer(next(iter(servers.values())), bodies[0]))
        floor_port = _free_port()
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("_http_floor.py")), str(floor_port),
             answer.decode()],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(proc)
        _wait(floor_port, "/", proc)
        for port in [*servers.values(), floor_port]:
            _run(_load(port, "/predict", bodies, min(3.0, args.seconds), args.connections))

        sequential = {name: _Run() for name in [limit_name, FLOOR_NAME, *servers]}
        scoring = {name: [0.0, 0] for name in servers}  # the servers' own lookup + predict
        handler: dict[str, dict[float, float]] = {name: {} for name in servers}
        piece = args.seconds / args.rounds
        for _ in range(args.rounds):
            sequential[limit_name].add(
                _in_process(lambda b: scorer.score(deployment, b), keys, piece)
            )
            sequential[FLOOR_NAME].add(_run(_load(floor_port, "/predict", bodies, piece, 1)))
            for name, port in servers.items():
                before = _scoring_time(port)
                sequential[name].add(_run(_load(port, "/predict", bodies, piece, 1)))
                after = _scoring_time(port)
                scoring[name][0] += after[0] - before[0]
                scoring[name][1] += after[1] - before[1]
                for le, n in after[2].items():
                    handler[name][le] = handler[name].get(le, 0.0) + n - before[2].get(le, 0.0)
        results[limit_name] = {"sequential": sequential[limit_name].summary()}
        results[FLOOR_NAME] = {"sequential": sequential[FLOOR_NAME].summary()}
        for name, port in servers.items():
            results[name] = {
                "sequential": sequential[name].summary(),
                "concurrent": _run(
                    _load(port, "/predict", bodies, args.seconds, args.connections)
                ).summary(),
            }
        for proc in procs:
            stop_process(proc)

        # (c) mlflow models serve, features given
        port = _free_port()
        env = {**os.environ, "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri}
        proc = subprocess.Popen(
            [
                str(VENV_BIN / "mlflow"), "models", "serve", "-m",
                f"models:/{model.name}/{model.version}", "--env-manager", "local",
                "-h", "127.0.0.1", "-p", str(port),
            ],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(proc)
        _wait(port, "/ping", proc)
        bodies = [
            json.dumps(
                {
                    "dataframe_split": {
                        "columns": model.feature_names,
                        "data": [[f[c] for c in model.feature_names]],
                    }
                }
            ).encode()
            for f in features
        ]
        path = "/invocations"
        _run(_load(port, path, bodies, min(3.0, args.seconds), args.connections))  # warm-up
        results["mlflow models serve (features in)"] = {
            "sequential": _run(_load(port, path, bodies, args.seconds, 1)).summary(),
            "concurrent": _run(_load(port, path, bodies, args.seconds, args.connections)).summary(),
        }
        stop_process(proc)
    finally:
        for proc in procs:
            if proc.poll() is None:
                stop_process(proc)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"\n{model.name} v{model.version}, {type(model.model[-1]).__name__}; {args.seconds:.0f} s "
        f"per phase (sequential: {args.rounds} interleaved rounds), {args.connections} "
        f"connections when concurrent; {os.cpu_count()} CPUs, load average {load_before:.1f} "
        f"before, {os.getloadavg()[0]:.1f} after (other processes share the CPUs: compare "
        "the ratios, measured in the same run)"
    )
    print(f"{'':36} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'errors':>7}")
    for name, phases in results.items():
        for phase, r in phases.items():
            print(
                f"{name + ' ' + phase:<48.48} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
                f"{r['req_s']:8.0f} {r['errors']:7d}"
            )
    limit = results[limit_name]["sequential"]
    floor = results[FLOOR_NAME]["sequential"]
    limit_mean = 1000 * float(np.mean(sequential[limit_name].latencies))
    theirs = results["mlflow models serve (features in)"]
    for workers in args.workers:
        name = f"closedloop serve x{workers} (event in)"
        ours = results[name]
        total, count = scoring[name]
        print(f"\n{workers} worker(s): " + _tail(ours["sequential"], limit))
        print(f"{workers} worker(s): " + _floor(ours["sequential"], limit, floor))
        print(f"{workers} worker(s): " + _tail_inside(sequential[name].latencies, handler[name]))
        print(
            f"{workers} worker(s): lookup + predict, mean: {1000 * total / max(count, 1):.2f} ms "
            f"inside the server (its /metrics), {limit_mean:.2f} ms in-process; a request "
            f"over HTTP, mean: {1000 * float(np.mean(sequential[name].latencies)):.2f} ms"
        )
        print(
            f"{workers} worker(s): req/s closedloop serve / mlflow models serve (concurrent): "
            f"{ours['concurrent']['req_s'] / theirs['concurrent']['req_s']:.2f}x  (goal >= 1x; "
            f"closedloop {ours['concurrent']['req_s']:.0f} req/s, goal >= 1000)"
        )
    for variant in args.variant:
        name = variant.partition("=")[0]
        key = f"closedloop serve x1 ({name})"
        ours = results[key]
        print(f"\n{name}: " + _tail(ours["sequential"], limit))
        print(f"{name}: " + _tail_inside(sequential[key].latencies, handler[key]))
    if args.shadow:
        on, off = results[SHADOW_NAME], results["closedloop serve x1 (event in)"]
        ratio = on["sequential"]["p99_ms"] / off["sequential"]["p99_ms"]
        print(
            f"\n--shadow: p99 with / without (sequential, same rounds): {ratio:.2f}x  (goal <= "
            f"{SHADOW_GOAL:g}x: {'PASS' if ratio <= SHADOW_GOAL else 'MISS'}; p99 "
            f"{on['sequential']['p99_ms']:.2f} ms vs {off['sequential']['p99_ms']:.2f} ms); "
            f"{args.connections} connections: p99 {on['concurrent']['p99_ms']:.2f} ms vs "
            f"{off['concurrent']['p99_ms']:.2f} ms, {on['concurrent']['req_s']:.0f} vs "
            f"{off['concurrent']['req_s']:.0f} req/s"
        )


def _floor(server: dict, limit: dict, floor: dict) -> str:
    """Where the server's time over the limit goes: HTTP's floor (measured in the same
    rounds), and the rest, the server's own (validation, batcher, log, metrics, threads)."""
    over = {q: server[q] - limit[q] for q in ("p50_ms", "p99_ms")}
    return (
        f"over in-process p50/p99 +{over['p50_ms']:.2f}/+{over['p99_ms']:.2f} ms, of which "
        f"HTTP's floor (same rounds) {floor['p50_ms']:.2f}/{floor['p99_ms']:.2f} ms; the "
        f"server's own {over['p50_ms'] - floor['p50_ms']:+.2f}/"
        f"{over['p99_ms'] - floor['p99_ms']:+.2f} ms"
    )


def _tail(server: dict, limit: dict) -> str:
    """The sequential p99 against its goals: at most 0.5 ms over the in-process p99
    (what HTTP and the server's own threads add), and at most 5 ms."""
    over = server["p99_ms"] - limit["p99_ms"]
    met = over <= TAIL_GOAL_MS and server["p99_ms"] <= P99_GOAL_MS
    return (
        f"p99 closedloop serve - in-process (sequential): {over:+.2f} ms (goal <= "
        f"+{TAIL_GOAL_MS:g} ms), p99 {server['p99_ms']:.2f} ms (goal <= {P99_GOAL_MS:g} ms), "
        f"{server['p99_ms'] / limit['p99_ms']:.2f}x in-process: {'PASS' if met else 'MISS'}"
    )


if __name__ == "__main__":
    main()
