"""The ``closedloop`` command.

Start-up stays fast: only click and the settings are imported here; every command imports
what it needs (Airflow, Feast, ...) when it runs.

One module of this size: one click command per function, each a thin call into the
library, the platform or the demo.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import click

from closedloop.cli_options import usecase_option
from closedloop.core.settings import load_settings

if TYPE_CHECKING:
    from closedloop.core.settings import Settings


STAGES = ("features", "training", "batch_inference", "monitoring")


def _date(_ctx: click.Context, _param: click.Parameter, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)") from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--usecase",
    "usecase_name",
    default=None,
    metavar="NAME",
    help="The use case to act on (a declaration <NAME>.yaml in the use-case folder); "
    "needed when the folder holds several. Default: $CLOSEDLOOP_USECASE_NAME.",
)
@click.pass_context
def main(ctx: click.Context, usecase_name: str | None) -> None:
    """closedloop: data lands, is validated, becomes features, trains a model, which is
    gated, promoted, served and watched — and retrained when the world drifts."""
    ctx.obj = {"usecase_name": usecase_name}


def _settings(*, usecase: bool = True) -> Settings:
    """The settings, for the use case named by ``--usecase`` if it was given (processes
    this one starts inherit the choice). With ``usecase``, a bad declaration or an
    unknown use case is a usage error naming the problem."""
    chosen = (click.get_current_context().find_root().obj or {}).get("usecase_name")
    if chosen:
        os.environ["CLOSEDLOOP_USECASE_NAME"] = chosen
    settings = load_settings(**({"usecase_name": chosen} if chosen else {}))
    if usecase:
        try:
            _ = settings.usecase
        except ValueError as exc:  # DeclarationError included
            raise click.UsageError(str(exc)) from None
    return settings


@main.command()
@usecase_option
@click.option("--start", callback=_date, default="2026-01-01", show_default=True)
@click.option("--days", type=click.IntRange(1, 3660), default=7, show_default=True)
@click.option(
    "--rows",
    type=click.IntRange(1),
    default=400,
    show_default=True,
    help="Events per day (on average).",
)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option(
    "--drift-start",
    callback=_date,
    default=None,
    help="First day of drift (YYYY-MM-DD); no drift without it.",
)
@click.option(
    "--covariate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Covariate-shift strength from --drift-start.",
)
@click.option(
    "--concept",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Concept-shift strength from --drift-start.",
)
@click.option("--new-category", is_flag=True, help="A category value never seen appears.")
def generate(
    start: date,
    days: int,
    rows: int,
    seed: int,
    drift_start: date | None,
    covariate: float,
    concept: float,
    new_category: bool,
) -> None:
    """Write synthetic daily batches from the use case's declared generator into the
    landing folder."""
    from closedloop.demo.commands import generator_module

    settings = _settings()
    try:
        module = generator_module(settings.usecase)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    DriftSpec, write_batches = module.DriftSpec, module.write_batches
    if (covariate or concept or new_category) and drift_start is None:
        raise click.UsageError("drift options need --drift-start")
    drift = (
        DriftSpec(
            start=drift_start, covariate=covariate, concept=concept, new_category=new_category
        )
        if drift_start
        else None
    )
    paths = write_batches(
        settings.landing_dir, start, days, seed=seed, rows_per_day=rows, drift=drift
    )
    click.echo(f"wrote {len(paths)} batches to {settings.landing_dir}")


@main.command()
@usecase_option
@click.option(
    "--history-days",
    type=click.IntRange(14, 365),
    default=35,
    show_default=True,
    help="Days loaded before Airflow starts watching (one bulk backfill).",
)
@click.option("--stable-days", type=click.IntRange(1, 60), default=4, show_default=True)
@click.option("--drift-days", type=click.IntRange(2, 60), default=9, show_default=True)
@click.option("--rows", type=click.IntRange(50), default=300, show_default=True)
@click.option("--keep", is_flag=True, help="Keep existing state instead of starting clean.")
def demo(history_days: int, stable_days: int, drift_days: int, rows: int, keep: bool) -> None:
    """The closed loop through a real Airflow scheduler: history, first champion, daily
    scoring and monitoring, drift, retraining triggered by monitoring, promotion.
    Exits non-zero if the loop did not close."""
    from closedloop.demo.commands import run_demo, run_replay
    from closedloop.demo.loop import Scenario

    settings = _settings()
    if settings.usecase.demo is not None:
        sys.exit(run_replay(settings, keep=keep))

    scenario = Scenario(
        history_days=history_days,
        stable_days=stable_days,
        drift_days=drift_days,
        rows_per_day=rows,
    )
    sys.exit(run_demo(settings, scenario, keep=keep))


@main.command()
@usecase_option
@click.option("--port", type=int, default=8080, show_default=True, help="Airflow UI port.")
@click.option("--mlflow-port", type=int, default=5000, show_default=True)
@click.option("--evidently-port", type=int, default=8000, show_default=True)
def up(port: int, mlflow_port: int, evidently_port: int) -> None:
    """Start the Airflow, MLflow and Evidently UIs on the current state (Ctrl-C stops)."""
    from closedloop.platform.console import run_up

    sys.exit(run_up(_settings(), port, mlflow_port, evidently_port))


@main.command()
@usecase_option
def status() -> None:
    """Show what landed where: batches, quarantine, offline partitions, online keys."""
    from closedloop.platform.console import print_status

    print_status(_settings())


@main.command("online-features")
@usecase_option
@click.argument("keys", nargs=-1, required=True, metavar="KEY=VALUE...")
def online_features(keys: tuple[str, ...]) -> None:
    """Look up features in the Feast online store by entity keys, e.g.
    ``closedloop --usecase NAME online-features device_id=D042``: every feature view
    keyed by one of the given keys answers (the event's own view by its id)."""
    from closedloop.core.feature_store import online_lookup

    settings = _settings()
    row = {}
    for item in keys:
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="KEYS")
        row[key] = value
    try:
        out = online_lookup(settings, row)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(json.dumps(out, indent=2, default=str))


