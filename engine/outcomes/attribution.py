"""A campaign's outcomes per group × variant × carrier: funnel, buyers, revenue, ROI, lift over holdout.

The report joins three things the store holds — the campaign's ledger (every row's state, carrier,
billed parts and times), the imported orders (:mod:`engine.outcomes.order_store`) and the opt-outs —
with the campaign's segment, read again (deterministically, as a resume does) for each row's number
and group. Nothing per recipient is kept beyond a few arrays.

Definitions (docs/outcomes.md):

* **targets** — rows that passed every rule (not rejected, not suppressed for a reason other than
  the holdout): sent, failed, unknown, deferred or pending, and held out.
* **sent** — accepted by a gateway (``submitted``, ``delivered``, or failed by a receipt);
  **billed parts** and **cost** are theirs (parts × the carrier's ``price_per_part``).
* **touch** — when a sent recipient was reached: the delivery receipt's time, else the hand-over.
  A held-out recipient's *would-be* touch is when the holdout stage kept it back.
* **attribution** — an order counts for the campaign when paid within ``[touch, touch + window]``
  (``[outcomes] window``) and no other campaign of the store touched the same customer between the
  touch and the payment (last touch). Held-out recipients' orders are counted the same way: they
  are the baseline.
* **buyers** — sent recipients with at least one attributed order; **revenue** their orders'
  amounts; **AOV** revenue / orders; **ROI** revenue / cost (the merchants' "1:8").
* **lift** — conversion (buyers / recipients) of those sent minus that of those held out, with a
  95% interval for a difference of two independent proportions by Newcombe's hybrid score method
  (Wilson intervals of each side combined; :func:`lift_interval`). It needs both sides: ``None``
  when a side is empty. **incremental revenue** — (revenue per sent − revenue per held out) × sent;
  **incremental ROI** — that over the cost.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec
import numpy as np
import numpy.typing as npt

from engine.core import speedups
from engine.core.carriers import INTL, PrefixTable, default_prefix_table
from engine.core.config import LoadedCampaign, convert_section, load_campaign
from engine.core.errors import EngineError
from engine.core.messages import INTL_KEY_OFFSET, number_key
from engine.core.periods import parse_period
from engine.core.phone import parse_phone
from engine.core.plugin_host import PluginHost
from engine.core.variants import Split
from engine.outcomes.order_store import OrderStore, who_of_keys
from engine.pipeline.source import SourceContext
from engine.state.ledger.records import STATE_NAMES, RowOutcomes
from engine.state.ledger.store import Ledger
from engine.state.links import LinkStore, links_path

__all__ = [
    "ALL",
    "Z95",
    "GroupOutcome",
    "OutcomeReport",
    "OutcomesError",
    "TimePoint",
    "campaign_outcomes",
    "lift_interval",
    "wilson",
]

Z95: Final = 1.959963984540054
"""The two-sided 95% normal quantile."""
ALL: Final = "all"
"""The group of a segment without a group column, and the carrier of a group's subtotal row."""
NO_VARIANT: Final = "-"

_REPLIES: Final = "SELECT key, at FROM replies WHERE optout = 0 AND at BETWEEN ? AND ?"
"""MO replies that are not opt-outs (the ``replies`` column)."""
_CODE = {name: i for i, name in enumerate(STATE_NAMES)}
_SENT_STATES = (_CODE["submitted"], _CODE["delivered"])
_TARGET_STATES = tuple(
    _CODE[s] for s in ("submitted", "delivered", "failed", "unknown", "deferred", "pending", "submitting")
)


class OutcomesError(EngineError):
    """The outcomes report cannot be made (no campaign file to read the segment from…)."""


class GroupOutcome(msgspec.Struct, kw_only=True):
    """One line of the report: a group × variant × carrier (carrier ``all``: the group's subtotal)."""

    group: str
    variant: str
    carrier: str
    targets: int = 0
    sent: int = 0
    parts: int = 0
    cost: float = 0.0
    delivered: int = 0
    clicks: int = 0
    replies: int = 0
    opt_outs: int = 0
    buyers: int = 0
    orders: int = 0
    revenue: float = 0.0
    aov: float | None = None
    roi: float | None = None
    """Revenue / cost (None without a cost)."""
    conversion: float | None = None
    """Buyers / sent."""
    holdout: int = 0
    holdout_buyers: int = 0
    holdout_revenue: float = 0.0
    holdout_conversion: float | None = None
    lift: float | None = None
    """conversion − holdout_conversion."""
    lift_low: float | None = None
    lift_high: float | None = None
    incremental_buyers: float | None = None
    """lift × sent: buyers the campaign made, beyond those who would have bought anyway."""
    incremental_revenue: float | None = None
    """(revenue per sent − revenue per held out) × sent."""
    incremental_roi: float | None = None
    """Incremental revenue / cost."""


