"""Lineage: which code, data and orchestration produced a model (the paper's P4 and P7).

Every training run records these as MLflow tags, so a registered version leads back to
the git commit, the DAG run, the Feast feature service and the exact data it saw.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from closedloop.core import tags as tag
from closedloop.core.settings import PROJECT_ROOT

if TYPE_CHECKING:
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
    import pandas as pd

    h = hashlib.sha256()
    h.update(repr([(c, str(t)) for c, t in df.dtypes.items()]).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()


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
