"""``closedloop demo``: generate data, run the DAGs through Airflow, show what landed.

So far the loop runs its first stage: the feature pipeline, one Airflow run per day.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

import click

from closedloop.core import offline

if TYPE_CHECKING:
    from closedloop.core.settings import Settings

DEMO_START = date(2026, 1, 1)
#: Folders the demo owns under the home folder; it never deletes anything else.
_STATE_DIRS = (
    "landing",
    "quarantine",
    "staging",
    "offline",
    "gx",
    "feast",
    "airflow",
    "mlflow",
    "training",
)
_STATE_FILES = ("closedloop.db", "demo.log")


def _say(message: str) -> None:
    click.echo(f"[{time.strftime('%H:%M:%S')}] {message}")


def _quiet_library_warnings() -> None:
    """The libraries' deprecation chatter is not the demo's business. ``import feast`` and
    ``import airflow`` both reset or capture the warning filters, so this runs after them."""
    import airflow.sdk  # noqa: F401
    import feast  # noqa: F401

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", module="starlette")


def reset_state(settings: Settings) -> None:
    for name in _STATE_DIRS:
        shutil.rmtree(settings.home / name, ignore_errors=True)
    for name in _STATE_FILES:
        (settings.home / name).unlink(missing_ok=True)


def run_demo(settings: Settings, *, days: int, rows: int, keep: bool) -> int:
    """Run the demo; returns the process exit code (non-zero if any run failed)."""
    from closedloop.runtime import apply_airflow_environ
    from closedloop.usecases.hotel.generator import write_batches

    started = time.monotonic()
    if not keep:
        _say(f"starting from a clean state in {settings.home}")
        reset_state(settings)
    _say(f"generating {days} days of bookings from {DEMO_START} (~{rows}/day)")
    write_batches(settings.landing_dir, DEMO_START, days, n_bookings=rows)

    apply_airflow_environ(settings)
    # The progress lines below are the demo's output; task logs only when something fails.
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    _say("loading Airflow (metadata DB, DAG folder) — the first run pays the imports")
    _quiet_library_warnings()
    from closedloop.airflow_runs import ensure_metadata_db, load_dag, run_dag, run_day

    log_path = settings.home / "demo.log"
    _say(f"task logs go to {log_path}")
    with open(log_path, "a") as log, redirect_stdout(log), redirect_stderr(log):
        ensure_metadata_db()
        dag = load_dag("hotel_features")
        training_dag = load_dag("hotel_training")
    failures = 0
    for i in range(days):
        day = DEMO_START + timedelta(days=i)
        t0 = time.monotonic()
        with open(log_path, "a") as log, redirect_stdout(log), redirect_stderr(log):
            outcome = run_day(dag, day)
        failures += not outcome.succeeded
        detail = "" if outcome.succeeded else f" failed: {outcome.failed_tasks()} (see the log)"
        _say(f"hotel_features {day}: {outcome.state} in {time.monotonic() - t0:.1f}s{detail}")

    print_status(settings)
    show_customer(settings)

    as_of = datetime.combine(DEMO_START + timedelta(days=days), datetime.min.time(), UTC)
    _say(
        f"hotel_training: training on the {settings.usecase.model.training_window_days} days "
        f"before {as_of:%Y-%m-%d}"
    )
    t0 = time.monotonic()
    with open(log_path, "a") as log, redirect_stdout(log), redirect_stderr(log):
        outcome = run_dag(training_dag, as_of, {"reason": "demo", "as_of": as_of.isoformat()})
    failures += not outcome.succeeded
    detail = "" if outcome.succeeded else f" failed: {outcome.failed_tasks()} (see the log)"
    _say(f"hotel_training: {outcome.state} in {time.monotonic() - t0:.1f}s{detail}")
    if outcome.succeeded:
        show_model(settings)
    _say(f"demo finished in {time.monotonic() - started:.0f}s")
    return 1 if failures else 0


def _online_hits(settings: Settings) -> dict[str, str]:
    """How many of the offline entity keys of each view the online store answers."""
    from closedloop.core.feature_store import open_store

    store = open_store(settings)
    result = {}
    for view in store.list_feature_views():
        table = {"booking_features": "bookings"}.get(view.name, view.name)
        frame = offline.read_partitions(settings.offline_table_dir(table))
        if frame is None:
            continue
        key = view.entity_columns[0].name
        keys = sorted(frame[key].unique())
        feature = view.features[0].name
        answer = store.get_online_features(
            features=[f"{view.name}:{feature}"], entity_rows=[{key: k} for k in keys]
        ).to_dict()
        hits = sum(v is not None for v in answer[feature])
        result[view.name] = f"{hits}/{len(keys)} {key}s"
    return result


def print_status(settings: Settings) -> None:
    """Print rows per store and where everything is."""
    landed = sorted(settings.landing_dir.glob("*.*")) if settings.landing_dir.exists() else []
    quarantined = (
        sorted(p.name for p in settings.quarantine_dir.iterdir())
        if settings.quarantine_dir.exists()
        else []
    )
    tables = settings.usecase.feast.tables
    counts = {t: offline.row_counts(settings.offline_table_dir(t)) for t in tables}
    keys = sorted({k for c in counts.values() for k in c})
    click.echo("")
    click.echo("Offline store (rows per daily partition)")
    click.echo("  day         " + "".join(f"{t:>18}" for t in tables))
    for key in keys:
        click.echo(f"  {key}  " + "".join(f"{counts[t].get(key, 0):>18}" for t in tables))
    click.echo("  total       " + "".join(f"{sum(counts[t].values()):>18}" for t in tables))
    if keys:
        click.echo("Online store (entity keys found / offline keys)")
        for view, hits in _online_hits(settings).items():
            click.echo(f"  {view:<20} {hits}")
    click.echo(f"Landing:     {settings.landing_dir} ({len(landed)} batches)")
    click.echo(f"Quarantine:  {settings.quarantine_dir} ({len(quarantined)} batches)")
    click.echo(f"Offline:     {settings.offline_dir}")
    click.echo(f"Data Docs:   {settings.gx_dir}")
    click.echo(f"Feast:       {settings.feast_dir} (repo {settings.feature_repo})")
    click.echo(f"Airflow:     {settings.airflow_home}")


def show_customer(settings: Settings) -> None:
    """The busiest customer's features: online (Feast) next to the latest offline row."""
    from closedloop.core.feature_store import open_store

    history = offline.read_partitions(settings.offline_table_dir("customer_history"))
    if history is None:
        return
    latest = history.sort_values("event_ts").groupby("customer_id").tail(1)
    row = latest.sort_values(["cust_bookings", "customer_id"], ascending=[False, True]).iloc[0]
    names = ["cust_bookings", "cust_known_outcomes", "cust_cancellations", "cust_cancel_rate"]
    online = (
        open_store(settings)
        .get_online_features(
            features=[f"customer_history:{n}" for n in names],
            entity_rows=[{"customer_id": row["customer_id"]}],
        )
        .to_dict()
    )
    click.echo(f"Customer {row['customer_id']} (latest offline row stamped {row['event_ts']}):")
    for name in names:
        click.echo(f"  {name:<22} online {online[name][0]!s:<22} offline {row[name]}")
    click.echo(f"  try: closedloop online-features --customer {row['customer_id']}")


def show_model(settings: Settings) -> None:
    """The registered versions, their aliases and holdout metrics, and the ledger."""
    from closedloop.core.ledger import PromotionLedger
    from closedloop.core.registry import client_for

    client = client_for(settings)
    model = client.get_registered_model(settings.model_name)
    by_version: dict[str, list[str]] = {}
    for alias, version in model.aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    click.echo(f"Model {settings.model_name} in MLflow ({settings.mlflow_tracking_uri})")
    for mv in sorted(
        client.search_model_versions(f"name = '{settings.model_name}'"),
        key=lambda v: int(v.version),
    ):
        metrics = client.get_run(mv.run_id).data.metrics
        shown = "  ".join(
            f"{k} {metrics[k]:.3f}" for k in ("roc_auc", "pr_auc", "f1", "brier") if k in metrics
        )
        aliases = ",".join(sorted(by_version.get(str(mv.version), []))) or "-"
        click.echo(f"  v{mv.version:<3} {aliases:<12} {shown}  (run {mv.run_id})")
    click.echo("Promotion ledger")
    for entry in PromotionLedger(settings.closedloop_db).history(settings.model_name):
        click.echo(f"  {entry.line()}")
    click.echo(
        f"MLflow UI:   .venv/bin/mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}"
    )
