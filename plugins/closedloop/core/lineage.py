"""Lineage: which code, data and orchestration produced a model (the paper's P4 and P7).

Every training run records these as MLflow tags, so a registered version leads back to
the git commit, the DAG run, the Feast feature service and the exact data it saw.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from closedloop.core import tags as tag
from closedloop.core.settings import PROJECT_ROOT

if TYPE_CHECKING:
    from collections.abc import Mapping

    import pandas as pd


def git_commit() -> str:
    """The checkout's commit; with uncommitted changes to tracked files, ``-dirty-`` and a
    digest of the diff, so the same edits give the same version and other edits another.

    ``CLOSEDLOOP_GIT_COMMIT`` wins (an image built from a commit has no ``.git``).
    """
    if os.environ.get("CLOSEDLOOP_GIT_COMMIT"):
        return os.environ["CLOSEDLOOP_GIT_COMMIT"]
    git = ["git", "-C", str(PROJECT_ROOT)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        diff = subprocess.run(
            [*git, "diff", "HEAD"], capture_output=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty-{hashlib.sha256(diff).hexdigest()[:12]}" if diff else head


def frame_digest(df: pd.DataFrame) -> str:
    """A content digest of a frame: column names, dtypes and every value, in order."""
    digest = FrameDigest(df.dtypes)
    digest.update(df)
    return digest.hexdigest()


class FrameDigest:
    """:func:`frame_digest` of a frame given chunk by chunk, in order, for a frame too
    large to hold: the same value as the whole frame's. A row's hash depends on its row
    only, but on the column's dtype too, so every chunk must have the whole frame's
    dtypes (``dtypes``; a chunk of an int column holding none of its nulls must still be
    float64): :meth:`update` raises ``ValueError`` for a chunk that has others."""

    def __init__(self, dtypes: Mapping[str, Any]) -> None:
        self._dtypes = [(c, str(t)) for c, t in dtypes.items()]
        self._hash = hashlib.sha256(repr(self._dtypes).encode())

    def update(self, chunk: pd.DataFrame) -> None:
        import pandas as pd

        dtypes = [(c, str(t)) for c, t in chunk.dtypes.items()]
        if dtypes != self._dtypes:
            differ = sorted(set(dtypes) ^ set(self._dtypes)) or "their order"
            raise ValueError(f"a chunk's columns or dtypes are not the frame's: {differ}")
        self._hash.update(pd.util.hash_pandas_object(chunk, index=False).to_numpy().tobytes())

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


@dataclass(frozen=True)
class RunLineage:
    """Where a training run came from; recorded as ``closedloop.*`` tags."""

    dag_id: str
    dag_run_id: str
    trigger_reason: str
    git_commit: str
    feast_project: str
    feature_service: str
    feature_views: str  # comma-separated
    window_start: str
    window_end: str
    data_digest: str
    training_set_uri: str
    gx_verdict: str

    def tags(self) -> dict[str, str]:
        tags = {f"{tag.PREFIX}{k}": str(v) for k, v in asdict(self).items()}
        tags["mlflow.source.git.commit"] = self.git_commit
        return tags
