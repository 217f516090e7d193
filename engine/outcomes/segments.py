"""Segment files from an RFM table: customers grouped, big groups split, one CSV per (sub-)group.

Each file is a segment ``pigeon send`` reads as it is (``[segment] source = "csv"``; UTF-8 with a
byte-order mark, so Excel and WPS show the Chinese right, and Excel's CRLF line ends): the phone
(the 11-digit national number, or E.164 abroad) and the RFM fields a template can use —
``{rfm_class_zh}``, ``{orders}``, ``{spent}``, ``{last_order}``, ``{recency_days}``… (see
:data:`FIELDS`). A group over ``max_size`` customers is split into the fewest sub-groups of at
most that size, near-equal, cut from the group in the order of a fixed hash of each number — so sub-groups are
alike (each can get its own copy, or go out on its own day), and the same export always splits
the same way. Within a file, the biggest spenders come first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec
import numpy as np
import numpy.typing as npt

from engine.core.messages import INTL_KEY_OFFSET
from engine.outcomes.rfm import CLASSES, F_STAGES, R_STAGES, RfmTable

__all__ = [
    "FIELDS",
    "GROUP_BY",
    "FileSummary",
    "GroupSummary",
    "Grouping",
    "group_customers",
    "phone_of",
    "write_segments",
]

GROUP_BY: Final = ("class", "stage", "r_stage", "f_stage")
"""How customers can be grouped: by RFM class (9 groups with *potential*), by life stage F × R
(``new-active``… 16 groups), or by one of the two stages alone."""
FIELDS: Final = (
    "phone",
    "group",
    "rfm_class",
    "rfm_class_zh",
    "r_stage",
    "r_stage_zh",
    "f_stage",
    "f_stage_zh",
    "recency_days",
    "orders",
    "spent",
    "avg_order",
    "first_order",
    "last_order",
    "r_score",
    "f_score",
    "m_score",
    "rfm",
)
"""The columns of every segment file, in order."""
_WRITE_ROWS: Final = 50_000
"""Rows formatted at a time: the strings of one slice live at once, never a whole group's."""


class FileSummary(msgspec.Struct, frozen=True):
    """One segment file written."""

    group: str
    """The (sub-)group: the group's name, with ``-1``, ``-2``… when it was split."""
    file: str
    """Its name in the output directory."""
    customers: int
    orders: int
    """Their paid orders, all time."""
    revenue: float
    """What they paid, all time, in yuan."""


class GroupSummary(msgspec.Struct, frozen=True):
    """One group: who is in it, what they bought, and its files."""

    name: str
    zh: str
    customers: int
    orders: int
    """Paid orders of its customers, all time (F summed)."""
    revenue: float
    """What they paid, all time (M summed), in yuan."""
    avg_order_value: float
    """Revenue per paid order (0 without orders)."""
    avg_recency_days: float
    files: list[FileSummary]


@dataclass
class Grouping:
    """Each customer's group and sub-group, and the groups' names."""

    group: npt.NDArray[np.int64]
    """Group index per customer (into :attr:`names`)."""
    part: npt.NDArray[np.int64]
    """Sub-group per customer, 0-based (0 when the group is not split)."""
    parts: dict[int, int]
    """Group index → its number of sub-groups (1: not split), for the groups with customers."""
    names: list[str]
    zh: list[str]

    def label(self, group: int, part: int) -> str:
        """``important_value`` or, for a split group, ``important_value-2`` (1-based)."""
        name = self.names[group]
        return name if self.parts[group] == 1 else f"{name}-{part + 1}"


