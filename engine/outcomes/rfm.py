"""RFM scores, the eight RFM classes and the life-stage groups of each customer, from their order totals.

The rules (docs/segments.md says the same for merchants):

* **R** (recency) is the number of days from the customer's last paid order to the *as-of* day
  (by default the day of the latest order in the export), in calendar days of the shop's time
  zone; **F** (frequency) is the number of paid orders; **M** (monetary) the sum of their amounts.
* **Scores**, 1 (worst) to N (best), per dimension. By default from **quantiles** of the customers'
  values (N = 5): the cut points are the values at sorted positions ``k·(n−1)//N``
  (k = 1…N−1) of the n customers' values, and a customer scores one more for every cut point
  their value is better than (R: fewer days than; F, M: more than) — so equal values always get
  equal scores, and a long tail of one-order customers all score 1 on F. Or from the merchant's
  **thresholds**: R as "within D days" (``--r-days 30,90,180,365``: 5 within 30 days, 4 within
  90…, 1 beyond 365), F and M as "at least" (``--f-orders 2,3,5,10``: 1 below 2 orders, 2 from 2…;
  ``--m-amount 100,300,1000,3000`` in yuan). A dimension with thresholds has as many scores as its
  thresholds plus one. Both kinds are reported as the same cut points (R: upper bounds in days;
  F: lower bounds in orders; M: lower bounds in cents).
* **High or low**: a score above the mean of that dimension's scores over all buyers is *high*.
* **The eight classes** (the seed's 八类客户, with the textbook names beside them): by R, F, M
  high (↑) or low (↓) — important value ↑↑↑, important recall ↓↑↑, important develop ↑↓↑,
  important retain ↓↓↑, promising ↑↑↓, newcomer ↑↓↓, general maintain ↓↑↓, churned ↓↓↓.
  A customer with no paid order (only unpaid or closed orders, when a status column says so)
  has no scores (0) and the class *potential*.
* **Life stages**: by R — active (within 90 days), using (within 180), dormant (within 365), lost
  (beyond); by F — potential (no paid order), new (1), old (2–4), fan (5 or more). Both sets of
  bounds can be changed (``--stages-r``, ``--stages-f``). A customer without a paid order is staged
  by R from their last order of any status.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

from engine.core.errors import ConfigError
from engine.outcomes.orders import DAY
from engine.outcomes.totals import Totals

__all__ = [
    "CLASSES",
    "F_STAGES",
    "POTENTIAL",
    "R_STAGES",
    "DimensionScore",
    "RfmClass",
    "RfmTable",
    "Scoring",
    "Stage",
    "quantile_cuts",
    "score_customers",
]

Int64Array = npt.NDArray[np.int64]
Int8Array = npt.NDArray[np.int8]


class RfmClass(NamedTuple):
    """One of the eight RFM classes (or *potential*)."""

    slug: str
    """The name in files and templates (``important_value``)."""
    zh: str
    """The seed's Chinese name (``重要价值客户``)."""
    textbook: str
    """The name most Chinese RFM tables use for the same cell (``重要价值客户``, ``重要保持客户``…)."""
    high: tuple[bool, bool, bool] | None
    """R, F, M high (True) or low; None for *potential*."""
    advice: str
    """What the seed says to do with them."""


CLASSES: Final = (
    RfmClass("important_value", "重要价值客户", "重要价值客户", (True, True, True), "优质客户，需要保持"),
    RfmClass("important_recall", "重要唤回客户", "重要保持客户", (False, True, True), "最近无交易，需要唤回"),
    RfmClass(
        "important_develop", "重要深耕客户", "重要发展客户", (True, False, True), "贡献度高，需要重点识别"
    ),
    RfmClass(
        "important_retain", "重要挽留客户", "重要挽留客户", (False, False, True), "潜在的有价值客户，需要挽留"
    ),
    RfmClass(
        "promising", "潜力客户", "一般价值客户", (True, True, False), "交易次数大且最近有交易，需要挖掘"
    ),
    RfmClass("newcomer", "新客户", "一般发展客户", (True, False, False), "接触的新客户，有推广价值"),
    RfmClass("general_maintain", "一般维持客户", "一般保持客户", (False, True, False), "贡献不大，一般维持"),
    RfmClass("churned", "流失客户", "一般挽留客户", (False, False, False), "FM均低于平均，最近也无交易"),
    RfmClass("potential", "潜在客户", "潜在客户", None, "有订单但未付款：催付、首单礼"),
)
"""The classes in the seed's order (value first); the last, *potential*, is for customers without
a paid order."""
POTENTIAL: Final = len(CLASSES) - 1
"""The index of *potential* in :data:`CLASSES`."""
_CLASS_OF_CODE: Final = np.zeros(8, dtype=np.int8)
for _i, _c in enumerate(CLASSES[:POTENTIAL]):
    assert _c.high is not None
    _CLASS_OF_CODE[_c.high[0] * 4 + _c.high[1] * 2 + _c.high[2]] = _i


