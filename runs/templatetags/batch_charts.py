"""The batch pages' small formatting helpers and the scenario's trend chart, drawn on the server as
inline SVG (no script, no chart library): pass rate, and latency p50/p90, over its latest batches."""

from __future__ import annotations

import math

from django import template
from django.utils.dateparse import parse_datetime
from django.utils.html import escape
from django.utils.safestring import mark_safe

register = template.Library()

WIDTH, PANEL_HEIGHT = 720, 150
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 14, 22


@register.filter
def percent(rate) -> str:
    """0.6 → "60%"; None (nothing judged) → "–"."""
    return "–" if rate is None else f"{round(rate * 100)}%"


@register.filter
def ms(value) -> str:
    return "–" if value is None else f"{value} ms"


@register.filter
def isotime(value):
    """The ISO time strings of ``runs.batches`` as datetimes, for ``|date``."""
    return parse_datetime(value) if isinstance(value, str) else value


def _nice_ceiling(value: float) -> int:
    """The smallest 1, 2 or 5 × 10ⁿ at or above ``value`` (an axis' top)."""
    if value <= 0:
        return 1
    power = 10 ** math.floor(math.log10(value))
    return next(int(step * power) for step in (1, 2, 5, 10) if step * power >= value)


def _x(index: int, count: int) -> float:
    span = WIDTH - LEFT - RIGHT
    return LEFT + (span / 2 if count == 1 else index * span / (count - 1))


def _y(fraction: float) -> float:
    """0 at the bottom of a panel, 1 at its top."""
    return round(TOP + (1 - fraction) * (PANEL_HEIGHT - TOP - BOTTOM), 1)


def _series(trend: list[dict], key: str, scale: float) -> dict:
    points = [
        {"x": round(_x(i, len(trend)), 1), "y": _y(batch[key] / scale), "value": batch[key], "batch": batch}
        for i, batch in enumerate(trend) if batch[key] is not None
    ]
    return {"points": points, "polyline": " ".join(f"{p['x']},{p['y']}" for p in points)}


@register.inclusion_tag("runs/partials/trend_chart.html")
def trend_chart(trend: list[dict]) -> dict:
    """``trend``: batch summaries, oldest first (``runs.batches.scenario_trend``)."""
    slowest = max((batch["latency_ms_p90"] or batch["latency_ms_p50"] or 0 for batch in trend), default=0)
    top_ms = _nice_ceiling(slowest)
    return {
        "trend": trend,
        "width": WIDTH, "height": PANEL_HEIGHT, "left": LEFT, "right": WIDTH - RIGHT,
        "top": TOP, "bottom": PANEL_HEIGHT - BOTTOM,
        "rate_ticks": [{"label": f"{pct}%", "y": _y(pct / 100)} for pct in (0, 50, 100)],
        "ms_ticks": [{"label": f"{value} ms", "y": _y(value / top_ms)} for value in (0, top_ms // 2, top_ms)],
        "pass_rate": _series(trend, "pass_rate", 1),
        "p50": _series(trend, "latency_ms_p50", top_ms),
        "p90": _series(trend, "latency_ms_p90", top_ms),
        "first": trend[0] if trend else None,
        "last": trend[-1] if trend else None,
    }


@register.filter
def sides(criterion: dict) -> list[tuple[str, dict | None]]:
    """A compared criterion's two sides, before then after, for one loop in the template."""
    return [("before", criterion["before"]), ("after", criterion["after"])]


# A latency change smaller than this share is noise, not worth a colour.
LATENCY_CHANGE_SHARE = 0.1


@register.filter
def trend_class(before, after) -> str:
    if before is None or after is None:
        return ""
    if after > before * (1 + LATENCY_CHANGE_SHARE):
        return "latency-worse"
    if after < before * (1 - LATENCY_CHANGE_SHARE):
        return "latency-better"
    return ""


@register.filter
def run_links(runs: list[dict]) -> str:
    """A path's runs in a batch as numbered links, coloured by verdict (or status). Built here, not
    in a template loop (nor with ``format_html`` per link): a 100-repeat batch of 100 paths has
    10,000 of them. Everything but the title is an id or a choice value."""
    links = []
    for number, run in enumerate(runs, start=1):
        css = f"verdict-{run['verdict']}" if run["verdict"] else f"status-{run['status']}"
        title = f"Run {number}: {run['verdict'] or run['status']}"
        if run["failure_reason"]:
            title += f" ({run['failure_reason']})"
        if run.get("auto_retry"):
            title += ", a retry of a run lost before it began"
        links.append(f'<a href="/runs/{run["id"]}/" class="{escape(css)}" title="{escape(title)}">{number}</a>')
    return mark_safe("".join(links))
