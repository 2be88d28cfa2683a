"""The evidence report of a loop, as Markdown and HTML (``<home>/evidence/``): for each
principle, component and workflow step, exercised or not, why, and links to the
artifacts. Both are rendered from the findings of :func:`closedloop.core.evidence.judge`;
the HTML through Jinja2 with autoescaping, so every value from the stores is escaped.
``evidence.json`` holds the same findings for tools.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from jinja2 import Environment

from closedloop.core.files import write_text

if TYPE_CHECKING:
    from closedloop.core.evidence import Facts, Finding, Link
    from closedloop.core.settings import Settings

TITLES = {
    "principles": "Principles (P1-P9)",
    "components": "Components (C1-C9)",
    "steps": "Workflow steps of the loop",
}

_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>closedloop evidence: {{ usecase }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem; max-width: 72rem; }
table { border-collapse: collapse; width: 100%; margin-bottom: 1.5rem; }
td, th { border: 1px solid #ccc; padding: .3rem .5rem; vertical-align: top; text-align: left; }
.yes { background: #d9f2d9; } .no { background: #f8d0d0; }
details { margin: .2rem 0; } code { font-size: .9em; }
</style></head><body>
<h1>Evidence of the loop: {{ usecase }}</h1>
<p>Model <code>{{ model }}</code>; home <code>{{ home }}</code>; written {{ written }}.
{{ exercised }} of {{ total }} items exercised. Derived from the stores (Airflow's
metadata DB, MLflow, the ledger and decision log, the report files), not written by hand.
</p>
{% if problems %}<p>Stores not read: {{ problems | join("; ") }}</p>{% endif %}
{% for kind, items in findings.items() %}
<h2>{{ titles[kind] }}</h2>
<table><tr><th>id</th><th>item</th><th>exercised</th><th>why, and the artifacts</th></tr>
{% for f in items %}
<tr class="{{ 'yes' if f.exercised else 'no' }}" id="{{ f.id }}">
<td>{{ f.id }}</td><td>{{ f.title }}</td><td>{{ 'yes' if f.exercised else 'NOT exercised' }}</td>
<td>{{ f.why }}
{% if f.links %}<details><summary>{{ f.links | length }} artifact(s)</summary><ul>
{% for link in f.links %}<li>{{ link.kind }}:
{% if link.url %}<a href="{{ link.url }}">{{ link.label }}</a>
{% else %}<code>{{ link.label }}</code>{% endif %}
</li>{% endfor %}</ul></details>{% endif %}
</td></tr>
{% endfor %}</table>
{% endfor %}
</body></html>
"""


def _md(text: str) -> str:
    """Text in a Markdown table cell or link label."""
    return (
        text.replace("\\", "\\\\")
        .replace("|", "\\|")
        .replace("[", "\\[")
        .replace("]", "\\]")
        .replace("\n", " ")
    )


def _md_link(link: Link) -> str:
    if not link.url:
        return f"`{link.label}`"
    return f"[{_md(link.label)}](<{link.url.replace('>', '%3E')}>)"


def markdown(facts: Facts, findings: dict[str, list[Finding]], written: str) -> str:
    settings = facts.settings
    items = [f for group in findings.values() for f in group]
    lines = [
        f"# Evidence of the loop: {settings.usecase.name}",
        "",
        f"Model `{settings.model_name}`; home `{settings.home}`; written {written}. "
        f"{sum(f.exercised for f in items)} of {len(items)} items exercised. Derived from "
        "the stores (Airflow's metadata DB, MLflow, the ledger and decision log, the report "
        "files), not written by hand.",
    ]
    if facts.problems:
        lines += ["", "Stores not read: " + "; ".join(facts.problems)]
    for kind, group in findings.items():
        lines += [
            "",
            f"## {TITLES[kind]}",
            "",
            "| id | item | exercised | why |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {f.id} | {_md(f.title)} | {'yes' if f.exercised else '**NOT exercised**'} "
            f"| {_md(f.why)} |"
            for f in group
        ]
        for f in group:
            if f.links:
                lines += ["", f"### {f.id} {_md(f.title)}: artifacts", ""]
                lines += [f"* {link.kind}: {_md_link(link)}" for link in f.links]
    return "\n".join(lines) + "\n"


def html(facts: Facts, findings: dict[str, list[Finding]], written: str) -> str:
    items = [f for group in findings.values() for f in group]
    template = Environment(autoescape=True, trim_blocks=True).from_string(_HTML)
    return template.render(
        usecase=facts.settings.usecase.name,
        model=facts.settings.model_name,
        home=str(facts.settings.home),
        written=written,
        exercised=sum(f.exercised for f in items),
        total=len(items),
        problems=facts.problems,
        findings=findings,
        titles=TITLES,
    )


def report_dir(settings: Settings) -> Path:
    return settings.home / "evidence" / settings.usecase.name


def write_report(settings: Settings, out_dir: Path | None = None) -> dict[str, Path]:
    """Collect, judge and write ``evidence.md``, ``evidence.html`` and ``evidence.json``
    under ``out_dir`` (default :func:`report_dir`); returns their paths by format."""
    from closedloop.core.evidence import collect, judge

    facts = collect(settings)
    findings = judge(facts)
    written = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    out = Path(out_dir) if out_dir else report_dir(settings)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out / "evidence.md",
        "html": out / "evidence.html",
        "json": out / "evidence.json",
    }
    write_text(paths["markdown"], markdown(facts, findings, written))
    write_text(paths["html"], html(facts, findings, written))
    data = {kind: [asdict(f) for f in group] for kind, group in findings.items()}
    write_text(
        paths["json"],
        json.dumps({"written": written, "problems": facts.problems, **data}, indent=2) + "\n",
    )
    return paths
