"""What ``closedloop status``, ``up`` and ``online-features`` show: the stores' contents,
the registered model and the ledger, and the local Airflow, MLflow and Evidently UIs."""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import click

from closedloop.core import offline
from closedloop.core.usecase import AGGREGATE_TS, EVENT_TABLE, EVENT_VIEW

if TYPE_CHECKING:
    from closedloop.core.settings import Settings


def say(message: str) -> None:
    click.echo(f"[{time.strftime('%H:%M:%S')}] {message}")


def quiet_library_warnings() -> None:
    """The libraries' deprecation chatter is not closedloop's output. ``import feast`` and
    ``import airflow`` both reset or capture the warning filters, so this runs after them."""
    import airflow.sdk  # noqa: F401
    import feast  # noqa: F401

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", module="starlette")


def where_to_look(settings: Settings) -> None:
    home = settings.home
    from closedloop.core import links

    click.echo("Where to look (make up starts the UIs on this state):")
    click.echo(
        f"  Airflow UI    {settings.airflow_public_url}  (closedloop up; user admin, its "
        f"password in {settings.airflow_home / 'simple_auth_manager_passwords.json.generated'})"
    )
    view = links.view(settings, settings.usecase.name)
    click.echo(f"  closedloop    {view}  (in the Airflow UI, the same login)")
    click.echo(f"  MLflow UI     mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}")
    click.echo(f"  Evidently UI  evidently ui --workspace {home / 'evidently'}")
    click.echo(f"  Reports       {home / 'reports' / settings.usecase.name}/<day>/drift.html")
    click.echo(f"  Predictions   {home / 'predictions'} and the log {settings.prediction_log_dir}")
    click.echo(f"  Loop summary  {home / 'loop.json'}; ledger: closedloop ledger")


def _online_hits(settings: Settings) -> dict[str, str]:
    """How many of the offline entity keys of each view the online store answers."""
    from closedloop.core.feature_store import open_store

    store = open_store(settings)
    result = {}
    for view in store.list_feature_views():
        table = {EVENT_VIEW: EVENT_TABLE}.get(view.name, view.name)
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
    tables = settings.usecase.offline_tables
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


def show_entities(settings: Settings) -> None:
    """For each entity, the one with the most events: its aggregates online (Feast) next
    to its latest offline row."""
    from closedloop.core.feature_store import open_store

    usecase = settings.usecase
    store = open_store(settings)
    for entity, table in usecase.aggregate_tables.items():
        rows = offline.read_partitions(settings.offline_table_dir(table))
        if rows is None or rows.empty:
            continue
        key = usecase.entities[entity].join_key
        names = list(usecase.features.aggregations[entity])
        busiest = rows[key].value_counts().sort_index().idxmax()
        row = rows[rows[key] == busiest].sort_values(AGGREGATE_TS).iloc[-1]
        online = store.get_online_features(
            features=[f"{table}:{n}" for n in names], entity_rows=[{key: row[key]}]
        ).to_dict()
        click.echo(f"{entity} {row[key]} (latest offline row stamped {row[AGGREGATE_TS]}):")
        for name in names:
            click.echo(f"  {name:<26} online {online[name][0]!s:<22} offline {row[name]}")
        click.echo(f"  try: closedloop online-features --usecase {usecase.name} {key}={row[key]}")


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


def ui_commands(settings: Settings, mlflow_port: int, evidently_port: int) -> dict[str, list[str]]:
    """The MLflow and Evidently UIs on the state of ``settings``, on 127.0.0.1."""
    bin_dir = Path(sys.executable).parent
    local = ["--host", "127.0.0.1", "--port"]
    return {
        "mlflow": [
            str(bin_dir / "mlflow"),
            "ui",
            "--backend-store-uri",
            settings.mlflow_tracking_uri,
            *local,
            str(mlflow_port),
        ],
        "evidently": [
            str(bin_dir / "evidently"),
            "ui",
            "--workspace",
            str(settings.evidently_workspace),
            *local,
            str(evidently_port),
        ],
    }


def run_up(settings: Settings, port: int, mlflow_port: int, evidently_port: int) -> int:
    """``closedloop up``: Airflow (its API and execution API servers, scheduler and DAG
    processor), the MLflow UI and the Evidently UI on the current state, all on
    127.0.0.1, until Ctrl-C."""
    import signal
    import subprocess

    from closedloop.core import links
    from closedloop.platform.local_airflow import LocalAirflow
    from closedloop.platform.runtime import apply_airflow_environ

    # Links in Airflow (extra links, the closedloop view) name the UIs started here,
    # unless the settings name public URLs of their own.
    public = {
        "MLFLOW_PUBLIC_URL": (settings.stores.mlflow_public_url, mlflow_port),
        "EVIDENTLY_PUBLIC_URL": (settings.stores.evidently_public_url, evidently_port),
    }
    for name, (configured, ui_port) in public.items():
        if not configured:
            os.environ[f"CLOSEDLOOP_STORES__{name}"] = f"http://127.0.0.1:{ui_port}"
    env = apply_airflow_environ(settings)
    airflow = LocalAirflow(settings, port=port)
    logs = airflow.logs_dir
    logs.mkdir(parents=True, exist_ok=True)
    uis: dict[str, subprocess.Popen] = {}
    commands = ui_commands(settings, mlflow_port, evidently_port)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    try:
        for name, command in commands.items():
            log = open(logs / f"{name}-ui.log", "ab")  # noqa: SIM115 - owned by the process
            uis[name] = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        say(f"starting Airflow ({', '.join(airflow.components)}) ...")
        airflow.start()
        shown = airflow.public_settings()
        click.echo(
            f"Airflow UI    {shown.airflow_public_url}  (log in as admin with the password in "
            f"{airflow.password_file})"
        )
        click.echo(
            f"closedloop    {links.view(shown, settings.usecase_name)}  (the same login; also "
            "'closedloop' in the Airflow UI's menu and on each DAG run)"
        )
        click.echo(f"MLflow UI     http://127.0.0.1:{mlflow_port}  (no login)")
        click.echo(f"Evidently UI  http://127.0.0.1:{evidently_port}  (no login)")
        click.echo(f"Logs          {logs}")
        click.echo("Ctrl-C stops everything.")
        while not stop:
            for name, proc in uis.items():
                if proc.poll() is not None:
                    say(f"{name} UI exited with {proc.returncode}; see {logs}")
                    return 1
            airflow.check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        say("stopping")
        airflow.stop()
        for proc in uis.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
    return 0
