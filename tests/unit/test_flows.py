"""Flows without the service: flow files and their checks, the timer store, events → timers, the runner's rules."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio
import jsonschema
import pytest

from engine.core.clock import FakeClock
from engine.core.errors import ConfigError
from engine.flows.book import FlowBook
from engine.flows.config import Flow, load_flow, load_flows, parse_wait
from engine.flows.events import EventIn, read_events
from engine.flows.runner import FlowRunner, Outcome, SendItem
from engine.state.flowstore import SqliteFlowStore
from engine.state.timers import NewTimer, TimerStore

ROOT = Path(__file__).resolve().parents[2]
SH = ZoneInfo("Asia/Shanghai")


def at(text: str) -> float:
    """A Shanghai wall time as epoch seconds."""
    return datetime.fromisoformat(text).replace(tzinfo=SH).timestamp()


def write_flow(tmp_path: Path, text: str, name: str = "f") -> Path:
    (tmp_path / "flows").mkdir(parents=True, exist_ok=True)
    p = tmp_path / "flows" / f"{name}.toml"
    p.write_text(text, encoding="utf-8")
    return p


UNPAID = """
trigger = "order_created"
cancel_on = ["order_paid"]
signature = "小鹅优选"
[[steps]]
wait = "30m"
text = "{name|亲}，您的{item}还没付款"
[[steps]]
wait = "22h"
text = "订单即将关闭"
"""

REVIEW = """
trigger = "order_received"
lane = "marketing"
signature = "小鹅优选"
[[steps]]
wait = "3d at 20:00"
text = "期待您的评价"
"""


# -- flow files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds", "hour"),
    [
        ("30m", 1800, None),
        ("2d", 172800, None),
        ("1h30m", 5400, None),
        ("at 20:00", 0, 20),
        ("2d at 10:00", 172800, 10),
    ],
)
def test_waits_parse(text: str, seconds: float, hour: int | None) -> None:
    w = parse_wait(text)
    assert w.seconds == seconds
    assert (w.at.hour if w.at else None) == hour


@pytest.mark.parametrize("text", ["", "soon", "30", "at 25:00", "at 20", "2w"])
def test_a_bad_wait_says_what_to_write(text: str) -> None:
    with pytest.raises(ValueError, match=r"30m|out of range"):
        parse_wait(text)


def test_at_20_is_the_next_occurrence_in_the_flows_zone() -> None:
    w = parse_wait("at 20:00")
    assert w.due(at("2026-11-10T19:00:00"), SH) == at("2026-11-10T20:00:00")
    assert w.due(at("2026-11-10T20:30:00"), SH) == at("2026-11-11T20:00:00")
    assert parse_wait("2d at 10:00").due(at("2026-11-10T12:00:00"), SH) == at("2026-11-13T10:00:00")


@pytest.mark.parametrize(
    ("change", "where", "says"),
    [
        (("order_created", "order_payed"), "trigger", "did you mean 'order_paid'"),
        (('wait = "30m"', 'wait = "half an hour"'), "steps[0].wait", "is not a wait"),
        (('text = "订单即将关闭"', 'template = "nope"'), "steps[1].template", "no service template"),
        (('signature = "小鹅优选"', 'signature = ""'), "signature", "no signature"),
        (("trigger =", "trigge ="), "trigge", "did you mean `trigger`"),
        (('cancel_on = ["order_paid"]', 'cancel_on = ["order_created"]'), "cancel_on", "is the trigger"),
    ],
)
def test_a_bad_flow_fails_before_anything_starts_and_says_what_to_change(
    tmp_path: Path, change: tuple[str, str], where: str, says: str
) -> None:
    p = write_flow(tmp_path, UNPAID.replace(*change, 1))
    with pytest.raises(ConfigError) as e:
        load_flow(p)
    assert e.value.path == where
    assert says in e.value.problem
    assert str(p) in str(e.value)


def test_every_example_flow_loads_and_validates_against_its_schema() -> None:
    schema = json.loads((ROOT / "config" / "schema" / "flow.schema.json").read_text("utf-8"))
    v = jsonschema.Draft202012Validator(schema)
    files = sorted((ROOT / "config" / "flows").glob("*.toml"))
    assert len(files) >= 8
    for p in files:
        text = p.read_text("utf-8")
        assert text.splitlines()[0] == "#:schema ../schema/flow.schema.json"
        assert [e.message for e in v.iter_errors(tomllib.loads(text))] == [], p.name
    flows = load_flows(ROOT / "config" / "flows")
    assert {
        "unpaid_reminder",
        "shipped",
        "arrived",
        "confirm_receipt",
        "care_after_use",
        "review_request",
        "birthday",
    } <= set(flows)
    assert len(flows["unpaid_reminder"].steps) == 2
    # the schema flags what the loader refuses: a step with neither text nor template
    assert list(v.iter_errors({"trigger": "order_paid", "steps": [{"wait": "1h"}]}))


# -- the timer store ------------------------------------------------------------------------------


def test_due_timers_come_earliest_first_in_batches_and_cancelled_ones_never(tmp_path: Path) -> None:
    s = TimerStore(tmp_path / "t.db")
    s.schedule(NewTimer("f", 0, f"+86138{i:08d}", f"o{i}", 1000.0 - i) for i in range(100))
    first = s.due(2000.0, 10)
    assert [t.due for t in first] == sorted(t.due for t in first) == [901.0 + i for i in range(10)]
    with s.batch():
        assert s.cancel("+8613800000099", "o99", "f", None, 0.0) == 1  # the earliest one
    assert s.due(2000.0, 1)[0].subject == "o98"
    assert s.due(950.0, 1000) and max(t.due for t in s.due(950.0, 1000)) <= 950.0
    s.pause("f", 0.0)
    assert s.due(2000.0, 10, skip_flows=s.paused()) == []
    s.resume("f")
    claimed = s.claim([(t.id, f"m{t.id}") for t in s.due(2000.0, 5)])
    assert len(claimed) == 5
    assert len(s.due(2000.0, 1000)) == 99 - 5
    assert {t.id for t in s.firing()} == set(claimed)
    assert s.counts()["f"] == {"pending": 94, "firing": 5, "cancelled": 1}


def test_a_claim_never_takes_a_timer_cancelled_meanwhile(tmp_path: Path) -> None:
    s = TimerStore(tmp_path / "t.db")
    s.schedule([NewTimer("f", 0, "+8613800000000", "o", 1.0)])
    (t,) = s.due(10.0, 10)
    with s.batch():
        s.cancel("+8613800000000", "o", "f", None, 5.0)
    assert s.claim([(t.id, "m1")]) == []


# -- events → timers -------------------------------------------------------------------------------


def ev(eid: str, typ: str, order: str = "A1", phone: str = "13800138000", t: float | None = None) -> EventIn:
    return EventIn(id=eid, type=typ, phone=phone, order_id=order, at=t, fields={"item": "羽绒服"})


def _ts(r: FlowRunner) -> TimerStore:
    """The runner's embedded store, synchronous."""
    assert isinstance(r.store, SqliteFlowStore)
    return r.store.sync


