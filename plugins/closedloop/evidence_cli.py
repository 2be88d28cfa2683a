"""``closedloop evidence``: the evidence report of the last loop, from the stores (see
:mod:`closedloop.core.evidence`); registered on the ``closedloop`` command in ``cli.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from closedloop.cli_options import usecase_option


@click.command()
@usecase_option
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of the report (default: <home>/evidence/<use case>).",
)
@click.option("--strict", is_flag=True, help="Exit 1 if a principle was not exercised.")
def evidence(out: Path | None, strict: bool) -> None:
    """Write the evidence report of the loop (Markdown, HTML, JSON): for each of the
    paper's principles P1-P9, components C1-C9 and each workflow step, whether the runs
    in the stores exercised it, and links to the DAG runs, MLflow runs and versions,
    reports and files that show it. Needs no running Airflow."""
    from closedloop.cli import _settings
    from closedloop.core.evidence_report import write_report

    paths = write_report(_settings(), out)
    report = json.loads(paths["json"].read_text())
    for kind in ("principles", "components", "steps"):
        marks = " ".join(f"{f['id']}:{'yes' if f['exercised'] else 'NO'}" for f in report[kind])
        click.echo(f"{kind:<11} {marks}")
    for problem in report["problems"]:
        click.echo(f"not read: {problem}")
    for name, path in paths.items():
        click.echo(f"{name:<11} {path}")
    missing = [f["id"] for f in report["principles"] if not f["exercised"]]
    if strict and missing:
        raise click.ClickException(f"principles not exercised: {', '.join(missing)}")
