"""The outcomes report as one self-contained HTML page: inline CSS and SVG charts, no script, no fetch.

A merchant opens it from a mail or a shared folder, offline: everything is in the file — a funnel
per group (targets → sent → delivered → clicks → buyers), revenue and ROI per group, the lift over
the holdout with its interval, and delivery over time. Every value is escaped; numbers shown are
the report's, formatted as in the terminal table (:func:`engine.outcomes.render.cells`), and each
cell of the table carries ``data-group``/``data-col`` so a test can find it in the rendered DOM.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime, tzinfo
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.outcomes.attribution import ALL, GroupOutcome, OutcomeReport
from engine.outcomes.render import COLUMNS, cells, percent

__all__ = ["to_html"]

_CSS: Final = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI","PingFang SC","Microsoft YaHei",sans-serif;
margin:24px;color:#1d2430;background:#fafbfc}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.sub{color:#5b6474;margin-bottom:16px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #e2e6ee;border-radius:8px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:20px}.card span{color:#5b6474;font-size:12px}
table{border-collapse:collapse;background:#fff;font-size:12px}
th,td{border:1px solid #e2e6ee;padding:3px 6px;text-align:right;white-space:nowrap}
th{background:#f0f3f8}td.t{text-align:left}tr.sum td{font-weight:600;background:#f7f9fc}
.charts{display:flex;flex-wrap:wrap;gap:16px}
.chart{background:#fff;border:1px solid #e2e6ee;border-radius:8px;padding:8px}
.note{color:#5b6474;font-size:12px}
svg text{font-size:11px;fill:#1d2430}
"""
_FUNNEL: Final = (
    ("targets", "#9db4d9"),
    ("sent", "#6b93cf"),
    ("delivered", "#3f72bf"),
    ("clicks", "#e0a43a"),
    ("buyers", "#2e9e6a"),
)
_E = html.escape


def _money(v: float, currency: str) -> str:
    return f"{v:,.2f} {currency}"


def _card(label: str, value: str, key: str) -> str:
    return f'<div class="card" data-card="{_E(key)}"><b>{_E(value)}</b><span>{_E(label)}</span></div>'


def _funnel(g: GroupOutcome) -> str:
    """One group's funnel: a horizontal bar per step, widths relative to its targets."""
    top = max(g.targets, g.sent, 1)
    w, row = 300, 22
    parts = [
        f'<svg role="img" aria-label="funnel {_E(g.group)}" width="{w + 150}" '
        f'height="{row * len(_FUNNEL) + 24}">',
        f'<text x="0" y="13" font-weight="600">{_E(g.group)}</text>',
    ]
    for i, (step, color) in enumerate(_FUNNEL):
        v = int(getattr(g, step))
        bw = max(1.0, w * v / top) if v else 0.0
        y = 20 + i * row
        parts.append(f'<rect x="70" y="{y}" width="{bw:.1f}" height="{row - 6}" fill="{color}"/>')
        parts.append(f'<text x="0" y="{y + 12}">{step}</text>')
        parts.append(f'<text x="{74 + bw:.1f}" y="{y + 12}">{v:,}</text>')
    parts.append("</svg>")
    return f'<div class="chart">{"".join(parts)}</div>'


def _revenue_roi(groups: list[GroupOutcome], currency: str) -> str:
    """Revenue bars per group, with the ROI (revenue / cost) written beside each bar."""
    if not groups:
        return ""
    top = max((g.revenue for g in groups), default=0.0) or 1.0
    w, row, left = 360, 24, 150
    h = row * len(groups) + 30
    parts = [f'<svg role="img" aria-label="revenue and ROI per group" width="{left + w + 170}" height="{h}">']
    parts.append(f'<text x="{left}" y="12" font-weight="600">revenue ({_E(currency)}) · ROI</text>')
    for i, g in enumerate(groups):
        y = 22 + i * row
        bw = w * g.revenue / top
        roi = "–" if g.roi is None else f"1:{g.roi:,.2f}"
        parts.append(f'<text x="0" y="{y + 13}">{_E(g.group[:22])}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{bw:.1f}" height="{row - 6}" fill="#2e9e6a"/>')
        parts.append(f'<text x="{left + bw + 4:.1f}" y="{y + 13}">{g.revenue:,.2f} · ROI {roi}</text>')
    parts.append("</svg>")
    return f'<div class="chart">{"".join(parts)}</div>'