def book(tmp_path: Path, *texts: str) -> FlowBook:
    flows = {}
    for i, text in enumerate(texts):
        f = load_flow(write_flow(tmp_path, text, f"f{i}"))
        flows[f.name] = f
    return FlowBook(flows, TimerStore(tmp_path / "t.db"))


def test_an_event_schedules_its_flows_steps_once_by_event_id(tmp_path: Path) -> None:
    b = book(tmp_path, UNPAID)
    t0 = at("2026-11-10T12:00:00")
    r = b.ingest([ev("e1", "order_created", t=t0)], t0)
    assert (r.accepted, r.scheduled, r.events[0].started) == (1, 2, ["f0"])
    assert [t.due for t in b.store.due(t0 + 10**6, 10)] == [t0 + 1800, t0 + 1800 + 22 * 3600]
    again = b.ingest([ev("e1", "order_created", t=t0)], t0 + 5)
    assert (again.duplicates, again.scheduled) == (1, 0)
    other_id = b.ingest([ev("e2", "order_created", t=t0)], t0 + 5)  # same order, new id: one run at a time
    assert other_id.scheduled == 0 and "already running" in other_id.events[0].skipped[0]
    assert b.store.pending_count() == 2


def test_a_cancel_event_cancels_only_its_orders_pending_steps(tmp_path: Path) -> None:
    b = book(tmp_path, UNPAID)
    t0 = at("2026-11-10T12:00:00")
    b.ingest([ev("e1", "order_created", "A1", t=t0), ev("e2", "order_created", "A2", t=t0)], t0)
    r = b.ingest([ev("e3", "order_paid", "A1")], t0 + 60)
    assert r.cancelled == 2
    assert {t.subject for t in b.store.due(t0 + 10**6, 10)} == {"A2"}


