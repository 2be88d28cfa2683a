"""Options that every ``closedloop`` command module shares (``cli.py`` and the
commands it registers from their own modules)."""

from __future__ import annotations

import click


def _choose_usecase(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        root = ctx.find_root()
        root.obj = {**(root.obj or {}), "usecase_name": value}


#: ``--usecase NAME`` after a command too (``closedloop demo --usecase NAME``)
usecase_option = click.option(
    "--usecase",
    metavar="NAME",
    expose_value=False,
    callback=_choose_usecase,
    help="The use case to act on (see `closedloop --help`).",
)