def _lift(groups: list[GroupOutcome]) -> str:
    """Lift per group: a dot at the difference in conversion, a whisker for its 95% interval."""
    rows = [g for g in groups if g.lift is not None]
    if not rows:
        return (
            '<p class="note">No lift: the campaign has no holdout '
            "(set <code>[outcomes] holdout = 0.05</code>).</p>"
        )
    lo = min(min(g.lift_low or 0.0 for g in rows), 0.0)
    hi = max(max(g.lift_high or 0.0 for g in rows), 0.0)
    span = (hi - lo) or 1.0
    w, row, left = 360, 24, 150

    def x(v: float) -> float:
        return left + w * (v - lo) / span

    h = row * len(rows) + 40
    parts = [f'<svg role="img" aria-label="lift over holdout" width="{left + w + 200}" height="{h}">']
    parts.append(
        f'<line x1="{x(0):.1f}" y1="14" x2="{x(0):.1f}" y2="{h - 18}" stroke="#999" stroke-dasharray="3 3"/>'
    )
    parts.append(f'<text x="{x(0) - 3:.1f}" y="{h - 4}">0</text>')
    for i, g in enumerate(rows):
        y = 26 + i * row
        a, b, d = g.lift_low or 0.0, g.lift_high or 0.0, g.lift or 0.0
        color = "#2e9e6a" if a > 0 else ("#c0392b" if b < 0 else "#e0a43a")
        parts.append(f'<text x="0" y="{y + 4}">{_E(g.group[:22])}</text>')
        parts.append(
            f'<line x1="{x(a):.1f}" y1="{y}" x2="{x(b):.1f}" y2="{y}" stroke="{color}" stroke-width="2"/>'
        )
        parts.append(f'<circle cx="{x(d):.1f}" cy="{y}" r="4" fill="{color}"/>')
        parts.append(f'<text x="{left + w + 8}" y="{y + 4}">{percent(d)} [{percent(a)}, {percent(b)}]</text>')
    parts.append("</svg>")
    return f'<div class="chart">{"".join(parts)}</div>'


