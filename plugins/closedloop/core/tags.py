"""The keys of the MLflow tags closedloop writes and reads, one name per fact, so a
writer and its readers cannot drift apart. All start with :data:`PREFIX`; the lineage
keys are the fields of :class:`closedloop.core.lineage.RunLineage` under it.
"""

from __future__ import annotations

PREFIX = "closedloop."

# -- on a training run (the parent run of the model search) ---------------------------
DAG_RUN_ID = f"{PREFIX}dag_run_id"  # also on registered versions and monitoring runs
CONFIG = f"{PREFIX}config"  # the training configuration, JSON
CONFIG_DIGEST = f"{PREFIX}config_digest"
THRESHOLD = f"{PREFIX}threshold"  # the decision threshold scoring applies
MODEL_URI = f"{PREFIX}model_uri"
SUMMARY = f"{PREFIX}summary"  # metrics and choices of the run, JSON
FAMILY = f"{PREFIX}family"  # on a trial run: the model family it tried

# -- lineage (RunLineage's fields) ------------------------------------------------------
WINDOW_START = f"{PREFIX}window_start"
WINDOW_END = f"{PREFIX}window_end"
DATA_DIGEST = f"{PREFIX}data_digest"
GIT_COMMIT = f"{PREFIX}git_commit"

# -- on the registered model and its versions -------------------------------------------
MANAGED = f"{PREFIX}managed"
BLESSED = f"{PREFIX}blessed"  # "true" once the gate promoted the version
GATE = f"{PREFIX}gate"  # the gate's summary
REJECTION_REASON = f"{PREFIX}rejection_reason"
APPROVAL = f"{PREFIX}approval"  # pending | approved by <user> | rejected by <user> | expired
ROLLED_BACK = f"{PREFIX}rolled_back"

# -- on a monitoring run --------------------------------------------------------------
MONITORING_DAY = f"{PREFIX}monitoring_day"
CHAMPION_VERSION = f"{PREFIX}champion_version"
RETRAIN = f"{PREFIX}retrain"
REASONS = f"{PREFIX}reasons"  # also on a shadow run

# -- on a shadow run (closedloop shadow; the gate with model.gate.shadow: required) --
CANDIDATE_VERSION = f"{PREFIX}candidate_version"  # the version replayed
BASELINE_VERSION = f"{PREFIX}baseline_version"  # the version whose traffic it replays
SHADOW_PASSED = f"{PREFIX}shadow_passed"  # "true" | "false"
SHADOW = f"{PREFIX}shadow"  # on a model version: the gate's shadow verdict and run
#: on a model version: closedloop is moving an alias to it ({"alias", "at"}), set just
#: before the move; the ledger entry follows (closedloop.core.alias_watch)
ALIAS_MOVE = f"{PREFIX}alias_move"


def equals(key: str, value: str) -> str:
    """An MLflow search filter: the tag ``key`` equals ``value``."""
    return f"tags.`{key}` = '{value}'"
