"""What several benchmarks share: the results table, a stage run in a process of its own
and a first champion trained the same way."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """``rows`` under ``header``, right-aligned columns, a blank line around."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print()
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
    print()


def run_json(argv: list[str], env: dict[str, str], failure: str) -> tuple[dict[str, Any], float]:
    """Run ``argv`` (a stage that prints its result as JSON on its last line) and return
    that result with the seconds it took; its output and ``failure`` if it fails."""
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
        raise SystemExit(failure)
    return json.loads(done.stdout.strip().splitlines()[-1]), time.perf_counter() - t0


def print_stage(stages: dict[str, Any], args: Any) -> None:
    """In a stage's own process: run ``stages[args.stage]`` and print its result as the
    JSON last line :func:`run_json` reads."""
    import warnings

    warnings.filterwarnings("ignore")
    result = stages[args.stage](args)
    sys.stdout.flush()
    print("\n" + json.dumps(result, default=str))


def first_champion(settings: Any, end: datetime) -> dict[str, Any]:
    """Train and gate a first model on the history up to ``end``, quickly (two trials)."""
    from closedloop.core import training_pipeline as tp

    return tp.run_in_process(
        settings,
        datetime(2026, 1, 1, tzinfo=UTC),
        end,
        "bench/1",
        reason="bench",
        dag_id="bench",
        trials=2,
        validation_days=3,
        holdout_days=3,
    )