class Stage(NamedTuple):
    """A life-stage group."""

    slug: str
    zh: str


R_STAGES: Final = (
    Stage("active", "活跃期"),
    Stage("using", "使用期"),
    Stage("dormant", "休眠期"),
    Stage("lost", "流失期"),
)
"""Life stages by recency, most recent first."""
F_STAGES: Final = (
    Stage("potential", "潜在客户"),
    Stage("new", "新客户"),
    Stage("old", "老客户"),
    Stage("fan", "粉丝客户"),
)
"""Life stages by frequency: no paid order, one, a few, many."""


@dataclass(frozen=True)
class Scoring:
    """How R, F and M are scored and the life stages bounded (see the module's docstring)."""

    scores: int = 5
    """Scores per dimension in quantile mode (2–10)."""
    r_days: tuple[int, ...] | None = None
    """Merchant thresholds for R: "within D days", ascending; None for quantiles."""
    f_orders: tuple[int, ...] | None = None
    """Merchant thresholds for F: "at least N orders", ascending; None for quantiles."""
    m_cents: tuple[int, ...] | None = None
    """Merchant thresholds for M: "at least this many cents", ascending; None for quantiles."""
    stages_r: tuple[int, int, int] = (90, 180, 365)
    """Last day of *active*, *using* and *dormant* (days since the last paid order)."""
    stages_f: tuple[int, int] = (2, 5)
    """First order count of *old* and of *fan* (one paid order is *new*)."""

    def __post_init__(self) -> None:
        if not 2 <= self.scores <= 10:
            raise ConfigError("command line", "--scores", "between 2 and 10 scores per dimension")
        for flag, cuts, low in (
            ("--r-days", self.r_days, 0),
            ("--f-orders", self.f_orders, 1),
            ("--m-amount", self.m_cents, 0),
            ("--stages-r", self.stages_r, 0),
            ("--stages-f", self.stages_f, 2),
        ):
            if cuts is None:
                continue
            if not cuts or any(b <= a for a, b in itertools.pairwise(cuts)) or cuts[0] < low:
                raise ConfigError(
                    "command line", flag, f"cut points must rise from {low} or more: got {list(cuts)}"
                )
            if len(cuts) > 9:
                raise ConfigError("command line", flag, "at most 9 cut points (10 scores)")
        if len(self.stages_r) != 3 or len(self.stages_f) != 2:
            raise ConfigError("command line", "--stages-r/--stages-f", "three R bounds and two F bounds")


@dataclass(frozen=True)
class DimensionScore:
    """How one dimension was scored."""

    mode: str
    """``quantile`` or ``thresholds``."""
    cuts: tuple[int, ...]
    """R: "within D days" bounds (score N for the first, …); F: at least this many orders; M: at
    least this many cents — score 1 below the first, one more from each."""
    scores: int
    """How many scores (cut points + 1)."""
    mean: float
    """The mean score over the buyers: above it is *high*."""


@dataclass
class RfmTable:
    """Every customer's recency, scores, class and stages, aligned with its :class:`Totals`."""

    totals: Totals
    as_of_day: int
    """Recency is counted from this day (days since 1970-01-01)."""
    recency: Int64Array
    """Days since the last paid order (without one: since the last order of any status)."""
    r_score: Int8Array
    f_score: Int8Array
    m_score: Int8Array
    """Scores 1…N; 0 for customers without a paid order."""
    klass: Int8Array
    """Index in :data:`CLASSES`."""
    r_stage: Int8Array
    """Index in :data:`R_STAGES`."""
    f_stage: Int8Array
    """Index in :data:`F_STAGES`."""
    dims: dict[str, DimensionScore]
    """``R``, ``F``, ``M`` → how it was scored (empty when nobody paid)."""

    def __len__(self) -> int:
        return len(self.totals)


