"""The outcomes page in headless Chromium: it renders with no console error, fetches nothing, shows the numbers."""

from __future__ import annotations

import re
import struct
from pathlib import Path

from engine.outcomes.attribution import GroupOutcome, OutcomeReport, TimePoint, _finish, _sum
from engine.outcomes.html import to_html
from engine.outcomes.render import cells
from tests.integration.chromium import render

HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'


def _line(group: str, carrier: str, **kw: int | float) -> GroupOutcome:
    return _finish(GroupOutcome(group=group, variant="-", carrier=carrier, **kw))  # type: ignore[arg-type]


def _report() -> OutcomeReport:
    a = [
        _line(
            "important_value",
            "cm",
            targets=12000,
            sent=11400,
            parts=11400,
            cost=570.0,
            delivered=11000,
            clicks=900,
            buyers=1140,
            orders=1300,
            revenue=182000.0,
            holdout=600,
            holdout_buyers=30,
        ),
        _line(
            "important_value",
            "cu",
            targets=8000,
            sent=7600,
            parts=7600,
            cost=304.0,
            delivered=7300,
            buyers=700,
            orders=760,
            revenue=99800.5,
            holdout=400,
            holdout_buyers=21,
        ),
    ]
    b = [
        _line(
            HOSTILE,
            "ct",
            targets=5000,
            sent=4750,
            parts=9500,
            cost=285.0,
            delivered=4600,
            buyers=95,
            orders=95,
            revenue=8550.0,
            holdout=250,
            holdout_buyers=4,
        )
    ]
    ga, gb = _sum("important_value", "-", "all", a), _sum(HOSTILE, "-", "all", b)
    t0 = 1_764_720_000.0
    return OutcomeReport(
        campaign="double11",
        name="双11 老客召回",
        window_seconds=7 * 86400,
        holdout_share=0.05,
        group_field="group",
        orders_in_window=4000,
        lines=[*a, ga, *b, gb],
        groups=[ga, gb],
        total=_sum("all", "-", "all", [*a, *b]),
        timeline=[
            TimePoint(start=t0 + i * 900, sent=3000 + 100 * i, delivered=2800 + 90 * i) for i in range(8)
        ],
        bucket_seconds=900,
        generated_at=t0 + 86400,
        timezone="Asia/Shanghai",
    )


def test_the_page_renders_with_no_console_error_and_shows_the_numbers(tmp_path: Path) -> None:
    report = _report()
    page = tmp_path / "outcomes.html"
    page.write_text(to_html(report), encoding="utf-8")
    got = render(page)
    assert got.exceptions == []
    assert [
        c for c in got.console if c.get("type") == "error" or c.get("entry", {}).get("level") == "error"
    ] == []
    assert got.requests == [page.resolve().as_uri()]  # the page itself and nothing else
    dom = got.dom
    # the hostile group name is text: no element came from it, and no script ran
    assert "<script" not in dom and "<img" not in dom
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    # every cell of the table carries the report's number, as the terminal table formats it
    for line in [*report.lines, report.total]:
        key = "total" if line is report.total else line.group
        for col, text in cells(line).items():
            if col in ("revenue", "buyers", "sent", "roi", "lift", "cost", "holdout_buyers"):
                esc = (
                    key.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
                )
                cell = f'data-group="{esc}" data-carrier="{line.carrier}" data-col="{col}">{text.replace("&", "&amp;")}<'
                assert cell in dom, cell
    assert "双11 老客召回" in dom
    # times in the campaign's zone: 2025-12-03 00:00 UTC is 08:00 in Shanghai
    assert "2025-12-03 08:00" in dom and "times in Asia/Shanghai" in dom
    t = report.total
    assert t.revenue == 290350.5 and t.buyers == 1935
    assert f"{t.revenue:,.2f} CNY" in dom
    # four charts: a funnel per group, revenue/ROI, lift, delivery over time
    assert len(re.findall(r'aria-label="funnel ', dom)) == 2
    for label in ("revenue and ROI per group", "lift over holdout", "delivery over time"):
        assert f'aria-label="{label}"' in dom
    # a real PNG, as wide as the page
    assert got.png[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", got.png[16:24])
    assert w >= 1000 and h >= 600


def test_a_report_without_holdout_or_sends_renders_too(tmp_path: Path) -> None:
    empty = OutcomeReport(
        campaign="none",
        window_seconds=86400,
        holdout_share=0.0,
        group_field="group",
        orders_in_window=0,
        lines=[],
        groups=[],
        total=GroupOutcome(group="all", variant="-", carrier="all"),
        timeline=[],
        bucket_seconds=3600,
        generated_at=1_764_720_000.0,
        notes=["no orders imported yet"],
    )
    page = tmp_path / "empty.html"
    page.write_text(to_html(empty), encoding="utf-8")
    got = render(page)
    assert got.exceptions == [] and got.requests == [page.resolve().as_uri()]
    assert "No lift: the campaign has no holdout" in got.dom and "Nothing was sent yet." in got.dom


def test_the_harness_sees_console_errors_exceptions_and_fetches(tmp_path: Path) -> None:
    """The checks above can fail: a page that logs an error, throws and fetches is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<html><body><script>console.error("boom"); throw new Error("bad")</script>'
        '<img src="http://127.0.0.1:9/x.png"></body></html>',
        encoding="utf-8",
    )
    got = render(bad)
    assert any(c.get("type") == "error" for c in got.console)
    assert len(got.exceptions) == 1
    assert "http://127.0.0.1:9/x.png" in got.requests