def _mix(keys: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
    """splitmix64 of each key: a fixed pseudo-random order, the same on every run and machine."""
    z = keys.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    out: npt.NDArray[np.uint64] = z ^ (z >> np.uint64(31))
    return out


def group_customers(table: RfmTable, by: str, max_size: int) -> Grouping:
    """Group every customer ``by`` one of :data:`GROUP_BY`, and split groups over ``max_size``
    (0: never split)."""
    if by == "class":
        ids = table.klass.astype(np.int64)
        names, zh = [c.slug for c in CLASSES], [c.zh for c in CLASSES]
    elif by == "stage":
        ids = table.f_stage.astype(np.int64) * len(R_STAGES) + table.r_stage
        names = [f"{f.slug}-{r.slug}" for f in F_STAGES for r in R_STAGES]
        zh = [f"{f.zh}·{r.zh}" for f in F_STAGES for r in R_STAGES]
    elif by == "r_stage":
        ids = table.r_stage.astype(np.int64)
        names, zh = [s.slug for s in R_STAGES], [s.zh for s in R_STAGES]
    elif by == "f_stage":
        ids = table.f_stage.astype(np.int64)
        names, zh = [s.slug for s in F_STAGES], [s.zh for s in F_STAGES]
    else:
        raise ValueError(f"group by one of {', '.join(GROUP_BY)}, not {by!r}")
    counts = np.bincount(ids, minlength=len(names))
    parts = {g: (max(1, -(-int(c) // max_size)) if max_size else 1) for g, c in enumerate(counts) if c}
    part = np.zeros(len(ids), dtype=np.int64)
    if any(p > 1 for p in parts.values()):
        order = np.lexsort((_mix(table.totals.keys), ids))  # by group, then by hash
        start = 0
        for g, c in enumerate(counts.tolist()):
            if c and parts[g] > 1:
                rank = np.arange(c, dtype=np.int64)
                part[order[start : start + c]] = rank * parts[g] // c
            start += c
    return Grouping(ids, part, parts, names, zh)


def phone_of(keys: npt.NDArray[np.int64]) -> list[str]:
    """The number of each key as a segment holds it: 11 digits in China, else ``+`` E.164."""
    return [str(k) if k < INTL_KEY_OFFSET else f"+{k - INTL_KEY_OFFSET}" for k in keys.tolist()]


def _dates(seconds: npt.NDArray[np.int64], has: npt.NDArray[np.bool_]) -> list[str]:
    """``YYYY-MM-DD`` of each time, ``""`` where ``has`` is False: each distinct day formatted once
    (a shop's orders span a few thousand days, its customers are millions)."""
    days = np.where(has, seconds // 86_400, 0)
    distinct, where = np.unique(days, return_inverse=True)
    text = distinct.astype("datetime64[D]").astype(str).astype(object)
    text[distinct == 0] = ""  # no paid order (1970-01-01 is never an order day: times start in 1990)
    out: list[str] = text[where].tolist()
    return out


def _lines(table: RfmTable, idx: npt.NDArray[np.int64], label: str) -> str:
    """The segment lines (CSV, CRLF) of the customers at ``idx``: one file's slice.

    No field can hold a comma, a quote or a line end, so lines are joined as they are. The class
    and stage fields come from a table of every combination (9 × 4 × 4 strings), the scores'
    ``rfm`` from the three digits: one format per customer."""
    t = table.totals
    orders = t.orders[idx]
    cents = t.cents[idx]
    buyer = orders > 0
    avg = np.where(buyer, cents // np.maximum(orders, 1), -1)
    middle = [
        f"{label},{c.slug},{c.zh},{r.slug},{r.zh},{f.slug},{f.zh}"
        for c in CLASSES
        for r in R_STAGES
        for f in F_STAGES
    ]
    combo = (table.klass[idx].astype(np.int64) * len(R_STAGES) + table.r_stage[idx]) * len(
        F_STAGES
    ) + table.f_stage[idx]
    score_text = [f"{r},{f},{m},{r}{f}{m}" for r in range(11) for f in range(11) for m in range(11)]
    score_index = (table.r_score[idx].astype(np.int64) * 11 + table.f_score[idx]) * 11 + table.m_score[idx]
    return "".join(
        [
            f"{p},{middle[k]},{d},{o},{c // 100}.{c % 100:02d},"
            f"{'' if a < 0 else f'{a // 100}.{a % 100:02d}'},{fo},{lo},{score_text[s]}\r\n"
            for p, k, d, o, c, a, fo, lo, s in zip(
                phone_of(t.keys[idx]),
                combo.tolist(),
                table.recency[idx].tolist(),
                orders.tolist(),
                cents.tolist(),
                avg.tolist(),
                _dates(t.first[idx], buyer),
                _dates(t.last[idx], buyer),
                score_index.tolist(),
                strict=True,
            )
        ]
    )


def write_segments(table: RfmTable, grouping: Grouping, out_dir: Path) -> list[GroupSummary]:
    """Write one CSV per (sub-)group into ``out_dir``; returns the groups in their natural order
    (the classes' order, or F stage then R stage), each with its files."""
    t = table.totals
    order = np.lexsort((t.keys, -t.cents, grouping.part, grouping.group))
    g_sorted = grouping.group[order]
    p_sorted = grouping.part[order]
    bounds = np.flatnonzero(
        np.concatenate(([True], (g_sorted[1:] != g_sorted[:-1]) | (p_sorted[1:] != p_sorted[:-1]), [True]))
    )
    files: dict[int, list[FileSummary]] = {}
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        g, p = int(g_sorted[a]), int(p_sorted[a])
        label = grouping.label(g, p)
        name = f"{label}.csv"
        with (out_dir / name).open("w", newline="", encoding="utf-8-sig") as fh:
            fh.write(",".join(FIELDS) + "\r\n")
            for start in range(a, b, _WRITE_ROWS):
                fh.write(_lines(table, order[start : min(b, start + _WRITE_ROWS)], label))
        idx = order[a:b]
        files.setdefault(g, []).append(
            FileSummary(label, name, b - a, int(t.orders[idx].sum()), int(t.cents[idx].sum()) / 100)
        )
    out = []
    for g in sorted(files):
        members = grouping.group == g
        n = int(members.sum())
        orders = int(t.orders[members].sum())
        revenue = int(t.cents[members].sum()) / 100
        out.append(
            GroupSummary(
                name=grouping.names[g],
                zh=grouping.zh[g],
                customers=n,
                orders=orders,
                revenue=revenue,
                avg_order_value=round(revenue / orders, 2) if orders else 0.0,
                avg_recency_days=round(float(table.recency[members].mean()), 1),
                files=files[g],
            )
        )
    return out
