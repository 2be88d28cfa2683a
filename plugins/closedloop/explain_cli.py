"""``closedloop explain PREDICTION_ID``: one prediction walked back to its origins
(:func:`closedloop.core.explain.explain`), as text or, with ``--json``, as JSON.

An id the prediction log does not hold exits with status 2 and names the id.
"""

from __future__ import annotations

import json
import sys

import click

from closedloop.cli_options import usecase_option


@click.command()
@usecase_option
@click.argument("prediction_id")
@click.option("--json", "as_json", is_flag=True, help="Print the explanation as JSON.")
def explain(prediction_id: str, as_json: bool) -> None:
    """Walk a prediction back to its origins: logged features and defaults, the model
    version and its alias, the training run and its data, the DAG runs that built,
    trained and promoted it, the features runs, each feature's contribution and the
    ground truth once known."""
    from closedloop.cli import _settings
    from closedloop.core.explain import UnknownPredictionError
    from closedloop.core.explain import explain as walk

    settings = _settings()
    try:
        found = walk(settings, prediction_id)
    except UnknownPredictionError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(found.to_dict(), indent=2, sort_keys=True))
    else:
        click.echo(found.text())