def quantile_cuts(values: Int64Array, scores: int) -> tuple[int, ...]:
    """The values at sorted positions ``k·(n−1)//scores`` for k = 1…scores−1 (integer arithmetic,
    so the cut points are values the customers have, reproducible anywhere)."""
    n = len(values)
    idx = [(k * (n - 1)) // scores for k in range(1, scores)]
    part = np.partition(values, idx)
    return tuple(int(v) for v in part[idx])


def score_customers(totals: Totals, scoring: Scoring, as_of_day: int | None = None) -> RfmTable:
    """Score and class every customer of ``totals`` (see the module's docstring); ``as_of_day``
    None counts recency from the day of the latest order."""
    buyers = totals.orders > 0
    last_day = np.floor_divide(np.where(buyers, totals.last, totals.seen), DAY)
    if as_of_day is None:
        as_of_day = int(last_day.max()) if len(last_day) else 0
    recency = (as_of_day - last_day).astype(np.int64)
    n = len(totals)
    r_score = np.zeros(n, dtype=np.int8)
    f_score = np.zeros(n, dtype=np.int8)
    m_score = np.zeros(n, dtype=np.int8)
    klass = np.full(n, POTENTIAL, dtype=np.int8)
    dims: dict[str, DimensionScore] = {}
    if buyers.any():
        r_vals, f_vals, m_vals = recency[buyers], totals.orders[buyers], totals.cents[buyers]
        # R: "within D days" upper bounds; quantile cut q scores higher for days ≤ q.
        r_cuts, r_mode = _cuts(r_vals, scoring.r_days, scoring.scores, lower=False)
        r_n = len(r_cuts) + 1
        r = (r_n - np.searchsorted(np.array(r_cuts, dtype=np.int64), r_vals, side="left")).astype(np.int8)
        # F, M: "at least" lower bounds; a quantile cut q is the lower bound q + 1 (integers).
        f_cuts, f_mode = _cuts(f_vals, scoring.f_orders, scoring.scores, lower=True)
        m_cuts, m_mode = _cuts(m_vals, scoring.m_cents, scoring.scores, lower=True)
        f = (1 + np.searchsorted(np.array(f_cuts, dtype=np.int64), f_vals, side="right")).astype(np.int8)
        m = (1 + np.searchsorted(np.array(m_cuts, dtype=np.int64), m_vals, side="right")).astype(np.int8)
        means = [float(x.mean()) for x in (r, f, m)]
        code = (r > means[0]) * 4 + (f > means[1]) * 2 + (m > means[2]) * 1
        r_score[buyers], f_score[buyers], m_score[buyers] = r, f, m
        klass[buyers] = _CLASS_OF_CODE[code]
        for name, cuts, mode, mean in (
            ("R", r_cuts, r_mode, means[0]),
            ("F", f_cuts, f_mode, means[1]),
            ("M", m_cuts, m_mode, means[2]),
        ):
            dims[name] = DimensionScore(mode, cuts, len(cuts) + 1, mean)
    r_stage = np.searchsorted(np.array(scoring.stages_r, dtype=np.int64), recency, side="left").astype(
        np.int8
    )
    f_stage = np.where(
        buyers,
        1 + np.searchsorted(np.array(scoring.stages_f, dtype=np.int64), totals.orders, side="right"),
        0,
    ).astype(np.int8)
    return RfmTable(totals, as_of_day, recency, r_score, f_score, m_score, klass, r_stage, f_stage, dims)


def _cuts(
    values: Int64Array, thresholds: tuple[int, ...] | None, scores: int, *, lower: bool
) -> tuple[tuple[int, ...], str]:
    if thresholds is not None:
        return thresholds, "thresholds"
    q = quantile_cuts(values, scores)
    return (tuple(v + 1 for v in q) if lower else q), "quantile"