@main.command()
@click.argument("name")
@click.option(
    "--from",
    "sample",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A CSV or Parquet file of your events (a sample is read).",
)
@click.option("--label", default=None, help="The label column, if the guess would be wrong.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the draft [default: <use-case folder>/<NAME>.yaml].",
)
@click.option("--force", is_flag=True, help="Overwrite an existing declaration.")
def init(name: str, sample: Path, label: str | None, out: Path | None, force: bool) -> None:
    """Write a draft declaration of use case NAME from a sample of your data: types,
    ranges, categories, an id, a timestamp and entities, marked where guessed. Add the
    label and when it becomes known, then run `closedloop check NAME`."""
    import re

    from closedloop.core.draft import infer, read_sample, render

    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise click.BadParameter("lower_snake_case, e.g. device_failures", param_hint="NAME")
    settings = _settings(usecase=False)
    target = out or settings.usecases_dir / f"{name}.yaml"
    if target.exists() and not force:
        raise click.ClickException(f"{target} exists; --force overwrites it")
    try:
        draft = infer(name, read_sample(sample), str(sample), label=label)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(draft))
    click.echo(f"wrote {target}")
    guessed = {
        "id": draft.id_column,
        "timestamp": draft.timestamp_column,
        "entities": draft.entities or "none",
        "label guess": draft.label_guess or "none",
    }
    click.echo("  " + ", ".join(f"{k} {v}" for k, v in guessed.items()))
    click.echo("next: declare the label and when it becomes known, then "
               f"`closedloop check {name} --sample {sample}`")  # fmt: skip


@main.command()
@click.argument("name")
@click.option(
    "--sample",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Dry-run the feature step on this file of events (nothing is written).",
)
@click.option("--gx", "show_gx", is_flag=True, help="List every validation check.")
def check(name: str, sample: Path | None, show_gx: bool) -> None:
    """Validate use case NAME (or a declaration file), print what closedloop generates
    from it, and dry-run its feature step on a sample. Exits 1 on any problem."""
    from closedloop.core.check import describe, dry_run, gx_checks
    from closedloop.core.usecase import DeclarationError, UseCase

    base = _settings(usecase=False)
    path = Path(name)
    is_file = path.suffix in (".yaml", ".yml")
    settings = base.for_usecase(file=path) if is_file else base.for_usecase(name)
    try:
        usecase = UseCase.from_yaml(settings.usecase_path)
    except (DeclarationError, ValueError) as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    click.echo(f"{settings.usecase_path}: valid")
    for line in describe(usecase, settings):
        click.echo(line)
    if show_gx:
        click.echo("Great Expectations checks of each landed batch:")
        for line in gx_checks(usecase):
            click.echo(line)
    if sample is None:
        return
    try:
        run = dry_run(usecase, sample)
    except ValueError as exc:
        click.echo(f"dry run: {exc}", err=True)
        sys.exit(1)
    click.echo(f"dry run on {sample}: {run.rows} events in {run.intervals} intervals")
    for table, rows in run.tables.items():
        click.echo(f"  {table:<28} {rows} rows")
    for table, frame in run.preview.items():
        if table != usecase.event_table:
            click.echo(f"latest {table}:")
            click.echo("  " + frame.to_string(index=False).replace("\n", "\n  "))
    for interval, failures in run.failed.items():
        click.echo(f"interval {interval} fails validation:", err=True)
        for failure in failures:
            click.echo(f"  {failure}", err=True)
    sys.exit(0 if run.ok else 1)


