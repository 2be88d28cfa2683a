"""Fault injection: named points in the pipeline's steps where a crash test can stop a
task *in the middle of writing* and kill it there (``tests/production/test_worker_faults.py``).

Off unless ``CLOSEDLOOP_FAILPOINT_DIR`` names a folder — never set it in production; then
:func:`hold` costs one environment lookup. With it set, ``hold(name)`` looks for
``<folder>/<name>.armed``: the one process that takes it (an atomic rename to
``<name>.held``) writes its pid into the file and sleeps — until it is killed, or for the
seconds the armed file names (default 300), then carries on. A point fires once per
arming, so the retry of a killed task runs through. The points:

* ``materialize.view_written`` — one feature view is in the online store, the rest are not;
* ``train.model_logged`` — the model is logged to the MLflow run, which has not ended;
* ``gate.aliases_moved`` — the aliases have moved, the promotion ledger does not know yet;
* ``batch.outputs_staged`` — both batch outputs are complete in their temporary files,
  neither has replaced its partition.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV = "CLOSEDLOOP_FAILPOINT_DIR"
POINTS = (
    "materialize.view_written",
    "train.model_logged",
    "gate.aliases_moved",
    "batch.outputs_staged",
)
DEFAULT_HOLD_SECONDS = 300.0


def hold(name: str) -> None:
    """Stop here if the point ``name`` is armed (see the module); else return at once."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    if name not in POINTS:
        raise ValueError(f"unknown failpoint {name!r}; one of {', '.join(POINTS)}")
    armed, held = Path(folder) / f"{name}.armed", Path(folder) / f"{name}.held"
    try:
        os.rename(armed, held)  # atomic: one process takes it
    except FileNotFoundError:
        return
    text = held.read_text().strip()
    seconds = float(text) if text else DEFAULT_HOLD_SECONDS
    tmp = held.with_suffix(".tmp")
    tmp.write_text(f"pid={os.getpid()}")
    os.replace(tmp, held)  # the pid appears whole
    time.sleep(seconds)


def arm(folder: Path, name: str, seconds: float = DEFAULT_HOLD_SECONDS) -> None:
    """Arm the point ``name`` in ``folder`` (for the tests)."""
    if name not in POINTS:
        raise ValueError(f"unknown failpoint {name!r}; one of {', '.join(POINTS)}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.held").unlink(missing_ok=True)
    tmp = folder / f"{name}.armed.tmp"
    tmp.write_text(str(seconds))
    os.replace(tmp, folder / f"{name}.armed")


def held_by(folder: Path, name: str) -> int | None:
    """The pid of the process stopped at ``name``, or None while none is."""
    try:
        text = (folder / f"{name}.held").read_text()
    except FileNotFoundError:
        return None
    return int(text.removeprefix("pid=")) if text.startswith("pid=") else None