def test_bad_events_are_refused_one_by_one_with_a_reason(tmp_path: Path) -> None:
    b = book(tmp_path, UNPAID)
    r = b.ingest(
        [ev("e1", "order_created", phone="12345"), ev("e2", "Order Paid"), ev("e3", "order_created")], 2e9
    )
    assert [e.state for e in r.events] == ["rejected", "rejected", "accepted"]
    assert r.events[0].reason.startswith("phone:") and r.events[1].reason.startswith("type:")


def test_a_limit_per_customer_holds_and_a_backfills_old_steps_expire(tmp_path: Path) -> None:
    limited = UNPAID + '[limit]\ncount = 1\nperiod = "30d"\n'
    b = book(
        tmp_path,
        limited.replace('cancel_on = ["order_paid"]', 'cancel_on = ["order_paid"]\nexpire_after = "1h"'),
    )
    now = at("2026-11-10T12:00:00")
    r = b.ingest([ev("e1", "order_created", "A1", t=now - 3600)], now)  # back-fill: step 1 is 30 min late
    assert r.scheduled == 2
    r2 = b.ingest([ev("e2", "order_created", "B1", t=now)], now)
    assert r2.scheduled == 0 and "limit of 1" in r2.events[0].skipped[0]
    b2 = book(
        tmp_path / "x",
        UNPAID.replace('cancel_on = ["order_paid"]', 'cancel_on = ["order_paid"]\nexpire_after = "1h"'),
    )
    r3 = b2.ingest([ev("e1", "order_created", "A1", t=now - 4 * 3600)], now)  # step 1 is 3.5 h late: dropped
    assert r3.scheduled == 1


def test_events_files_read_jsonl_and_csv_with_line_numbers_for_bad_lines(tmp_path: Path) -> None:
    j = tmp_path / "e.jsonl"
    j.write_text(
        '{"id":"1","type":"order_paid","phone":"13800138000","order_id":"A"}\nnot json\n\n'
        '{"id":"2","type":"birthday","phone":"13800138001","fields":{"name":"王"}}\n',
        encoding="utf-8",
    )
    chunks = list(read_events(j))
    assert [e.id for c in chunks for e in c[1]] == ["1", "2"]
    assert [n for c in chunks for n in c[0]] == [1, 4]
    assert [n for c in chunks for n, _ in c[2]] == [2]
    c = tmp_path / "e.csv"
    c.write_text(
        "id,type,phone,order_id,at,name\n1,order_paid,13800138000,A,1700000000,王\n2,,x,,,\n",
        encoding="utf-8",
    )
    ((lines, events, bad),) = list(read_events(c))
    assert events[0].fields == {"name": "王"} and events[0].at == 1700000000
    assert lines == [2] and [n for n, _ in bad] == [3]


