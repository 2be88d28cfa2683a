"""``closedloop users``: the roles declaration (:mod:`closedloop.core.roles`) shown as
a role x action matrix; registered on the ``closedloop`` group in ``cli.py``."""

from __future__ import annotations

from pathlib import Path

import click

from closedloop.cli_options import usecase_option

#: ``--roles FILE``: another declaration than CLOSEDLOOP_ROLES_FILE's or the shipped one
roles_option = click.option(
    "--roles",
    "path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="The roles declaration [default: CLOSEDLOOP_ROLES_FILE, else the shipped one].",
)


@click.group()
def users() -> None:
    """Who may do what: the paper's roles R1-R7 as rights in Airflow, MLflow and serve."""


@users.command()
@roles_option
@click.option("--markdown", is_flag=True, help="Print the matrix as a Markdown table only.")
def show(path: Path | None, markdown: bool) -> None:
    """Print the role x action matrix and each declared user's role."""
    from closedloop.core.roles import PAPER_ROLES, load_roles, markdown_matrix, matrix
    from closedloop.core.usecase import DeclarationError

    try:
        roles = load_roles(path)
    except DeclarationError as exc:
        raise click.ClickException(str(exc)) from exc
    if markdown:
        click.echo(markdown_matrix(roles))
        return
    header, rows = matrix(roles)
    width = max(len(action) for action, _ in rows)
    columns = [max(len(h), *(len(r[i]) for _, r in rows)) for i, h in enumerate(header)]
    click.echo(
        " " * width + "  " + "  ".join(h.rjust(w) for h, w in zip(header, columns, strict=True))
    )
    for action, answers in rows:
        cells = "  ".join(a.rjust(w) for a, w in zip(answers, columns, strict=True))
        click.echo(f"{action.ljust(width)}  {cells}")
    click.echo("")
    for name, role in roles.roles.items():
        paper = PAPER_ROLES.get(role.paper, "an account a pipeline runs as")
        click.echo(f"{name} ({role.paper}: {paper}): {role.description}")
    click.echo("")
    if not roles.users:
        click.echo("no users declared")
    for name, user in roles.users.items():
        source = f"${user.password_env}" if user.password_env else str(user.password_file)
        where = f", its MLflow login in connection {user.airflow_connection}" if (
            user.airflow_connection) else ""  # fmt: skip
        click.echo(f"user {name}: {user.role} (password from {source}{where})")


@users.command()
@roles_option
@usecase_option
@click.option(
    "--only",
    type=click.Choice(["airflow", "mlflow"]),
    default=None,
    help="Apply the declaration to one server only [default: both].",
)
def sync(path: Path | None, only: str | None) -> None:
    """Apply the roles declaration to the running production stack: Airflow's users and
    FAB roles (per-DAG rights of every use case's DAGs) and MLflow's users and permissions
    (every use case's experiments and registered model). A user closedloop created and no
    longer declared is deleted. Runs as the stack's admins (CLOSEDLOOP_AIRFLOW_ADMIN_PASSWORD,
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD), once the DAGs are parsed. Prints
    what it changed; a second run prints nothing to change."""
    from closedloop.cli import _settings
    from closedloop.core.roles import load_roles
    from closedloop.core.usecase import DeclarationError
    from closedloop.platform.access import sync_airflow, sync_mlflow

    try:
        roles = load_roles(path)
        for user in roles.users.values():
            user.password()  # every password present before anything changes
    except (DeclarationError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    settings = _settings(usecase=False)
    changes: list[str] = []
    try:
        if only in (None, "airflow"):
            changes += sync_airflow(settings, roles)
        if only in (None, "mlflow"):
            changes += sync_mlflow(settings, roles)
    except RuntimeError as exc:
        for line in changes:
            click.echo(line)
        raise click.ClickException(str(exc)) from exc
    for line in changes:
        click.echo(line)
    click.echo(f"{len(changes)} change(s)" if changes else "nothing to change")
