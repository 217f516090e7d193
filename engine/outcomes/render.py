"""The outcomes report as text: its columns, CSV, JSON, and cells formatted for a terminal table."""

from __future__ import annotations

import csv
import io
from typing import Final

import msgspec

from engine.outcomes.attribution import GroupOutcome, OutcomeReport

__all__ = ["COLUMNS", "cells", "percent", "to_csv", "to_json"]

COLUMNS: Final = (
    "group",
    "variant",
    "carrier",
    "targets",
    "sent",
    "parts",
    "cost",
    "delivered",
    "clicks",
    "replies",
    "opt_outs",
    "buyers",
    "orders",
    "revenue",
    "aov",
    "roi",
    "conversion",
    "holdout",
    "holdout_buyers",
    "holdout_conversion",
    "lift",
    "lift_low",
    "lift_high",
    "incremental_buyers",
    "incremental_revenue",
    "incremental_roi",
)
"""Every line's columns, in the order CSV and the HTML table show them."""


def percent(v: float | None, digits: int = 2) -> str:
    """A share as ``12.34%`` (``–`` for none)."""
    return "–" if v is None else f"{v * 100:.{digits}f}%"


def cells(line: GroupOutcome) -> dict[str, str]:
    """The line's values as short texts for a table (thousands separated, shares in %)."""
    out: dict[str, str] = {}
    for col in COLUMNS:
        v = getattr(line, col)
        if col in ("conversion", "holdout_conversion", "lift", "lift_low", "lift_high"):
            out[col] = percent(v)
        elif col in ("roi", "incremental_roi"):
            out[col] = "–" if v is None else f"1:{v:,.2f}"
        elif v is None:
            out[col] = "–"
        elif isinstance(v, float):
            out[col] = f"{v:,.2f}"
        elif isinstance(v, int):
            out[col] = f"{v:,}"
        else:
            out[col] = str(v)
    return out


def to_csv(report: OutcomeReport) -> str:
    """One CSV row per line (group × variant × carrier, and each group's subtotal), then the total."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for line in [*report.lines, report.total]:
        w.writerow(["" if (v := getattr(line, c)) is None else v for c in COLUMNS])
    return buf.getvalue()


def to_json(report: OutcomeReport) -> str:
    """The whole report as indented JSON."""
    return msgspec.json.format(msgspec.json.encode(report)).decode() + "\n"