@main.command("run")
@usecase_option
@click.argument(
    "stage", type=click.Choice(["features", "training", "batch_inference", "monitoring"])
)
@click.option("--day", required=True, callback=_date, help="The day (YYYY-MM-DD) to run for.")
@click.option("--conf", default="{}", help="JSON conf of the run (training: reason, window_days).")
def run_stage(stage: str, day: date, conf: str) -> None:
    """Run one STAGE of the use case for one day through Airflow's scheduler (training:
    as of the end of the day) and print its tasks' states."""
    from closedloop.platform.drive import run_stage as run

    try:
        extra = json.loads(conf)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--conf") from None
    sys.exit(run(_settings(), stage, day, extra))


@main.command()
@usecase_option
@click.option("--from", "first", required=True, callback=_date, help="First day (YYYY-MM-DD).")
@click.option("--to", "last", required=True, callback=_date, help="Last day (inclusive).")
@click.option("--train", is_flag=True, help="Train once as of the end of the last day.")
def backfill(first: date, last: date, train: bool) -> None:
    """Load the landed batches of [--from, --to] through the features DAG (Airflow's own
    backfill, one day at a time, in order); optionally train once at the end."""
    from closedloop.platform.drive import run_backfill

    if last < first:
        raise click.BadParameter("--to is before --from", param_hint="--to")
    sys.exit(run_backfill(_settings(), first, last, train=train))


@main.command("loop")
@usecase_option
@click.option("--from", "first", required=True, callback=_date, help="First watched day.")
@click.option("--to", "last", required=True, callback=_date, help="Last watched day.")
@click.option(
    "--history-from",
    callback=_date,
    default=None,
    help="First day of history before --from [default: the declared schedule.start].",
)
def loop_days(first: date, last: date, history_from: date | None) -> None:
    """Replay the landed batches of [--from, --to] day by day through the scheduler:
    features, scoring, monitoring — and the retraining monitoring asks for, judged by the
    gate. History before --from is loaded first (unless it is) and trains the first
    champion (unless there is one). Prints the day table."""
    from closedloop.demo.commands import run_loop
    from closedloop.demo.loop import Replay

    settings = _settings()
    start = history_from or settings.usecase.schedule.start
    if last < first or start >= first:
        raise click.UsageError(f"need history start {start} < --from {first} <= --to {last}")
    replay = Replay(start, (first - start).days, (last - first).days + 1)
    sys.exit(run_loop(settings, replay))


@main.command()
@usecase_option
def ledger() -> None:
    """Print the promotion ledger: every alias move, why, and by which run."""
    from closedloop.core.ledger import PromotionLedger

    settings = _settings()
    book = PromotionLedger(settings.closedloop_db)
    entries = book.history(settings.model_name)
    if not entries:
        click.echo(f"no promotions of {settings.model_name} yet")
    for entry in entries:
        click.echo(entry.line())


@main.command()
@usecase_option
@click.option("--reason", default="manual rollback", show_default=True)
@click.option(
    "--by",
    default=None,
    metavar="NAME",
    help="Who rolls back, for the ledger [default: the MLflow user the CLI logs in as "
    "(MLFLOW_TRACKING_USERNAME), else your login name].",
)
def rollback(reason: str, by: str | None) -> None:
    """Move `champion` back to the blessed version it replaced (recorded in the ledger,
    with who did it)."""
    import getpass

    from closedloop.core.ledger import PromotionLedger
    from closedloop.core.registry import RollbackError, client_for
    from closedloop.core.registry import rollback as roll_back

    settings = _settings()
    try:
        was, now = roll_back(
            client_for(settings),
            PromotionLedger(settings.closedloop_db),
            settings.model_name,
            reason,
            actor=f"user:{by or os.environ.get('MLFLOW_TRACKING_USERNAME') or getpass.getuser()}",
        )
    except RollbackError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{settings.model_name}: champion v{was} -> v{now}")


@main.command()
@usecase_option
@click.argument("run_id")
def reproduce(run_id: str) -> None:
    """Rebuild an MLflow run's training set and retrain it; exit 1 unless the holdout
    metrics are identical."""
    from closedloop.core.training_pipeline import reproduce as rerun

    result = rerun(_settings(), run_id)
    for key in sorted(result["recorded"]):
        if "." not in key:
            click.echo(
                f"  {key:<14} recorded {result['recorded'][key]!r:<24} "
                f"reproduced {result['reproduced'].get(key)!r}"
            )
    click.echo(f"data digest {result['data_digest'][:16]} matches the recorded one")
    click.echo("identical" if result["identical"] else "DIFFERENT")
    sys.exit(0 if result["identical"] else 1)