# -- the runner -------------------------------------------------------------------------------------


class FakeSender:
    """Records what it was given; ``queued`` until :attr:`handed` says otherwise."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []  # (message id, phone, step name)
        self.handed: dict[str, str] = {}
        self.ledger: dict[str, str] = {}
        self.n = 0
        self.outcome = Outcome("queued")

    def reserve(self, lane: str, n: int) -> list[str]:
        self.n += n
        return [f"api-{lane}-{self.n - n + i + 1}" for i in range(n)]

    async def send(self, lane: str, items: Sequence[SendItem]) -> list[Outcome]:
        self.sent += [(i.message_id, i.phone, i.step.name) for i in items]
        return [self.outcome for _ in items]

    def settled(self, message_ids: Sequence[str]) -> dict[str, str]:
        return {m: self.handed[m] for m in message_ids if m in self.handed}

    def recorded(self, message_ids: Sequence[str]) -> dict[str, str]:
        return {m: self.ledger[m] for m in message_ids if m in self.ledger}

    def retry_at(self, message_id: str, reason: str, now: float) -> float:
        return now + 86400.0


def runner(
    tmp_path: Path, flows: dict[str, Flow], clock: FakeClock, **kw: float
) -> tuple[FlowRunner, FakeSender]:
    s = FakeSender()
    return FlowRunner(flows, TimerStore(tmp_path / "t.db"), s, clock, **kw), s  # type: ignore[arg-type]


def test_steps_fire_at_their_time_not_before_and_cancelled_ones_never(tmp_path: Path) -> None:
    t0 = at("2026-11-10T12:00:00")
    clock = FakeClock(t0)
    b = book(tmp_path, UNPAID)
    r, s = runner(tmp_path, b.flows, clock)
    b.ingest([ev("e1", "order_created", "A1"), ev("e2", "order_created", "A2")], t0)

    async def main() -> None:
        clock.advance(1799)
        assert await r.fire_due() == 0
        clock.advance(1)
        assert await r.fire_due() == 2
        b.ingest([ev("e3", "order_paid", "A1")], clock.time())
        clock.advance(22 * 3600)
        assert await r.fire_due() == 1

    anyio.run(main)
    assert [(p, name) for _, p, name in s.sent] == [("+8613800138000", "step1")] * 2 + [
        ("+8613800138000", "step2")
    ]
    assert len({m for m, _, _ in s.sent}) == 3
    # queued steps stay firing until the ledger has their hand-over, then they are fired
    assert b.store.counts()["f0"] == {"firing": 3, "cancelled": 1}
    s.handed.update({m: "submitted" for m, _, _ in s.sent})
    assert anyio.run(r.confirm) == 3
    assert b.store.counts()["f0"] == {"fired": 3, "cancelled": 1}


def test_late_timers_are_caught_up_in_due_order_at_the_capped_pace(tmp_path: Path) -> None:
    clock = FakeClock(at("2026-11-10T12:00:00"))
    f = load_flow(write_flow(tmp_path, UNPAID))
    r, s = runner(tmp_path, {f.name: f}, clock, batch=100, max_per_second=100.0)
    _ts(r).schedule(
        NewTimer(f.name, 0, f"+86138{i:08d}", f"o{i}", clock.time() - 5000 + i) for i in range(1000)
    )

    async def main() -> list[int]:
        fired = [await r.fire_due()]
        fired.append(await r.fire_due())  # no time passed: no budget left
        clock.advance(0.5)
        fired.append(await r.fire_due())
        return fired

    assert anyio.run(main) == [100, 0, 50]
    phones = [p for _, p, _ in s.sent]
    assert phones == [f"+86138{i:08d}" for i in range(150)]  # the earliest due first
    assert r.counts.late == 150


def test_a_marketing_step_outside_its_window_waits_for_it_and_is_never_dropped(tmp_path: Path) -> None:
    clock = FakeClock(at("2026-11-10T23:30:00"))
    f = load_flow(write_flow(tmp_path, REVIEW.replace("3d at 20:00", "0s")))
    r, s = runner(tmp_path, {f.name: f}, clock)
    _ts(r).schedule([NewTimer(f.name, 0, "+8613800138000", "A", clock.time())])

    async def main() -> None:
        assert await r.fire_due() == 1
        assert s.sent == []
        assert _ts(r).due(at("2026-11-11T07:59:59"), 10) == []
        clock.advance(at("2026-11-11T08:00:00") - clock.time())
        assert await r.fire_due() == 1

    anyio.run(main)
    assert len(s.sent) == 1 and r.counts.deferred == 1


def test_a_capped_step_is_held_to_when_the_cap_allows_and_expires_from_its_own_time(tmp_path: Path) -> None:
    """The lane says ``deferred: capped`` (the service's cap): the step waits, it is not dropped;
    a flow's ``expire_after`` counts from the step's first due time, not from the time it was held to."""
    clock = FakeClock(at("2026-11-10T20:00:00"))
    text = REVIEW.replace("3d at 20:00", "0s")
    f = load_flow(write_flow(tmp_path, text))
    g = load_flow(write_flow(tmp_path, text.replace("lane =", 'expire_after = "10h"\nlane ='), "stale"))
    r, s = runner(tmp_path, {f.name: f, g.name: g}, clock)
    who = {f.name: "+8613800138000", g.name: "+8613900139000"}
    _ts(r).schedule(NewTimer(n, 0, p, n, clock.time()) for n, p in who.items())
    s.outcome = Outcome("deferred", "capped", at("2026-11-11T00:00:00"))  # the next calendar day

    async def main() -> None:
        assert await r.fire_due() == 2
        held = _ts(r).due(at("2026-11-11T00:00:00"), 10)
        assert [(t.due, t.planned) for t in held] == [
            (at("2026-11-11T00:00:00"), at("2026-11-10T20:00:00"))
        ] * 2
        s.outcome = Outcome("queued")
        clock.advance(at("2026-11-11T00:00:00") - clock.time())
        assert await r.fire_due() == 2  # both held again, to the flow's window (08:00–21:00)
        clock.advance(at("2026-11-11T08:00:00") - clock.time())
        assert await r.fire_due() == 2

    anyio.run(main)
    assert [p for _, p, _ in s.sent] == [who[f.name], who[g.name], who[f.name]]
    states = {n: _ts(r).of_customer(p)[0].state for n, p in who.items()}
    assert states == {f.name: "firing", g.name: "expired"}  # 12 h after its 20:00: stale past 10 h
    assert r.counts.deferred == 4 and r.counts.expired == 1


def test_a_store_from_before_held_steps_kept_their_first_time_is_upgraded(tmp_path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / "old.db")
    db.execute(
        "CREATE TABLE flow_timers (id INTEGER PRIMARY KEY, flow TEXT NOT NULL, step INTEGER NOT NULL, "
        "customer TEXT NOT NULL, subject TEXT NOT NULL DEFAULT '', due REAL NOT NULL, "
        "state INTEGER NOT NULL DEFAULT 0, fields BLOB, message TEXT, reason TEXT NOT NULL DEFAULT '', "
        "done_at REAL NOT NULL DEFAULT 0)"
    )
    db.execute("INSERT INTO flow_timers (flow, step, customer, due) VALUES ('f', 0, '+8613800138000', 100)")
    db.commit()
    db.close()
    store = TimerStore(tmp_path / "old.db")
    (t,) = store.due(200.0, 10)
    assert (t.due, t.planned) == (100.0, 100.0)
    store.reschedule([(t.id, 300.0, "capped")])
    (t,) = store.due(300.0, 10)
    assert (t.due, t.planned) == (300.0, 100.0)


def test_recovery_settles_recorded_steps_and_resends_unrecorded_ones_under_the_same_id(
    tmp_path: Path,
) -> None:
    clock = FakeClock(at("2026-11-10T12:00:00"))
    f = load_flow(write_flow(tmp_path, UNPAID))
    store = TimerStore(tmp_path / "t.db")
    store.schedule(NewTimer(f.name, 0, f"+86138{i:08d}", f"o{i}", clock.time()) for i in range(4))
    ids = [t.id for t in store.due(clock.time(), 10)]
    store.claim([(tid, f"api-transactional-{tid}") for tid in ids])  # then the process died
    r, s = runner(tmp_path, {f.name: f}, clock)
    s.ledger = {f"api-transactional-{ids[0]}": "recorded", f"api-transactional-{ids[1]}": "recorded"}
    assert anyio.run(r.recover) == 4
    assert sorted(m for m, _, _ in s.sent) == sorted(f"api-transactional-{t}" for t in ids[2:])
    assert r.counts.recovered == 2 and r.counts.resent == 2
    assert anyio.run(r.fire_due) == 0  # nothing fires twice


def test_steps_the_stages_end_at_once_are_fired_with_their_reason(tmp_path: Path) -> None:
    clock = FakeClock(at("2026-11-10T12:00:00"))
    f = load_flow(write_flow(tmp_path, UNPAID))
    r, s = runner(tmp_path, {f.name: f}, clock)
    s.outcome = Outcome("suppressed", "opted_out")
    _ts(r).schedule([NewTimer(f.name, 0, "+8613800138000", "A", clock.time())])
    anyio.run(r.fire_due)
    (v,) = _ts(r).of_customer("+8613800138000")
    assert (v.state, v.reason) == ("fired", "suppressed:opted_out")
    assert r.inflight == {}


def test_a_customers_next_marketing_step_waits_for_the_hand_over_of_the_one_before(tmp_path: Path) -> None:
    """Caps count at hand-over: two marketing steps to one number queued at once would both pass."""
    clock = FakeClock(at("2026-11-10T12:00:00"))
    f = load_flow(write_flow(tmp_path, REVIEW.replace("3d at 20:00", "0s")))
    r, s = runner(tmp_path, {f.name: f}, clock, batch=1)
    _ts(r).schedule(NewTimer(f.name, 0, "+8613800138000", o, clock.time()) for o in ("A", "B"))

    async def main() -> list[int]:
        got = [await r.fire_due()]
        clock.advance(1)
        got.append(await r.fire_due())  # the second order's step: its customer has one in flight
        s.handed.update({m: "submitting" for m, _, _ in s.sent})
        await r.confirm()
        got.append(await r.fire_due())
        return got

    assert anyio.run(main) == [1, 0, 1]
    assert [p for _, p, _ in s.sent] == ["+8613800138000"] * 2


def test_a_step_held_in_its_lane_after_it_was_queued_is_deferred_not_dropped(tmp_path: Path) -> None:
    """A marketing step over a cap the shared coordinator counts is held in the lane after it was
    queued (the lane records it suppressed, capped; LaneSender.settled says ``deferred``): the
    timer goes back to pending at the sender's retry time, under a new message id then."""
    clock = FakeClock(at("2026-11-10T12:00:00"))
    f = load_flow(write_flow(tmp_path, REVIEW.replace("3d at 20:00", "0s")))
    r, s = runner(tmp_path, {f.name: f}, clock)
    _ts(r).schedule([NewTimer(f.name, 0, "+8613800138000", "A", clock.time())])

    async def main() -> None:
        assert await r.fire_due() == 1
        s.handed.update({m: "deferred" for m, _, _ in s.sent})
        assert await r.confirm() == 1

    anyio.run(main)
    (v,) = _ts(r).of_customer("+8613800138000")
    assert (v.state, v.reason, v.message) == ("pending", "deferred:capped", None)
    assert v.due == clock.time() + 86400.0
    assert r.counts.deferred == 1 and r.counts.sent == 0 and r.inflight == {}
