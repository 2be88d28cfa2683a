"""HTML of the closedloop view: Jinja2 templates (``ui/templates``, autoescaped: every
value from the stores is escaped) and the monitoring chart as inline SVG — the pages
load nothing from elsewhere, no script, no CDN.
"""

from __future__ import annotations

import html
import json
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

if TYPE_CHECKING:
    from closedloop.core.monitoring import Verdict

TEMPLATES = Path(__file__).parent / "templates"
WIDTH, HEIGHT, PAD = 640, 200, 32


@cache
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["number"] = number
    env.filters["pretty"] = pretty
    return env


def page(template: str, **values: Any) -> str:
    return environment().get_template(template).render(**values)


def number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def pretty(value: Any) -> str:
    """A value as indented JSON (strings as they are)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def chart(verdicts: list[Verdict], threshold: float | None = None) -> Markup:
    """Drift share and live ROC AUC per monitored day, both on [0, 1], as an SVG."""
    if not verdicts:
        return Markup("")
    n = len(verdicts)
    inner_w, inner_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD

    def x(i: int) -> float:
        return PAD + (inner_w * i / (n - 1) if n > 1 else inner_w / 2)

    def y(v: float) -> float:
        return PAD + inner_h * (1 - max(0.0, min(1.0, v)))

    def line(values: list[float | None], color: str, name: str) -> str:
        points = [(x(i), y(v)) for i, v in enumerate(values) if v is not None]
        if not points:
            return ""
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        dots = "".join(
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{color}"/>' for px, py in points
        )
        return (
            f'<polyline class="{name}" fill="none" stroke="{color}" stroke-width="2" '
            f'points="{path}"/>{dots}'
        )

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" aria-label="drift share and live AUC per day">',
        f'<rect x="{PAD}" y="{PAD}" width="{inner_w}" height="{inner_h}" fill="none" '
        'stroke="#ccc"/>',
    ]
    for tick in (0.0, 0.5, 1.0):
        parts.append(
            f'<text x="{PAD - 4}" y="{y(tick) + 4:.1f}" font-size="10" '
            f'text-anchor="end">{tick:.1f}</text>'
        )
    if threshold is not None:
        parts.append(
            f'<line x1="{PAD}" x2="{WIDTH - PAD}" y1="{y(threshold):.1f}" y2="{y(threshold):.1f}" '
            'stroke="#d33" stroke-dasharray="4 3"/>'
        )
    parts.append(line([v.drift_share for v in verdicts], "#d97706", "drift-share"))
    parts.append(line([v.live_auc for v in verdicts], "#2563eb", "live-auc"))
    for i in sorted({0, n - 1}):
        parts.append(
            f'<text x="{x(i):.1f}" y="{HEIGHT - 8}" font-size="10" text-anchor="middle">'
            f"{html.escape(verdicts[i].day)}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))