#: addresses only this machine can reach: serving there needs no API key
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@main.command()
@usecase_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option(
    "--challenger-share",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="A/B: share of event ids (sticky, by hash) scored by the `challenger`.",
)
@click.option(
    "--roles",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="A roles declaration: each user's API key (serving_key_env) opens the endpoints "
    "of its role's `serving` rights; others get 403 (see `closedloop users show`).",
)
@click.option(
    "--shadow",
    is_flag=True,
    help="Also score the `challenger` on what the champion answers, after the answer, "
    "logged as arm=shadow (answers and their latency unchanged; see `closedloop shadow`).",
)
@click.option(
    "--webhook-url",
    default=None,
    help="This service's base URL as the MLflow server reaches it: register an MLflow "
    "webhook that posts every alias move to URL/webhooks/mlflow, signed with "
    "CLOSEDLOOP_SERVE_WEBHOOK_SECRET, for a swap within ~100 ms; the poll becomes the "
    "fallback (production profile: MLflow's server delivers webhooks).",
)
@click.option(
    "--poll-seconds",
    type=click.FloatRange(0.05),
    default=None,
    help="How often the registry's aliases are checked for a hot swap "
    "[default: 5; 60 with --webhook-url].",
)
@click.option("--max-events", type=click.IntRange(1), default=100, show_default=True)
@click.option(
    "--log-flush-seconds",
    type=click.FloatRange(0.01),
    default=1.0,
    show_default=True,
    help="Longest time a prediction waits before the prediction log is written.",
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Server processes. Each loads the models and follows the registry on its own: "
    "during a hot swap they may answer with different versions for up to --poll-seconds.",
)
@click.option("--log-level", default="warning", show_default=True)
def serve(
    host: str,
    port: int,
    challenger_share: float,
    roles: Path | None,
    shadow: bool,
    webhook_url: str | None,
    poll_seconds: float | None,
    max_events: int,
    log_flush_seconds: float,
    workers: int,
    log_level: str,
) -> None:
    """Online predictions over HTTP: POST /predict, /health, /ready, /metrics, /docs.

    With ``CLOSEDLOOP_SERVE_API_KEY`` set, every endpoint but /health and /ready wants it
    (header ``X-API-Key``). Serving on an address other than the loopback without a key
    is refused."""
    import uvicorn

    from closedloop.serving.app import ServeConfig, create_app

    # MLflow's client retries a refused connection for about four minutes (seven retries
    # with exponential backoff, sized for rate limits). The model follower would sit in
    # that loop through an outage: /ready could not say the registry is gone, and after
    # it is back the next attempt could be two minutes away. Its next poll is its retry,
    # so its calls give up after two retries (~5 s) and wait 15 s at most for an answer;
    # values set in the environment win.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")

    api_key = os.environ.get("CLOSEDLOOP_SERVE_API_KEY") or None
    if api_key is None and roles is None and host not in LOOPBACK_HOSTS:
        raise click.UsageError(
            f"refusing to serve on {host} without an API key: set CLOSEDLOOP_SERVE_API_KEY "
            "(clients send it as X-API-Key), give --roles, or serve on 127.0.0.1"
        )
    if roles is not None:  # every user's key present before the first worker starts
        from closedloop.core.roles import load_roles, serving_keys
        from closedloop.core.usecase import DeclarationError

        try:
            if not serving_keys(load_roles(roles)) and api_key is None:
                raise click.UsageError(f"{roles} declares no user with a serving_key_env")
        except (DeclarationError, ValueError) as exc:
            raise click.UsageError(str(exc)) from exc
    if webhook_url is not None:
        from closedloop.serving import webhook

        try:
            secret = webhook.secret_from_environ(os.environ)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
        hook, done = webhook.register(_settings(), webhook_url.rstrip("/") + webhook.PATH, secret)
        click.echo(f"MLflow webhook {hook} {done}: alias moves go to {webhook_url}{webhook.PATH}")
    if poll_seconds is None:
        poll_seconds = 60.0 if webhook_url is not None else 5.0
    config = ServeConfig(
        webhook=webhook_url is not None,
        api_key=api_key,
        roles_file=str(roles.resolve()) if roles is not None else None,
        challenger_share=challenger_share,
        shadow=shadow,
        poll_seconds=poll_seconds,
        max_events=max_events,
        log_flush_seconds=log_flush_seconds,
    )
    # No access log: one line per request costs more than the lookup it describes.
    server = {"host": host, "port": port, "log_level": log_level, "access_log": False}
    if workers == 1:
        uvicorn.run(create_app(_settings(), config), **server)
        return
    import dataclasses
    import shutil
    import tempfile

    from closedloop.serving.app import CONFIG_ENV, WORKERS_METRICS_ENV

    _settings()  # a broken configuration fails here, once, not in every worker
    # The workers' metrics live in files here (prometheus_client's multiprocess mode,
    # chosen when the workers import it); /metrics adds them up.
    metrics_dir = tempfile.mkdtemp(prefix="closedloop-serve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ[WORKERS_METRICS_ENV] = metrics_dir
    if config.webhook:  # one worker receives a webhook; the file wakes the others
        config = dataclasses.replace(config, wake_file=os.path.join(metrics_dir, "registry-moved"))
    os.environ[CONFIG_ENV] = config.to_environ()
    try:
        uvicorn.run(
            "closedloop.serving.app:app_from_environ",
            factory=True,
            workers=workers,
            **server,
        )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


@main.command("airflow-env")
def airflow_env() -> None:
    """Print the environment for running Airflow's own CLI on closedloop's state
    (the production profile's too; its credentials stay in your environment)."""
    from closedloop.platform.runtime import airflow_environ
    from closedloop.platform.stack import production_environ

    settings = _settings(usecase=False)
    environ = production_environ if settings.profile == "production" else airflow_environ
    for key, value in sorted(environ(settings).items()):
        click.echo(f"export {key}={json.dumps(value)}")


@main.group()
def stack() -> None:
    """The production profile: PostgreSQL, Redis, CeleryExecutor, MLflow with basic-auth
    (CLOSEDLOOP_PROFILE=production; see docs/production.md)."""


@stack.command("up")
@click.option("--no-schedule", is_flag=True, help="Don't start the DAGs' own schedules.")
def stack_up(no_schedule: bool) -> None:
    """Start every component on this machine (one that exits is started again, as
    compose's restart policy does); Ctrl-C stops them all."""
    import signal
    import time

    from closedloop.platform.stack import MissingCredentials, ProductionStack

    settings = _settings(usecase=False)
    processes = ProductionStack(settings, use_job_schedule=not no_schedule)
    try:
        processes.start()
    except MissingCredentials as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"Airflow  {settings.airflow_api_url}  (user admin)")
    click.echo(f"MLflow   {settings.mlflow_tracking_uri}  (user $MLFLOW_TRACKING_USERNAME)")
    click.echo(f"logs     {settings.airflow_home / 'logs'}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            for name in processes.supervise():
                log = settings.airflow_home / "logs" / f"{name}.log"
                click.echo(f"{name} exited; started it again (see {log})", err=True)
            time.sleep(2)
    except KeyboardInterrupt:
        pass
    finally:
        processes.stop()


@stack.command("run")
@click.argument("component")
def stack_run(component: str) -> None:
    """Check COMPONENT's credentials and become it (one per compose service):
    init, mlflow, api-server, scheduler, dag-processor, triggerer, worker."""
    from closedloop.platform.stack import COMPONENTS, MissingCredentials, run_component

    if component not in COMPONENTS:
        raise click.BadParameter(f"one of {', '.join(COMPONENTS)}", param_hint="COMPONENT")
    try:
        run_component(_settings(usecase=False), component)
    except MissingCredentials as exc:
        raise click.ClickException(str(exc)) from exc


@stack.command("health")
@click.argument(
    "component", type=click.Choice(["scheduler", "dag-processor", "triggerer", "worker"])
)
def stack_health(component: str) -> None:
    """Exit 0 while COMPONENT on this host is healthy (compose health checks)."""
    from closedloop.platform.stack import run_health_check

    run_health_check(_settings(usecase=False), component)


@stack.command("commands")
def stack_commands() -> None:
    """Print each component's own command line (what `stack run` executes)."""
    import shlex

    from closedloop.platform.stack import COMPONENTS, component_command

    settings = _settings(usecase=False)
    for component in COMPONENTS:
        click.echo(f"{component:<14} {shlex.join(component_command(settings, component))}")


from closedloop.evidence_cli import evidence  # noqa: E402

main.add_command(evidence)

from closedloop.explain_cli import explain  # noqa: E402

main.add_command(explain)

from closedloop.shadow_cli import shadow  # noqa: E402

main.add_command(shadow)

from closedloop.users_cli import users  # noqa: E402

main.add_command(users)


if __name__ == "__main__":
    main()