class TimePoint(msgspec.Struct, kw_only=True):
    """Messages handed over and delivered in one time bucket."""

    start: float
    """Bucket start, epoch seconds."""
    sent: int = 0
    delivered: int = 0


class OutcomeReport(msgspec.Struct, kw_only=True):
    """``pigeon report ID --outcomes`` and ``GET /v1/campaigns/{id}/outcomes``."""

    campaign: str
    name: str = ""
    currency: str = "CNY"
    window_seconds: float
    holdout_share: float
    group_field: str
    orders_in_window: int
    """Orders of the store paid in the span the campaign's touches could claim."""
    lines: list[GroupOutcome]
    """Group × variant × carrier, then each group's subtotal (carrier ``all``)."""
    groups: list[GroupOutcome]
    """One per group × variant (over carriers), biggest first."""
    total: GroupOutcome
    timeline: list[TimePoint]
    bucket_seconds: float
    generated_at: float
    timezone: str = "UTC"
    """The campaign's time zone (``policy.timezone``): the HTML page shows times in it."""
    method: str = (
        "last touch within the window after delivery (after the hand-over without a receipt); "
        "lift = conversion sent − conversion held out, 95% Newcombe (Wilson score) interval"
    )
    notes: list[str] = []


def wilson(b: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``b / n`` (``n`` > 0)."""
    p = b / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def lift_interval(b1: int, n1: int, b0: int, n0: int) -> tuple[float, float, float] | None:
    """Difference of conversion rates (treated ``b1/n1`` − holdout ``b0/n0``) and its 95% interval
    by Newcombe's hybrid score method (his method 10: from the two Wilson intervals); None when a
    side has nobody. Unlike the plain Wald interval it keeps its coverage with few buyers, and it
    is never zero-width when a side has none."""
    if n1 <= 0 or n0 <= 0:
        return None
    p1, p0 = b1 / n1, b0 / n0
    l1, u1 = wilson(b1, n1)
    l0, u0 = wilson(b0, n0)
    d = p1 - p0
    low = d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    return d, low, high


@dataclass
class _Segment:
    keys: npt.NDArray[np.int64]
    """Number key per row number (0: unreadable)."""
    group: npt.NDArray[np.int32]
    names: list[str]


def _read_segment(campaign: LoadedCampaign, size: int, host: PluginHost) -> _Segment:
    """Each row's number key and group, by row number (rows past ``size`` are not needed)."""
    seg = campaign.segment
    reg = host.sources.get(seg.source)
    options = convert_section(campaign.source_options, reg.config_type, file=campaign.file, path="segment")
    source = reg.factory(options, SourceContext(base_dir=campaign.base_dir))
    gfield = campaign.config.outcomes.group_field
    reader = source.open([seg.phone_field, gfield])
    keys = np.zeros(size, dtype=np.int64)
    group = np.zeros(size, dtype=np.int32)
    names: list[str] = [ALL]
    index: dict[str, int] = {ALL: 0}
    try:
        cols = list(reader.columns)
        pc = cols.index(seg.phone_field)
        gc = cols.index(gfield) if gfield in cols else -1
        for sb in reader.batches(50_000):
            if not sb.nums:
                continue
            nums = np.asarray(sb.nums, dtype=np.int64)
            inside = nums < size
            phones = [str(r[pc]) for r in sb.rows]
            ks, odd = speedups.phone_keys(phones)
            for i in odd:
                p = parse_phone(phones[i])
                ks[i] = number_key(p.national or p.e164) if p.reason is None else 0
            karr = np.asarray(ks, dtype=np.int64)
            keys[nums[inside]] = karr[inside]
            if gc >= 0:
                gi = np.empty(len(sb.rows), dtype=np.int32)
                for j, r in enumerate(sb.rows):
                    name = str(r[gc]).strip() or ALL
                    ix = index.get(name)
                    if ix is None:
                        ix = index[name] = len(names)
                        names.append(name)
                    gi[j] = ix
                group[nums[inside]] = gi[inside]
    finally:
        reader.close()
    return _Segment(keys, group, names)


def _touches(rows: RowOutcomes) -> npt.NDArray[np.float64]:
    """Per row: when the message reached the phone (the receipt's time, else the hand-over) for
    rows a gateway took (submitted, delivered, unknown); 0 for the others. A message a gateway
    refused, or a receipt said failed, touched nobody."""
    t = np.where(rows.delivered_at > 0, rows.delivered_at, rows.submitted_at)
    reached = np.isin(rows.state, [*_SENT_STATES, _CODE["unknown"]]) & (rows.submitted_at > 0)
    out: npt.NDArray[np.float64] = np.where(reached, t, 0.0)
    return out


def _variants(
    campaign: LoadedCampaign, keys: npt.NDArray[np.int64]
) -> tuple[list[str], npt.NDArray[np.intp]]:
    """The variant names and each row's: an A/B test's by its split (the same hash the send used,
    so held-out rows fall in their variant too), else the filed template's code or ``-`` for all."""
    t = campaign.config.template
    if t.variants:
        split = Split(campaign.id, [v.name for v in t.variants], [v.share for v in t.variants])
        return list(split.names), split.indices(keys.tolist())
    code = getattr(t.provider, "code", "") if t.provider is not None else ""
    return [str(code) if code else NO_VARIANT], np.zeros(keys.size, dtype=np.intp)


def _other_touches(
    ledger: Ledger,
    campaign_id: str,
    span: tuple[float, float],
    salt: str,
    host: PluginHost,
    notes: list[str],
) -> dict[int, list[float]]:
    """Customer (``who``) → touch times of every *other* campaign of the store active in ``span``."""
    out: dict[int, list[float]] = defaultdict(list)
    for rec in ledger.campaigns():
        if rec.id == campaign_id or rec.updated_at < span[0] or rec.created_at > span[1]:
            continue
        if not rec.campaign_file or not Path(rec.campaign_file).is_file():
            notes.append(
                f"campaign {rec.id} ran in the same span but its campaign file is gone: "
                "its touches are not in the last-touch comparison"
            )
            continue
        try:
            other = load_campaign(rec.campaign_file)
            rows = ledger.row_outcomes(rec.id)
            seg = _read_segment(other, rows.state.size, host)
        except EngineError as exc:
            notes.append(f"campaign {rec.id}: its segment could not be read ({exc}); left out of last touch")
            continue
        t = _touches(rows)
        hit = np.flatnonzero(t > 0)
        hit = hit[seg.keys[hit] != 0]
        for w, ts in zip(who_of_keys(seg.keys[hit], salt).tolist(), t[hit].tolist(), strict=True):
            out[w].append(ts)
    for v in out.values():
        v.sort()
    return out


def _attribute(
    who: npt.NDArray[np.int64],
    start: npt.NDArray[np.float64],
    window: float,
    orders: tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int64]],
    others: dict[int, list[float]],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Per recipient (``who``, window start): attributed orders and their cents."""
    n = who.size
    count = np.zeros(n, dtype=np.int64)
    cents = np.zeros(n, dtype=np.int64)
    o_who, o_ts, o_cents = orders
    if not n or not o_who.size:
        return count, cents
    order = np.argsort(who, kind="stable")
    sw = who[order]
    pos = np.searchsorted(sw, o_who)
    pos[pos >= n] = 0
    match = sw[pos] == o_who
    cand = np.flatnonzero(match)
    r = order[pos[cand]]
    t0 = start[r]
    ok = (o_ts[cand] >= t0) & (o_ts[cand] <= t0 + window)
    cand, r, t0 = cand[ok], r[ok], t0[ok]
    if others and cand.size:
        keep = np.ones(cand.size, dtype=np.bool_)
        for j, (w, a, paid) in enumerate(
            zip(o_who[cand].tolist(), t0.tolist(), o_ts[cand].tolist(), strict=True)
        ):
            later = others.get(w)
            if later and any(a < t <= paid for t in later):
                keep[j] = False
        cand, r = cand[keep], r[keep]
    np.add.at(count, r, 1)
    np.add.at(cents, r, o_cents[cand])
    return count, cents


def _optouts(
    store_db: Any,
    keys: npt.NDArray[np.int64],
    start: npt.NDArray[np.float64],
    window: float,
    query: str = "SELECT key, created_at FROM optouts WHERE created_at BETWEEN ? AND ?",
) -> npt.NDArray[np.bool_]:
    """Whether each recipient has a row of ``query`` (key, time) within ``[start, start + window]``:
    opted out, or (with :data:`_REPLIES`) replied."""
    out = np.zeros(keys.size, dtype=np.bool_)
    if not keys.size:
        return out
    try:
        found = store_db.execute(query, (float(start.min()), float(start.max()) + window)).fetchall()
    except sqlite3.Error:  # a store without the opt-out table has no opt-outs
        return out
    if not found:
        return out
    ok = np.array([k for k, _ in found], dtype=np.int64)
    ot = np.array([t for _, t in found], dtype=np.float64)
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    pos = np.searchsorted(sk, ok)
    pos[pos >= sk.size] = 0
    m = sk[pos] == ok
    r = order[pos[m]]
    inside = (ot[m] >= start[r]) & (ot[m] <= start[r] + window)
    out[r[inside]] = True
    return out


def _carrier_of(table: PrefixTable, key: int) -> str:
    if key >= INTL_KEY_OFFSET:
        return INTL
    info = table.route.get(str(key)[:5])
    return info or "?"


def campaign_outcomes(
    ledger: Ledger,
    campaign_id: str,
    *,
    prices: dict[str, float],
    currency: str = "CNY",
    host: PluginHost | None = None,
    now: float | None = None,
) -> OutcomeReport:
    """The outcomes report of a campaign of ``ledger``'s store (see the module's docstring).

    Clicks come from the redirector's links file beside the store: a recipient's own code counts
    the recipient once (clicks = recipients who clicked); a group's link counts its visitors, on
    the group's subtotal line only (a group link does not say who clicked, nor their carrier).
    """
    rec = ledger.campaign(campaign_id)
    if rec is None:
        raise OutcomesError(f"no campaign {campaign_id!r} in {ledger.path}")
    if not rec.campaign_file or not Path(rec.campaign_file).is_file():
        raise OutcomesError(
            f"campaign {campaign_id!r}: its campaign file {rec.campaign_file or '(none recorded)'} is "
            "gone; the outcomes report reads the segment again for each row's number and group"
        )
    host = host or PluginHost()
    campaign = load_campaign(rec.campaign_file)
    oc = campaign.config.outcomes
    window = float(parse_period(oc.window) or 0.0)
    rows = ledger.row_outcomes(campaign_id)
    size = rows.state.size
    seg = _read_segment(campaign, size, host)
    notes: list[str] = []

    state = rows.state
    reason = np.asarray(rows.reason)
    held_label = rows.labels.index("held_out") if "held_out" in rows.labels else -1
    held = rows.seen & (state == _CODE["suppressed"]) & (reason == held_label)
    dlr_failed_labels = [i for i, label in enumerate(rows.labels) if label.startswith("dlr:")]
    sent = rows.seen & (
        np.isin(state, _SENT_STATES) | ((state == _CODE["failed"]) & np.isin(reason, dlr_failed_labels))
    )
    targets = rows.seen & (np.isin(state, _TARGET_STATES) | held)
    delivered = rows.seen & (state == _CODE["delivered"])
    # a sent row's window opens at its receipt (else its hand-over) — a receipt saying failed too:
    # the campaign is judged on everyone it paid for
    touch = np.where(rows.delivered_at > 0, rows.delivered_at, rows.submitted_at)
    start = np.where(held, rows.decided_at, np.where(sent, touch, 0.0))
    counted = (sent | held) & (seg.keys != 0) & (start > 0)

    # carriers: the ledger's for rows handed over, the prefix table's for the rest
    table = default_prefix_table()
    carrier_names = list(rows.carriers)
    carrier = np.asarray(rows.carrier, dtype=np.int32).copy()
    cix = {c: i for i, c in enumerate(carrier_names)}
    for i in np.flatnonzero(targets & (carrier == 0)).tolist():
        name = _carrier_of(table, int(seg.keys[i]))
        if name not in cix:
            cix[name] = len(carrier_names)
            carrier_names.append(name)
        carrier[i] = cix[name]

    idx = np.flatnonzero(counted)
    salt = ""
    orders_in_window = 0
    o_count = np.zeros(size, dtype=np.int64)
    o_cents = np.zeros(size, dtype=np.int64)
    opted = np.zeros(size, dtype=np.bool_)
    replied = np.zeros(size, dtype=np.bool_)
    store = OrderStore(ledger.path)
    try:
        salt = store.salt() or ""
        if store.salt() is None:
            notes.append("no orders imported yet: `pigeon orders import FILE` (buyers and revenue are 0)")
        if idx.size:
            span = (float(start[idx].min()), float(start[idx].max()) + window)
            orders = store.between(*span)
            orders_in_window = int(orders[0].size)
            who = who_of_keys(seg.keys[idx], salt)
            others = _other_touches(ledger, campaign_id, span, salt, host, notes) if orders_in_window else {}
            c, cents = _attribute(who, start[idx], window, orders, others)
            o_count[idx], o_cents[idx] = c, cents
            opted[idx] = _optouts(ledger.db, seg.keys[idx], start[idx], window)
            replied[idx] = _optouts(ledger.db, seg.keys[idx], start[idx], window, _REPLIES)
    finally:
        store.close()
    click_rows: dict[int, int] = {}
    group_clicks: dict[str, int] = {}
    lpath = links_path(ledger.path)
    if lpath.exists():
        links = LinkStore(lpath)
        try:
            click_rows, group_clicks = links.clicks(campaign_id)
        finally:
            links.close()
    clicked = np.zeros(size, dtype=np.int64)
    for r, n in click_rows.items():
        if 0 <= r < size:
            clicked[r] = n

    variant_names, row_variant = _variants(campaign, seg.keys)
    lines: dict[tuple[int, int, int], GroupOutcome] = {}
    subtotal: dict[tuple[int, int], GroupOutcome] = {}
    interesting = np.flatnonzero(targets | sent)
    g_arr, v_arr, c_arr = seg.group[interesting], row_variant[interesting], carrier[interesting]
    for gi, vi, ci in sorted(set(zip(g_arr.tolist(), v_arr.tolist(), c_arr.tolist(), strict=True))):
        sel = interesting[(g_arr == gi) & (v_arr == vi) & (c_arr == ci)]
        cname = carrier_names[ci] or "?"
        line = _line(
            seg.names[gi],
            variant_names[vi],
            cname,
            sel,
            targets,
            sent,
            held,
            delivered,
            rows,
            o_count,
            o_cents,
            opted,
            replied,
            clicked,
            prices.get(cname, 0.0),
        )
        lines[gi, vi, ci] = line
    for gi, vi in sorted({(g, v) for g, v, _ in lines}):
        parts = [line for (g, v, _), line in lines.items() if (g, v) == (gi, vi)]
        subtotal[gi, vi] = _sum(seg.names[gi], variant_names[vi], ALL, parts)
        if len(variant_names) == 1:  # (a group link's clicks are the group's: not split by variant)
            subtotal[gi, vi].clicks += group_clicks.get(seg.names[gi], 0)
    total = _sum(ALL, variant_names[0] if len(variant_names) == 1 else ALL, ALL, list(lines.values()))
    total.clicks += sum(group_clicks.get(seg.names[g], 0) for g in {g for g, _ in subtotal})

    def biggest(key: tuple[int, int]) -> tuple[int, str, str]:
        return (-subtotal[key].targets, seg.names[key[0]], variant_names[key[1]])

    ordered_lines = []
    for key in sorted(subtotal, key=biggest):
        ordered_lines += sorted(
            (v for (g, vv, _), v in lines.items() if (g, vv) == key), key=lambda x: x.carrier
        )
        ordered_lines.append(subtotal[key])
    timeline, bucket = _timeline(rows, sent)
    return OutcomeReport(
        campaign=campaign_id,
        name=campaign.config.name,
        currency=currency,
        window_seconds=window,
        holdout_share=oc.holdout,
        group_field=oc.group_field,
        orders_in_window=orders_in_window,
        lines=ordered_lines,
        groups=[subtotal[key] for key in sorted(subtotal, key=biggest)],
        total=total,
        timeline=timeline,
        bucket_seconds=bucket,
        generated_at=now if now is not None else time.time(),
        timezone=campaign.config.policy.timezone,
        notes=notes,
    )


def _line(
    group: str,
    variant: str,
    carrier: str,
    sel: npt.NDArray[np.int64],
    targets: npt.NDArray[np.bool_],
    sent: npt.NDArray[np.bool_],
    held: npt.NDArray[np.bool_],
    delivered: npt.NDArray[np.bool_],
    rows: RowOutcomes,
    o_count: npt.NDArray[np.int64],
    o_cents: npt.NDArray[np.int64],
    opted: npt.NDArray[np.bool_],
    replied: npt.NDArray[np.bool_],
    clicked: npt.NDArray[np.int64],
    price: float,
) -> GroupOutcome:
    s = sel[sent[sel]]
    h = sel[held[sel]]
    parts = int(np.asarray(rows.parts)[s].sum())
    line = GroupOutcome(
        group=group,
        variant=variant,
        carrier=carrier,
        targets=int(np.count_nonzero(targets[sel])),
        sent=int(s.size),
        parts=parts,
        cost=round(parts * price, 4),
        delivered=int(np.count_nonzero(delivered[sel])),
        clicks=int(np.count_nonzero(clicked[s])),
        replies=int(np.count_nonzero(replied[s])),
        opt_outs=int(np.count_nonzero(opted[s])),
        buyers=int(np.count_nonzero(o_count[s])),
        orders=int(o_count[s].sum()),
        revenue=int(o_cents[s].sum()) / 100,
        holdout=int(h.size),
        holdout_buyers=int(np.count_nonzero(o_count[h])),
        holdout_revenue=int(o_cents[h].sum()) / 100,
    )
    return _finish(line)


def _finish(line: GroupOutcome) -> GroupOutcome:
    line.revenue = round(line.revenue, 2)
    line.holdout_revenue = round(line.holdout_revenue, 2)
    line.cost = round(line.cost, 4)
    line.aov = round(line.revenue / line.orders, 2) if line.orders else None
    line.roi = round(line.revenue / line.cost, 2) if line.cost > 0 else None
    line.conversion = round(line.buyers / line.sent, 6) if line.sent else None
    line.holdout_conversion = round(line.holdout_buyers / line.holdout, 6) if line.holdout else None
    li = lift_interval(line.buyers, line.sent, line.holdout_buyers, line.holdout)
    if li is not None:
        line.lift, line.lift_low, line.lift_high = (round(v, 6) for v in li)
        line.incremental_buyers = round(li[0] * line.sent, 1)
        inc = (line.revenue / line.sent - line.holdout_revenue / line.holdout) * line.sent
        line.incremental_revenue = round(inc, 2)
        line.incremental_roi = round(inc / line.cost, 2) if line.cost > 0 else None
    return line


def _sum(group: str, variant: str, carrier: str, parts: list[GroupOutcome]) -> GroupOutcome:
    out = GroupOutcome(group=group, variant=variant, carrier=carrier)
    for p in parts:
        for f in (
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
            "holdout",
            "holdout_buyers",
            "holdout_revenue",
        ):
            setattr(out, f, getattr(out, f) + getattr(p, f))
    return _finish(out)


def _timeline(rows: RowOutcomes, sent: npt.NDArray[np.bool_]) -> tuple[list[TimePoint], float]:
    """Hand-overs and deliveries per bucket (an hour, or wider to keep ≤ 96 buckets)."""
    sub = np.asarray(rows.submitted_at)[sent]
    dl = np.asarray(rows.delivered_at)
    dl = dl[dl > 0]
    if not sub.size:
        return [], 3600.0
    lo = float(min(sub.min(), dl.min() if dl.size else sub.min()))
    hi = float(max(sub.max(), dl.max() if dl.size else sub.max()))
    bucket = 60.0
    for b in (60.0, 300.0, 900.0, 3600.0, 3 * 3600.0, 6 * 3600.0, 86400.0):
        bucket = b
        if (hi - lo) / b <= 96:
            break
    base = math.floor(lo / bucket) * bucket
    n = int((hi - base) // bucket) + 1
    s_counts = np.bincount(((sub - base) // bucket).astype(np.int64), minlength=n)
    d_counts = (
        np.bincount(((dl - base) // bucket).astype(np.int64), minlength=n)
        if dl.size
        else np.zeros(n, np.int64)
    )
    return [
        TimePoint(start=base + i * bucket, sent=int(s_counts[i]), delivered=int(d_counts[i]))
        for i in range(n)
    ], bucket