def _zone(report: OutcomeReport) -> tzinfo:
    """The campaign's time zone (``policy.timezone``), UTC when it is unknown here."""
    try:
        return ZoneInfo(report.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def _timeline(report: OutcomeReport) -> str:
    """Hand-overs and deliveries per time bucket, as two lines."""
    pts = report.timeline
    if not pts:
        return '<p class="note">Nothing was sent yet.</p>'
    w, h, left, bottom = 640, 180, 50, 30
    top = max(max(p.sent, p.delivered) for p in pts) or 1
    n = len(pts)

    def xy(i: int, v: int) -> str:
        x = left + (w * i / max(n - 1, 1))
        y = 10 + (h - bottom - 10) * (1 - v / top)
        return f"{x:.1f},{y:.1f}"

    sent = " ".join(xy(i, p.sent) for i, p in enumerate(pts))
    dl = " ".join(xy(i, p.delivered) for i, p in enumerate(pts))
    zone = _zone(report)
    first = datetime.fromtimestamp(pts[0].start, zone).strftime("%Y-%m-%d %H:%M")
    last = datetime.fromtimestamp(pts[-1].start, zone).strftime("%Y-%m-%d %H:%M")
    label = _E(report.timezone)
    return (
        '<div class="chart"><svg role="img" aria-label="delivery over time" '
        f'width="{left + w + 20}" height="{h}">'
        f'<line x1="{left}" y1="{h - bottom}" x2="{left + w}" y2="{h - bottom}" stroke="#999"/>'
        f'<text x="0" y="16">{top:,}</text><text x="0" y="{h - bottom}">0</text>'
        f'<polyline points="{sent}" fill="none" stroke="#6b93cf" stroke-width="2"/>'
        f'<polyline points="{dl}" fill="none" stroke="#2e9e6a" stroke-width="2"/>'
        f'<text x="{left}" y="{h - 8}">{first}</text>'
        f'<text x="{left + w - 100}" y="{h - 8}">{last}</text>'
        f'<text x="{left + 160}" y="{h - 8}" fill="#6b93cf">— sent</text>'
        f'<text x="{left + 220}" y="{h - 8}" fill="#2e9e6a">— delivered</text>'
        f'</svg><div class="note">per {report.bucket_seconds / 60:g} min, times in {label}</div></div>'
    )


def _table(report: OutcomeReport) -> str:
    head = "".join(f"<th>{_E(c)}</th>" for c in COLUMNS)
    body = []
    for line in [*report.lines, report.total]:
        c = cells(line)
        cls = ' class="sum"' if line.carrier == ALL else ""
        key = "total" if line is report.total else line.group
        tds = "".join(
            f'<td{" class=t" if col in ("group", "variant", "carrier") else ""} data-group="{_E(key)}" '
            f'data-carrier="{_E(line.carrier)}" data-col="{col}">{_E(c[col])}</td>'
            for col in COLUMNS
        )
        body.append(f"<tr{cls}>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def to_html(report: OutcomeReport) -> str:
    """The report as one HTML page (UTF-8), with nothing to load from anywhere."""
    t = report.total
    cur = report.currency
    when = (
        datetime.fromtimestamp(report.generated_at, _zone(report)).strftime("%Y-%m-%d %H:%M ")
        + report.timezone
    )
    lift = "–" if t.lift is None else f"{percent(t.lift)} [{percent(t.lift_low)}, {percent(t.lift_high)}]"
    cards = "".join(
        (
            _card("targets", f"{t.targets:,}", "targets"),
            _card("sent", f"{t.sent:,}", "sent"),
            _card("delivered", f"{t.delivered:,}", "delivered"),
            _card("buyers", f"{t.buyers:,}", "buyers"),
            _card("revenue", _money(t.revenue, cur), "revenue"),
            _card("cost", _money(t.cost, cur), "cost"),
            _card("ROI (revenue : cost)", "–" if t.roi is None else f"1:{t.roi:,.2f}", "roi"),
            _card("lift over holdout (95% CI)", lift, "lift"),
        )
    )
    funnels = "".join(_funnel(g) for g in report.groups)
    notes = "".join(f"<li>{_E(n)}</li>" for n in report.notes)
    title = f"{report.campaign} — outcomes"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="zh-CN"><head><meta charset="utf-8"><title>{_E(title)}</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{_CSS}</style></head><body>"
        f"<h1>{_E(report.name or report.campaign)}</h1>"
        f'<div class="sub">campaign <code>{_E(report.campaign)}</code> · attribution window '
        f"{report.window_seconds / 86400:g} d · holdout {report.holdout_share:.1%} · "
        f"groups by <code>{_E(report.group_field)}</code> · "
        f"{report.orders_in_window:,} orders in the window · "
        f"generated {when}</div>"
        f'<div class="cards">{cards}</div>'
        f'<h2>Funnel per group</h2><div class="charts">{funnels}</div>'
        f'<h2>Revenue and ROI per group</h2><div class="charts">{_revenue_roi(report.groups, cur)}</div>'
        f'<h2>Lift over holdout</h2><div class="charts">{_lift(report.groups)}</div>'
        f'<h2>Delivery over time</h2><div class="charts">{_timeline(report)}</div>'
        f"<h2>Per group × variant × carrier</h2>{_table(report)}"
        f'<p class="note">{_E(report.method)}. ROI is revenue : cost (the merchants\' 1:8).</p>'
        + (f'<ul class="note">{notes}</ul>' if notes else "")
        + "</body></html>\n"
    )
