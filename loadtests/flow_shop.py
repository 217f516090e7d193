"""A simulated shop's events through the flows of ``pigeon serve``: steps once, in time, none after a cancel.

The model the flows' integration test runs on a small shop (``tests/integration/test_flows_service.py``,
150 orders on both event loops) and this load test runs on a large one. Orders over a day, each paid
(or not), shipped, delivered and received at realistic delays; four flows (unpaid reminders ×2,
shipped, please-confirm, a marketing review request under a one-a-day cap). Time is compressed: the
service runs on a clock the walk moves forward (real time flows too), always to the next moment
something happens — the next event or the next due step — so a step's lateness is what the service
adds (its poll interval and a batch), not the walk's stride. :func:`check` then proves, message by
message against the gateway simulator's log: each step's message reached the gateway once and
nothing else did; no step fired after its cancel event; each fired within the tolerance of its due
time; review requests only 08:00–21:00 Shanghai time and never two a day to one number, a capped one
held to a later day, not dropped.

    python -m loadtests.flow_shop --orders 100000 --json loadtests/results-flow-shop.json

prints events posted per second, steps fired, their lateness (p50, p99, max), the walk's wall time
and the service's resident memory, on asyncio+uvloop (the service's default loop).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import httpx

from engine.core.phone import mask
from engine.service.core import Service
from engine.service.records import MessageView
from engine.state.flowstore import SqliteFlowStore
from loadtests._report import emit
from loadtests._service import SECRET, serving, write_engine
from loadtests.simulator import SimConfig, SimulatorThread

__all__ = [
    "EXTRA",
    "FLOWS",
    "TOLERANCE",
    "Ev",
    "ShopClock",
    "ShopRun",
    "caught_up",
    "check",
    "post_events",
    "run_shop",
    "shop",
]

SH = ZoneInfo("Asia/Shanghai")
TOLERANCE = 5.0
"""Seconds (of the service's clock) a step may fire after its due time: the runner's poll (0.05 s
here), a batch through the lanes, and the walk's own polling, on a shared machine."""


class ShopClock:
    """Real time plus an offset the walk moves forward (never back)."""

    def __init__(self, start: float) -> None:
        self._start, self._t0, self.offset = start, time.monotonic(), 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def time(self) -> float:
        return self._start + (time.monotonic() - self._t0) + self.offset

    def jump_to(self, t: float) -> None:
        now = self.time()
        if t > now:
            self.offset += t - now


FLOWS = {  # the seed's flows, as the shop exercises them
    "unpaid": """
trigger = "order_created"
cancel_on = ["order_paid", "order_closed"]
[[steps]]
name = "unpaid_1"
wait = "30m"
text = "{name|亲}，您拍的{item}还没付款哦"
[[steps]]
name = "unpaid_2"
wait = "22h"
text = "{name|亲}，订单即将关闭"
""",
    "shipped": """
trigger = "order_shipped"
[[steps]]
name = "shipped"
wait = "0s"
text = "您的{item}已发货，单号{tracking}"
""",
    "confirm": """
trigger = "order_delivered"
cancel_on = ["order_received"]
[[steps]]
name = "confirm"
wait = "1d"
text = "包裹收到了吗？记得确认收货哦"
""",
    "review": """
trigger = "order_received"
lane = "marketing"
[[steps]]
name = "review"
wait = "2d at 20:00"
text = "对{item}还满意吗？期待您的评价"
""",
}

EXTRA = """  # the engine file's flows section and a one-a-day marketing cap
[service.flows]
poll = 0.05
batch = 200
max_per_second = 100000
[caps.marketing]
windows = [{ limit = 1, period = "calendar_day" }]
"""


@dataclass(order=True)
class Ev:
    """One order or customer event of the shop, at its time."""

    at: float
    id: str
    type: str
    phone: str
    order: str
    fields: dict[str, str]


def shop(n_orders: int, start: float, seed: int = 20) -> list[Ev]:
    """Orders over a day, each paid (or not), shipped, delivered and received at realistic delays
    (minutes to pay, hours to ship, a day or two to deliver). Every tenth customer buys two things
    in two orders a minute apart, both received: their two review requests fall on one day, and
    the marketing cap (one a day) holds the second back to the next day."""
    rng = random.Random(seed)
    out: list[Ev] = []
    for i in range(n_orders):
        phone = f"138{i:08d}"  # (eleven digits for any shop size)
        o = f"T{i:05d}"
        t = start + rng.randrange(0, 86400, 60)
        f = {"name": f"客{i}", "item": "羽绒服"}
        twin = i % 10 == 0
        r = 0.5 if twin else rng.random()
        if r < 0.15:
            out.append(Ev(t, f"{o}-c", "order_created", phone, o, f))
            out.append(Ev(t + 24 * 3600, f"{o}-x", "order_closed", phone, o, {}))  # never paid
            continue
        paid = t + (rng.randrange(60, 25 * 60, 60) if r < 0.7 else rng.randrange(35 * 60, 20 * 3600, 60))
        shipped = paid + rng.randrange(3600, 20 * 3600, 60)
        delivered = shipped + rng.randrange(20 * 3600, 50 * 3600, 60)
        received = delivered + rng.randrange(3600, 40 * 3600, 60) if twin or rng.random() < 0.6 else None
        for k, oid in enumerate([o, f"{o}b"] if twin else [o]):
            d = 60.0 * k
            out.append(Ev(t + d, f"{oid}-c", "order_created", phone, oid, f))
            out.append(Ev(paid + d, f"{oid}-p", "order_paid", phone, oid, {}))
            out.append(
                Ev(
                    shipped + d,
                    f"{oid}-s",
                    "order_shipped",
                    phone,
                    oid,
                    {"item": "羽绒服", "tracking": f"SF{i}"},
                )
            )
            out.append(Ev(delivered + d, f"{oid}-d", "order_delivered", phone, oid, {}))
            if received is not None:  # the rest never confirm: the reminder is their step
                out.append(Ev(received + d, f"{oid}-r", "order_received", phone, oid, f))
    return sorted(out)


async def caught_up(svc: Service, within: float = 30.0) -> None:
    """Until no step is due and none is on its way (the runner woken at once)."""
    fl = svc.flows
    assert fl is not None
    fl._wake.set()
    with anyio.fail_after(within):
        while True:
            now = svc.ctx.clock.time()
            nxt = await fl.store.next_due(skip_flows=await fl.store.paused())
            if (nxt is None or nxt > now) and not fl.runner.inflight:
                return
            await anyio.sleep(0.005)


async def post_events(c: httpx.AsyncClient, key: str, events: list[Ev]) -> dict[str, Any]:
    """``POST /v1/events`` with ``events`` (none may be refused)."""
    body = {
        "events": [
            {
                "id": e.id,
                "type": e.type,
                "phone": e.phone,
                "order_id": e.order,
                "at": e.at,
                "fields": e.fields,
            }
            for e in events
        ]
    }
    r = await c.post("/v1/events", json=body, headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    got: dict[str, Any] = r.json()
    assert got["rejected"] == 0, got
    return got


@dataclass
class ShopRun:
    """What a walk through the shop left: the events, every timer row, the records of their messages."""

    events: list[Ev]
    rows: list[tuple[Any, ...]]
    """``(flow, step, customer, subject, due, state, message, reason)`` of every timer."""
    records: dict[str, MessageView | None]
    listing: dict[str, Any]
    """``GET /v1/flows`` at the end."""
    one: dict[str, Any]
    """``GET /v1/customers/{phone}/flows`` of the first event's customer."""
    wall: float = 0.0
    posts: int = 0
    post_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


async def run_shop(directory: Path, sim_port: int, orders: int, *, seed: int = 20) -> ShopRun:
    """Walk a shop of ``orders`` orders through a service (engine file, flows and store in
    ``directory``) sending to the simulator on ``sim_port``."""
    (directory / "flows").mkdir(exist_ok=True)
    for name, text in FLOWS.items():
        (directory / "flows" / f"{name}.toml").write_text(text, encoding="utf-8")
    engine, key = write_engine(directory, sim_port, templates=EXTRA)
    start = datetime(2026, 11, 10, 0, 0, tzinfo=SH).timestamp()
    clock = ShopClock(start)
    events = shop(orders, start, seed)
    t0 = time.perf_counter()
    posts, post_seconds = 0, 0.0
    async with serving(engine, clock=clock) as (url, svc), httpx.AsyncClient(base_url=url, timeout=60) as c:
        assert svc.flows is not None
        svc.records.limit = max(svc.records.limit, 8 * orders)  # keep every message's record for the check
        auth = {"authorization": f"Bearer {key}"}
        i = 0
        horizon = max(e.at for e in events) + 5 * 86400
        while True:
            nxt = await svc.flows.store.next_due()
            t_ev = events[i].at if i < len(events) else None
            cands = [t for t in (nxt, t_ev) if t is not None]
            if not cands or min(cands) > horizon:
                break
            clock.jump_to(min(cands))
            now = clock.time()
            j = i
            while i < len(events) and events[i].at <= now:
                i += 1
            for k in range(j, i, 1000):  # the service's max_events per request
                p0 = time.perf_counter()
                await post_events(c, key, events[k : min(i, k + 1000)])
                post_seconds += time.perf_counter() - p0
                posts += min(i, k + 1000) - k
            await caught_up(svc, within=max(30.0, orders / 100))  # (a day's reviews due at one 20:00)
        listing = (await c.get("/v1/flows", headers=auth)).json()
        one = (await c.get(f"/v1/customers/{events[0].phone}/flows", headers=auth)).json()
        assert isinstance(svc.flows.store, SqliteFlowStore)
        rows = svc.flows.store.sync.db.execute(
            "SELECT flow, step, customer, subject, due, state, message, reason FROM flow_timers"
        ).fetchall()
        records = {mid: svc.records.by_id.get(mid) for *_, mid, _ in rows if mid}
    return ShopRun(events, rows, records, listing, one, time.perf_counter() - t0, posts, post_seconds)


def check(
    run: ShopRun, sim_log: list[tuple[Any, ...]], tolerance: float | None = TOLERANCE
) -> dict[str, Any]:
    """Every promise of the flows, message by message (``AssertionError`` on the first broken one);
    the figures: steps by flow and state, lateness, the largest burst of steps due at one moment.
    ``tolerance``: the most a step may fire after its time (None: reported, not asserted — a shop
    whose thousands of review requests fall due at one 20:00 waits on the lanes' throughput)."""
    events, rows, records = run.events, run.rows, run.records
    # what the gateway got: every step's message id once, and nothing else
    got = Counter(mid for _, mid, *_ in sim_log)
    assert max(got.values()) == 1
    timers = {(f, s, subj): (due, state, mid, reason) for f, s, _c, subj, due, state, mid, reason in rows}
    assert len(timers) == len(rows)  # one row per order and step
    sent = {
        mid for *_, mid, _ in rows if mid and records[mid] is not None and records[mid].state != "suppressed"
    }  # type: ignore[union-attr]
    assert set(got) == sent

    by_order: dict[str, dict[str, float]] = defaultdict(dict)
    for e in events:
        by_order[e.order][e.type] = e.at
    late: list[float] = []
    for (flow, step, order), (due, state, mid, reason) in timers.items():
        ev = by_order[order]
        assert state == 2 or state == 3, (flow, step, order, state, reason)  # fired or cancelled, none left
        cancel = {
            "unpaid": min(ev.get("order_paid", 1e12), ev.get("order_closed", 1e12)),
            "confirm": ev.get("order_received", 1e12),
        }.get(flow, 1e12)
        if state == 3:
            assert cancel <= due, (flow, order)  # cancelled only by its own cancel event, before its time
            assert mid is None
            continue
        # never fired after its cancel event (a tie, both in one minute, may go either way: the
        # step fires when its time comes, and the event is posted in that moment too)
        assert due <= cancel, (flow, step, order)
        rec = records[mid]
        assert rec is not None
        assert rec.state != "suppressed", (flow, order, rec.reason)  # a capped step is held, not dropped
        fired = rec.submitted_at
        assert fired is not None
        local = datetime.fromtimestamp(fired, SH)
        if flow == "review":
            assert 8 <= local.hour < 21  # the marketing window (08:00-21:00)
            assert fired >= due - 0.001
        late.append(fired - due)
    assert late
    assert min(late) >= -0.001, min(late)  # never before its time
    assert tolerance is None or max(late) <= tolerance, max(late)
    # each flow did its job at least once; the unpaid flow both fired and was cancelled
    states = Counter((f, s) for f, _s, _c, _o, _d, s, _m, _r in rows)
    for flow in FLOWS:
        assert states[(flow, 2)] > 0, flow
    assert states[("unpaid", 3)] > 0
    assert states[("confirm", 3)] > 0
    # marketing caps: at most one review per customer and Shanghai day reached the gateway
    to_of = {mid: to for _, mid, to, *_ in sim_log}  # (the records' numbers are masked: ambiguous)
    per_day = Counter(
        (to_of[mid], datetime.fromtimestamp(records[mid].submitted_at, SH).date())  # type: ignore[union-attr, arg-type]
        for f, *_x, mid, _r in rows
        if f == "review" and mid in got
    )
    assert per_day
    assert max(per_day.values()) == 1
    # each twin's two reviews were due on one day: both went, the second held to a later day
    twins = {e.phone for e in events if e.order.endswith("b")}
    reviews: dict[str, list[date]] = defaultdict(list)
    for to, day in per_day:
        reviews[to].append(day)
    for phone in twins:
        days = sorted(reviews[f"+86{phone}"])
        assert len(days) == 2, (mask(phone), days)
        assert days[0] < days[1], (mask(phone), days)
    names = {f["name"]: f for f in run.listing["flows"]}
    assert names["unpaid"]["timers"]["cancelled"] == states[("unpaid", 3)]
    assert run.one["phone"].count("*") >= 4
    assert run.one["steps"]
    q = statistics.quantiles(late, n=100) if len(late) > 1 else late * 99
    return {
        "steps_fired": sum(n for (_, s), n in states.items() if s == 2),
        "steps_cancelled": sum(n for (_, s), n in states.items() if s == 3),
        "by_flow": {f"{f}:{'fired' if s == 2 else 'cancelled'}": n for (f, s), n in sorted(states.items())},
        "twins": len(twins),
        "largest_burst": max(Counter(due for *_, due, state, _m, _r in rows if state == 2).values()),
        "late_p50_s": round(q[49], 4),
        "late_p99_s": round(q[98], 4),
        "late_max_s": round(max(late), 4),
    }


def main() -> None:
    """Run the shop at ``--orders`` and print (and save) the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("PIGEON_TEST_WEBHOOK_SECRET", SECRET)  # (the engine file names a webhook secret)
    with tempfile.TemporaryDirectory() as d, SimulatorThread(SimConfig()) as sim:
        run = anyio.run(
            lambda: run_shop(Path(d), sim.port, args.orders, seed=args.seed),
            backend="asyncio",
            backend_options={"use_uvloop": True},
        )
        figures = check(run, sim.log, tolerance=None)
    report = {
        "scenario": "flow_shop",
        "orders": args.orders,
        "events": len(run.events),
        "timers": len(run.rows),
        "messages_at_gateway": len(sim.log),
        **figures,
        "events_posted_per_s": round(run.posts / run.post_seconds) if run.post_seconds else None,
        "walk_wall_s": round(run.wall, 1),
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    emit(report, args.json)


if __name__ == "__main__":
    main()
