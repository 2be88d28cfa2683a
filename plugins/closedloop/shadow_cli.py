"""``closedloop shadow``: replay the logged traffic of the last days through a candidate
version, off the request path, and report (see :mod:`closedloop.core.shadow`).

Registered on the ``closedloop`` group at the end of :mod:`closedloop.cli`."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click

from closedloop.cli_options import usecase_option


def _end(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not an ISO date or time") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@click.command()
@usecase_option
@click.option("--version", "candidate", required=True, help="The candidate model version.")
@click.option("--days", type=click.IntRange(1), default=None,
              help="Days of logged traffic before --end [default: gate shadow_days].")  # fmt: skip
@click.option("--against", default=None, metavar="VERSION",
              help="The version whose answers are replayed [default: the champion].")  # fmt: skip
@click.option("--end", callback=_end, default=None,
              help="End of the window, ISO date or time in UTC [default: now].")  # fmt: skip
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=None,
              help="[default: model.gate.shadow_min_agreement]")  # fmt: skip
@click.option("--max-ks", type=click.FloatRange(0, 1), default=None,
              help="[default: model.gate.shadow_max_ks]")  # fmt: skip
@click.option("--min-rows", type=click.IntRange(1), default=None,
              help="[default: model.gate.shadow_min_rows]")  # fmt: skip
@click.option("--no-record", is_flag=True, help="Do not record the report as an MLflow run.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
def shadow(
    candidate: str,
    days: int | None,
    against: str | None,
    end: datetime,
    min_agreement: float | None,
    max_ks: float | None,
    min_rows: int | None,
    no_record: bool,
    as_json: bool,
) -> None:
    """Replay the last days' logged predictions through version VERSION and compare it
    with the version that answered them: decisions, score distributions, segments,
    labelled metrics, scoring latency. Recorded in MLflow; exit 1 unless it passes."""
    from dataclasses import replace

    from closedloop.cli import _settings
    from closedloop.core.gate import GatePolicy
    from closedloop.core.shadow import ShadowThresholds, record, shadow_report

    settings = _settings()
    policy = GatePolicy(**settings.usecase.model.gate)
    given = {"min_agreement": min_agreement, "max_ks": max_ks, "min_rows": min_rows}
    thresholds = replace(
        ShadowThresholds.of(policy), **{k: v for k, v in given.items() if v is not None}
    )
    try:
        report = shadow_report(
            settings,
            candidate,
            end=end,
            days=days or policy.shadow_days,
            thresholds=thresholds,
            baseline=against,
        )
    except Exception as exc:  # no champion, an unknown or untrusted version, no features
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
    if not no_record:
        report = record(settings, report)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        _print(report)
    sys.exit(0 if report.passed else 1)


def _print(report: Any) -> None:
    r = report
    click.echo(
        f"{r.model}: v{r.candidate_version} replayed on {r.rows} predictions of "
        f"v{r.baseline_version} in [{r.window_start}, {r.window_end})"
        + (f", {r.skipped_rows} skipped (features missing)" if r.skipped_rows else "")
    )
    if r.rows:
        s = r.scores
        click.echo(f"  decisions agree      {r.agreement:.2%}  {r.decisions}")
        click.echo(
            f"  scores               KS {s['ks_statistic']:.4f} (p {s['ks_pvalue']:.3g}), "
            f"mean |diff| {s['mean_abs_difference']:.4f}, max {s['max_abs_difference']:.4f}"
        )
        for seg in r.segments:
            if "skipped" in seg:
                click.echo(f"  segment {seg['segment']}: {seg['skipped']}")
            else:
                click.echo(
                    f"  {seg['segment']}={seg['value']:<20} rows {seg['rows']:>6}  agree "
                    f"{seg['agreement']:.2%}  positive {seg['baseline_positive_rate']:.3f} -> "
                    f"{seg['candidate_positive_rate']:.3f}"
                )
        if r.labelled:
            lab = r.labelled
            click.echo(f"  labelled             {lab['labelled']} rows, {lab['verdict']}")
            for reason in lab["reasons"]:
                click.echo(f"                       {reason}")
        lat = r.latency
        click.echo(
            f"  candidate latency    {lat['row_p50_ms']:.3f} ms p50 / {lat['row_p99_ms']:.3f} ms "
            f"p99 per row; {lat['batch_p50_ms']:.2f} ms p50 per {lat['batch_rows']} rows "
            f"({lat['rows_per_second']:,.0f} rows/s, {lat['path']} path)"
        )
    click.echo(("PASSED" if r.passed else "FAILED") + ": " + "; ".join(r.reasons))
    if r.run_id:
        click.echo(f"recorded as MLflow run {r.run_id}")
