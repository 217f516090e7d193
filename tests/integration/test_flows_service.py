"""Flows in ``pigeon serve`` on both event loops: a simulated shop's order events in over HTTP, timed steps out
to the gateway simulator — each once, at its time, none after its cancel event, marketing in its window and caps.

Time is compressed: the service runs on a clock the test moves forward (real time flows too), always
to the next moment something happens — the next event or the next due step — so a step's lateness
is what the service adds (its poll interval and a batch), not the test's stride.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import httpx
import pytest

from engine.core.phone import mask
from engine.service.core import Service
from loadtests.simulator import Simulator
from tests.integration.service_harness import write_engine

pytestmark = pytest.mark.anyio

SH = ZoneInfo("Asia/Shanghai")
ORDERS = int(os.environ.get("PIGEON_SHOP_ORDERS", "150"))
"""Orders of the simulated shop (CI-sized; ``PIGEON_SHOP_ORDERS=2000`` for a longer run)."""
TOLERANCE = 5.0
"""Seconds (of the service's clock) a step may fire after its due time: the runner's poll (0.05 s
here), a batch through the lanes, and this test's own polling, on a shared machine."""


class ShopClock:
    """Real time plus an offset the test moves forward (never back)."""

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


FLOWS = {
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

EXTRA = """
[service.flows]
poll = 0.05
batch = 200
max_per_second = 100000
[caps.marketing]
windows = [{ limit = 1, period = "calendar_day" }]
"""


@dataclass(order=True)
class Ev:
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
        phone = f"1380013{i:04d}"
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


async def _caught_up(svc: Service) -> None:
    """Until no step is due and none is on its way (the runner woken at once)."""
    fl = svc.flows
    assert fl is not None
    fl._wake.set()
    with anyio.fail_after(30):
        while True:
            now = svc.ctx.clock.time()
            nxt = fl.store.next_due(skip_flows=fl.store.paused())
            if (nxt is None or nxt > now) and not fl.runner.inflight:
                return
            await anyio.sleep(0.005)


async def _post(c: httpx.AsyncClient, key: str, events: list[Ev]) -> dict[str, Any]:
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


async def test_a_simulated_shops_steps_fire_once_on_time_never_after_their_cancel(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    from engine.service.serve import bind, run

    (tmp_path / "flows").mkdir()
    for name, text in FLOWS.items():
        (tmp_path / "flows" / f"{name}.toml").write_text(text, encoding="utf-8")
    engine, key = write_engine(tmp_path, simulator.port, templates=EXTRA)
    start = datetime(2026, 11, 10, 0, 0, tzinfo=SH).timestamp()
    clock = ShopClock(start)
    events = shop(ORDERS, start)
    holder: list[Service] = []
    started = anyio.Event()
    sock = bind("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop = anyio.Event()

    def on_start(svc: Service) -> None:
        holder.append(svc)
        started.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: run(engine, sock, stop=stop, handle_signals=False, started=on_start, clock=clock)
        )
        with anyio.fail_after(30):
            await started.wait()
        svc = holder[0]
        assert svc.flows is not None
        async with httpx.AsyncClient(base_url=url) as c:
            i = 0
            horizon = max(e.at for e in events) + 5 * 86400
            while True:
                nxt = svc.flows.store.next_due()
                t_ev = events[i].at if i < len(events) else None
                cands = [t for t in (nxt, t_ev) if t is not None]
                if not cands or min(cands) > horizon:
                    break
                clock.jump_to(min(cands))
                now = clock.time()
                batch = []
                while i < len(events) and events[i].at <= now:
                    batch.append(events[i])
                    i += 1
                if batch:
                    await _post(c, key, batch)
                await _caught_up(svc)
            listing = (await c.get("/v1/flows", headers={"authorization": f"Bearer {key}"})).json()
            one = (
                await c.get(
                    f"/v1/customers/{events[0].phone}/flows", headers={"authorization": f"Bearer {key}"}
                )
            ).json()
        rows = svc.flows.store.db.execute(
            "SELECT flow, step, customer, subject, due, state, message, reason FROM flow_timers"
        ).fetchall()
        records = {mid: svc.records.by_id.get(mid) for *_, mid, _ in rows if mid}
        stop.set()

    # what the gateway got: every step's message id once, and nothing else
    got = Counter(mid for _, mid, *_ in simulator.log)
    assert max(got.values()) == 1
    timers = {(f, s, subj): (due, state, mid, reason) for f, s, _c, subj, due, state, mid, reason in rows}
    assert len(timers) == len(rows)  # one row per order and step
    sent = {
        mid for *_, mid, _ in rows if mid and records[mid] is not None and records[mid].state != "suppressed"
    }
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
        assert due < cancel, (flow, step, order)  # never fired after its cancel event
        rec = records[mid]
        assert rec is not None
        assert rec.state != "suppressed", (flow, order, rec.reason)  # a capped step is held, not dropped
        fired = rec.submitted_at
        local = datetime.fromtimestamp(fired, SH)
        if flow == "review":
            assert 8 <= local.hour < 21  # the marketing window (08:00-21:00)
            assert fired >= due - 0.001
        late.append(fired - due)
    assert late and min(late) >= -0.001 and max(late) <= TOLERANCE, (min(late), max(late))
    # each flow did its job at least once; the unpaid flow both fired and was cancelled
    states = Counter((f, s) for f, _s, _c, _o, _d, s, _m, _r in rows)
    for flow in FLOWS:
        assert states[(flow, 2)] > 0, flow
    assert states[("unpaid", 3)] > 0 and states[("confirm", 3)] > 0
    # marketing caps: at most one review per customer and Shanghai day reached the gateway
    per_day = Counter(
        (records[mid].to, datetime.fromtimestamp(records[mid].submitted_at, SH).date())  # type: ignore[union-attr]
        for f, *_x, mid, _r in rows
        if f == "review" and mid in got
    )
    assert per_day and max(per_day.values()) == 1
    # each twin's two reviews were due on one day: both went, the second held to a later day
    twins = {e.phone for e in events if e.order.endswith("b")}
    reviews: dict[str, list[date]] = defaultdict(list)
    for to, day in per_day:
        reviews[to].append(day)
    assert len(twins) >= 10
    for phone in twins:
        days = sorted(reviews[mask(phone)])
        assert len(days) == 2 and days[0] < days[1], (mask(phone), days)
    names = {f["name"]: f for f in listing["flows"]}
    assert names["unpaid"]["timers"]["cancelled"] == states[("unpaid", 3)]
    assert one["phone"].count("*") >= 4 and one["steps"]


async def test_events_and_flows_over_http_scopes_problems_duplicates_pause_and_resume(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    from engine.service.apikeys import KeyRing
    from engine.service.serve import bind, run

    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "shipped.toml").write_text(FLOWS["shipped"], encoding="utf-8")
    engine, key = write_engine(
        tmp_path, simulator.port, templates=EXTRA.replace("batch = 200", "batch = 200\nmax_events = 3")
    )
    sender_only = KeyRing(tmp_path / "api-keys.json").create("crm", scopes=["send"])
    clock = ShopClock(datetime(2026, 11, 10, 12, 0, tzinfo=SH).timestamp())
    holder: list[Service] = []
    started = anyio.Event()
    stop = anyio.Event()
    sock = bind("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    def on_start(svc: Service) -> None:
        holder.append(svc)
        started.set()

    auth = {"authorization": f"Bearer {key}"}
    one = {
        "id": "s1",
        "type": "order_shipped",
        "phone": "13800138000",
        "order_id": "A",
        "fields": {"item": "围巾", "tracking": "SF1"},
    }
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: run(engine, sock, stop=stop, handle_signals=False, started=on_start, clock=clock)
        )
        with anyio.fail_after(30):
            await started.wait()
        svc = holder[0]
        async with httpx.AsyncClient(base_url=url) as c:

            async def problem(r: httpx.Response, status: int, word: str) -> None:
                assert r.status_code == status, r.text
                assert r.headers["content-type"].startswith("application/problem+json")
                assert word in r.json()["detail"], r.json()

            await problem(await c.post("/v1/events", json={"events": [one]}), 401, "API key")
            await problem(
                await c.post(
                    "/v1/events", json={"events": [one]}, headers={"authorization": f"Bearer {sender_only}"}
                ),
                403,
                "`events` scope",
            )
            await problem(await c.post("/v1/events", json={"events": []}, headers=auth), 422, "empty")
            await problem(
                await c.post("/v1/events", json={"events": [one] * 4}, headers=auth), 413, "max_events"
            )
            await problem(
                await c.post(
                    "/v1/events", content=b"{not json", headers={**auth, "content-type": "application/json"}
                ),
                400,
                "",
            )
            await problem(
                await c.post("/v1/events", json={"events": [{**one, "colour": "red"}]}, headers=auth),
                422,
                "colour",
            )
            await problem(await c.post("/v1/flows/shipped/stop", headers=auth), 404, "pause or resume")
            await problem(await c.post("/v1/flows/nope/pause", headers=auth), 404, "shipped")

            # paused: the event schedules its step, which waits for the resume
            r = await c.post("/v1/flows/shipped/pause", headers=auth)
            assert r.status_code == 200 and r.json()["paused"] is True
            r = await c.post(
                "/v1/events", json={"events": [one, {**one, "id": "bad", "phone": "123"}]}, headers=auth
            )
            assert r.status_code == 200
            body = r.json()
            assert [e["state"] for e in body["events"]] == ["accepted", "rejected"]
            assert body["scheduled"] == 1 and body["events"][1]["reason"].startswith("phone:")
            again = (await c.post("/v1/events", json={"events": [one]}, headers=auth)).json()
            assert again["duplicates"] == 1 and again["scheduled"] == 0
            clock.jump_to(clock.time() + 60)
            await anyio.sleep(0.5)  # ten polls of the runner: a paused flow's step stays pending
            assert simulator.log == []
            steps = (await c.get("/v1/customers/13800138000/flows", headers=auth)).json()
            assert steps["phone"] == "138****8000" and [s["state"] for s in steps["steps"]] == ["pending"]
            assert "13800138000" not in str(steps)
            r = await c.post("/v1/flows/shipped/resume", headers=auth)
            assert r.status_code == 200 and r.json()["paused"] is False
            await _caught_up(svc)  # the step is due again: until it is fired and handed over
            listing = (await c.get("/v1/flows", headers=auth)).json()
            assert listing["flows"][0]["timers"] == {"fired": 1}
            metrics = (await c.get("/metrics", headers=auth)).text
            assert 'pigeon_flow_events_total{outcome="accepted"} 1.0' in metrics
            assert 'pigeon_flow_events_total{outcome="duplicate"} 1.0' in metrics
            assert "pigeon_flow_timers_fired_total 1.0" in metrics
            assert 'pigeon_flow_steps_total{outcome="sent"} 1.0' in metrics
        stop.set()
    assert len(simulator.log) == 1 and simulator.log[0][2] == "+8613800138000"


async def test_a_back_fill_imported_while_the_service_runs_is_fired_by_it_and_not_twice(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    """``pigeon events import`` writes the store the running service reads: its steps go out once,
    and importing the same file again changes nothing."""
    from engine.cli.main import main
    from tests.integration.service_harness import serving

    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "shipped.toml").write_text(FLOWS["shipped"], encoding="utf-8")
    engine, _ = write_engine(tmp_path, simulator.port, templates=EXTRA)
    now = time.time()
    lines = [
        json.dumps(
            {
                "id": f"s{i}",
                "type": "order_shipped",
                "phone": f"1380013{i:04d}",
                "order_id": f"T{i}",
                "at": now - 5,
                "fields": {"item": "围巾", "tracking": f"SF{i}"},
            },
            ensure_ascii=False,
        )
        for i in range(30)
    ]
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\nnot an event\n", encoding="utf-8")
    argv = ["events", "import", str(tmp_path / "events.jsonl"), "--engine", str(engine), "--json"]
    async with serving(engine) as (_, svc):
        assert (
            await anyio.to_thread.run_sync(main, argv) == 2
        )  # one line is not an event: listed, the rest taken
        await _caught_up(svc)
        assert len(simulator.log) == 30
        assert await anyio.to_thread.run_sync(main, argv) == 2  # again: every event a duplicate
        await anyio.sleep(0.3)
        await _caught_up(svc)
    assert sorted(to for _, _, to, *_ in simulator.log) == [f"+861380013{i:04d}" for i in range(30)]
