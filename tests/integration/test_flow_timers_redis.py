"""The flows' shared timer store in Redis (real Redis, DB 11; asyncio only: redis-py's client).

Two stores as two hosts on one Redis: each due timer is taken by one of them, a stopped host's
firing timers are adopted (pending again, or ``unknown`` when they had a message id), paused flows
wait, and a Redis killed and restarted with its AOF keeps the timers.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip("redis")

import anyio.lowlevel
import redis

from engine.coordination.contract import CoordinatorContext, CoordinatorUnavailable
from engine.core.clock import FakeClock
from engine.flows.config import load_flow
from engine.flows.runner import FlowRunner, Outcome, SendItem
from engine.state.flowstore import EventPlan, FlowStore, StartPlan
from engine.state.timers import NewTimer, TimerState
from plugins.store_redis.config import RedisConfig
from plugins.store_redis.coordinator import RedisCoordinator
from plugins.store_redis.timers import RedisFlowStore
from tests.integration.redis_cluster import free_port_pair
from tests.integration.redis_prefix import own_redis, scoped_prefix

URL = os.environ.get("PIGEON_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
NOW = 1_800_000_000.0

pytestmark = [pytest.mark.parametrize("anyio_backend", ["asyncio"]), pytest.mark.anyio]


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of one test on the test Redis; its keys deleted after (skipped: no Redis)."""
    yield from scoped_prefix(URL)


@pytest.fixture
async def hosts(prefix: str) -> AsyncIterator[Callable[..., FlowStore]]:
    """``hosts(name, lease=…, url=…)``: the shared timer store as host ``name`` (a client each)."""
    made: list[RedisCoordinator] = []

    def make(name: str, lease: float = 30.0, url: str = URL, timeout: float = 5.0) -> FlowStore:
        c = RedisCoordinator(RedisConfig(url=url, prefix=prefix, timeout=timeout), CoordinatorContext())
        made.append(c)
        return c.flow_store(name, lease)

    yield make
    for c in made:
        await c.aclose()


def _start(flow: str, customer: str, subject: str, dues: list[float], **kw: Any) -> StartPlan:
    timers = [NewTimer(flow, i, customer, subject, d, b'{"name":"x"}') for i, d in enumerate(dues)]
    return StartPlan(flow, NOW, timers, **kw)


async def test_events_schedule_cancel_once_and_respect_running_and_limits(
    hosts: Callable[..., FlowStore],
) -> None:
    s = hosts("a")
    c1, c2 = "+8613800138000", "+8613900139000"
    got = await s.apply(
        [
            EventPlan("e1", c1, "T1", starts=[_start("unpaid", c1, "T1", [NOW + 10, NOW + 20])]),
            EventPlan("e1", c1, "T1", starts=[_start("unpaid", c1, "T1", [NOW + 10])]),  # the same id
            EventPlan("e2", c1, "T1", starts=[_start("unpaid", c1, "T1", [NOW + 10])]),  # running
            EventPlan(
                "e3", c2, "", starts=[_start("bday", c2, "", [NOW], limit=1, since=NOW - 100, period=100)]
            ),
        ],
        NOW,
    )
    assert [g.duplicate for g in got] == [False, True, False, False]
    assert got[0].started == ["unpaid"] and got[0].scheduled == 2
    assert got[2].running == ["unpaid"] and got[2].scheduled == 0
    assert got[3].started == ["bday"]
    # the birthday flow ran: settle it; a second start within its period is over the limit
    (t,) = [t for t in await s.due(NOW, 10) if t.flow == "bday"]
    assert t.customer == c2 and t.fields == b'{"name":"x"}' and t.message is None
    await s.settle([(t.id, "submitted")], NOW, TimerState.FIRED)
    again = await s.apply(
        [
            EventPlan(
                "e4", c2, "", starts=[_start("bday", c2, "", [NOW], limit=1, since=NOW - 100, period=100)]
            )
        ],
        NOW,
    )
    assert again[0].limited == ["bday"]
    # a cancel of step 1 only, then of everything: each pending step cancelled once
    one = await s.apply([EventPlan("e5", c1, "T1", cancels=[("unpaid", [1])])], NOW)
    rest = await s.apply([EventPlan("e6", c1, "T1", cancels=[("unpaid", None)])], NOW)
    assert (one[0].cancelled, rest[0].cancelled) == (1, 1)
    assert await s.counts() == {"unpaid": {"cancelled": 2}, "bday": {"fired": 1}}
    assert await s.pending_count() == 0 and await s.next_due() is None
    views = await s.of_customer(c1)
    assert [(v.step, v.state, v.reason) for v in views] == [
        (1, "cancelled", "cancelled"),
        (0, "cancelled", "cancelled"),
    ]
    # the flow's run ended: the order may start it again
    restart = await s.apply([EventPlan("e7", c1, "T1", starts=[_start("unpaid", c1, "T1", [NOW])])], NOW)
    assert restart[0].started == ["unpaid"]


async def _fire_all(s: FlowStore, host: str, fired: list[tuple[str, int]]) -> None:
    """Take, claim and settle due timers until none is left (a host's runner, without the lanes)."""
    n = 0
    while True:
        due = await s.due(NOW, 50)
        if not due:
            return
        claims = [(t.id, f"{host}-{n + i}") for i, t in enumerate(due)]
        n += len(due)
        got = await s.claim(claims)
        assert got == [t.id for t in due]
        fired.extend((host, tid) for tid in got)
        await anyio.lowlevel.checkpoint()
        await s.settle([(tid, "submitted") for tid in got], NOW, TimerState.FIRED)


async def test_two_hosts_racing_each_take_every_due_timer_exactly_once(
    hosts: Callable[..., FlowStore],
) -> None:
    a, b = hosts("a"), hosts("b")
    plans = [
        EventPlan(
            f"e{i}", f"+86138{i:08d}", f"T{i}", starts=[_start("f", f"+86138{i:08d}", f"T{i}", [NOW - i % 7])]
        )
        for i in range(2000)
    ]
    for i in range(0, 2000, 500):
        await a.apply(plans[i : i + 500], NOW)
    assert await a.pending_count() == 2000 and await b.late_count(NOW) == 2000
    fired: list[tuple[str, int]] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(_fire_all, a, "a", fired)
        tg.start_soon(_fire_all, b, "b", fired)
    ids = [tid for _, tid in fired]
    assert len(ids) == 2000 and len(set(ids)) == 2000  # every timer once, by one host
    assert {h for h, _ in fired} == {"a", "b"}  # both hosts fired some
    assert await a.counts() == {"f": {"fired": 2000}}


async def test_a_stopped_host_s_firing_timers_are_adopted_never_fired_twice(
    hosts: Callable[..., FlowStore],
) -> None:
    a, b = hosts("a", lease=1.0), hosts("b", lease=1.0)
    await a.apply(
        [
            EventPlan(
                f"e{i}", "+8613800138000", f"T{i}", starts=[_start("f", "+8613800138000", f"T{i}", [NOW])]
            )
            for i in range(10)
        ],
        NOW,
    )
    taken = await a.due(NOW, 10)
    assert len(taken) == 10 and await b.due(NOW, 10) == []  # a holds them
    await a.claim([(t.id, f"m{t.id}") for t in taken[:4]])  # 4 handed to a's lanes, 6 not yet
    assert await b.adopt(NOW) == (0, 0)  # a's lease runs
    await anyio.sleep(1.3)  # a stopped: no heartbeat
    assert await b.adopt(NOW) == (6, 4)
    again = await b.due(NOW, 10)
    assert sorted(t.id for t in again) == sorted(t.id for t in taken[4:])
    assert await a.claim([(t.id, "late") for t in taken[4:]]) == []  # a came back: they are b's now
    assert await a.firing() == []
    counts = (await b.counts())["f"]
    assert counts == {"firing": 6, "fired": 4}
    views = {v.id: v for v in await b.of_customer("+8613800138000")}
    assert {views[t.id].reason for t in taken[:4]} == {"unknown:fired_by_dead_host"}
    # the adopting host lists them as its own firing timers now
    assert sorted(t.id for t in await b.firing()) == sorted(t.id for t in taken[4:])
    # a's late settle and reschedule of timers b took over change nothing of b's
    await a.settle([(taken[4].id, "expired")], NOW, TimerState.EXPIRED)
    await a.reschedule([(taken[5].id, NOW + 60, "outside_send_window")])
    assert sorted(await b.claim([(t.id, f"b{t.id}") for t in again])) == sorted(t.id for t in again)
    assert (await b.counts())["f"] == {"firing": 6, "fired": 4}


async def test_a_cancel_wins_over_a_step_taken_but_not_handed_over(hosts: Callable[..., FlowStore]) -> None:
    a, b = hosts("a"), hosts("b")
    c = "+8613800138000"
    await a.apply([EventPlan("e1", c, "T1", starts=[_start("unpaid", c, "T1", [NOW, NOW])])], NOW)
    t0, t1 = await a.due(NOW, 10)
    assert await a.claim([(t0.id, "m0")]) == [t0.id]  # step 0 handed to a gateway: too late to cancel
    got = await b.apply([EventPlan("paid", c, "T1", cancels=[("unpaid", None)])], NOW)  # at another host
    assert got[0].cancelled == 1  # step 1, taken by a but not handed over
    assert await a.claim([(t1.id, "m1")]) == []  # a finds it ended: never sent
    await a.release([t1.id])
    await a.reschedule([(t1.id, NOW + 60, "outside_send_window")])
    assert await a.due(NOW + 3600, 10) == [] and await a.pending_count() == 0
    assert (await a.counts())["unpaid"] == {"firing": 1, "cancelled": 1}


async def test_a_customers_index_expires_after_its_last_step(
    hosts: Callable[..., FlowStore], prefix: str
) -> None:
    s = hosts("a")
    c = "+8613800138000"
    await s.apply([EventPlan("e1", c, "", starts=[_start("f", c, "", [NOW + 100, NOW + 3600])])], NOW)
    with redis.Redis.from_url(URL) as r:
        (key,) = [k for k in r.scan_iter(match=f"{prefix}:*:cust:*") if k.endswith(c.encode())]
        ttl = r.pttl(key)
    assert 3600_000 < ttl <= 3600_000 + 8 * 86_400_000, ttl  # past the last due time, not forever


async def test_held_and_released_timers_go_back_to_pending(hosts: Callable[..., FlowStore]) -> None:
    s = hosts("a")
    await s.apply(
        [
            EventPlan(
                f"e{i}", "+8613800138000", f"T{i}", starts=[_start("f", "+8613800138000", f"T{i}", [NOW])]
            )
            for i in range(3)
        ],
        NOW,
    )
    t1, t2, t3 = await s.due(NOW, 10)
    await s.release([t1.id])
    await s.reschedule([(t2.id, NOW + 3600, "outside_send_window")])
    await s.settle([(t3.id, "expired")], NOW, TimerState.EXPIRED)
    assert [t.id for t in await s.due(NOW, 10)] == [t1.id]
    assert await s.next_due() == NOW + 3600
    (held,) = await s.due(NOW + 3600, 10)
    assert (held.id, held.due, held.planned) == (t2.id, NOW + 3600, NOW)  # its own time kept
    assert (await s.counts())["f"] == {"firing": 2, "expired": 1}


async def test_a_paused_flow_waits_and_is_caught_up_when_resumed(hosts: Callable[..., FlowStore]) -> None:
    a, b = hosts("a"), hosts("b")
    await a.apply(
        [
            EventPlan("e1", "+8613800138000", "T1", starts=[_start("p", "+8613800138000", "T1", [NOW - 5])]),
            EventPlan("e2", "+8613800138000", "T2", starts=[_start("q", "+8613800138000", "T2", [NOW])]),
        ],
        NOW,
    )
    await a.pause("p", NOW)
    assert await b.paused() == ["p"]
    assert [t.flow for t in await b.due(NOW, 10)] == ["q"]  # paused for every host
    assert await b.next_due() is None
    await b.resume("p")
    assert [t.flow for t in await a.due(NOW, 10)] == ["p"]


async def test_a_killed_and_restarted_redis_with_aof_keeps_the_timers(
    tmp_path: Path, hosts: Callable[..., FlowStore]
) -> None:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    port = free_port_pair()
    proc = own_redis(server, port, tmp_path)
    try:
        s = hosts("a", url=f"redis://127.0.0.1:{port}/0", timeout=0.5)
        plans = [
            EventPlan(f"e{i}", f"+86138{i:08d}", "", starts=[_start("f", f"+86138{i:08d}", "", [NOW + i])])
            for i in range(1000)
        ]
        await s.apply(plans, NOW)
        proc.kill()  # SIGKILL: what was answered is in the AOF
        proc.wait(10)
        with pytest.raises(CoordinatorUnavailable):
            await s.apply([EventPlan("late", "+8613800138000", "")], NOW)
        proc = own_redis(server, port, tmp_path)
        for _ in range(3):  # a connection the restart cut fails once; the next reconnects
            try:
                assert await s.pending_count() == 1000
                break
            except CoordinatorUnavailable:
                pass
        else:
            pytest.fail("the store did not answer after the restart")
        assert len(await s.due(NOW + 999, 2000)) == 1000
        dup = await s.apply(plans[:10], NOW)  # the event ids survived too
        assert all(d.duplicate for d in dup)
        assert isinstance(s, RedisFlowStore)
    finally:
        proc.terminate()
        proc.wait(10)


class _Sender:
    """The runner's lanes, faked: records the steps sent, each ``queued``."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []  # (message id, phone)
        self.n = 0

    def reserve(self, lane: str, n: int) -> list[str]:
        self.n += n
        return [f"api-{lane}-{self.n - n + i + 1}" for i in range(n)]

    async def send(self, lane: str, items: Sequence[SendItem]) -> list[Outcome]:
        self.sent += [(i.message_id, i.phone) for i in items]
        return [Outcome("queued") for _ in items]

    def settled(self, message_ids: Sequence[str]) -> dict[str, str]:
        return dict.fromkeys(message_ids, "submitted")

    def recorded(self, message_ids: Sequence[str]) -> dict[str, str]:
        return {}

    def retry_at(self, message_id: str, reason: str, now: float) -> float:
        return now + 60.0


@pytest.mark.parametrize("failing", ["claim_and_release", "take_answer_lost", "settle"])
async def test_timers_taken_before_the_store_fails_mid_step_fire_once_on_a_later_step(
    hosts: Callable[..., FlowStore], tmp_path: Path, failing: str
) -> None:
    """A call after the take fails (the store does not answer): the taken timers are not stuck in
    this host's ``firing`` (no message id, never taken again, never adopted): the next step gives
    them back and fires them, each exactly once."""
    (tmp_path / "reminder.toml").write_text(
        'trigger = "order_created"\nsignature = "小鹅优选"\nexpire_after = "1d"\n'
        '[[steps]]\nwait = "30m"\ntext = "您的订单还没付款"\n'
        '[[steps]]\nwait = "1h"\ntext = "订单即将关闭"\n',
        encoding="utf-8",
    )
    flow = load_flow(tmp_path / "reminder.toml")
    s = hosts("a")
    phones = [f"+861380013800{i}" for i in range(3)]
    await s.apply(
        [
            EventPlan(f"e{i}", p, "T", starts=[_start("reminder", p, "T", [NOW - 1])])
            for i, p in enumerate(phones)
        ],
        NOW,
    )
    # one more timer of a step past its flow's expire_after: the step settles it (expired)
    await s.apply(
        [EventPlan("old", "+8613900139000", "T", starts=[_start("reminder", "+8613900139000", "T", [0, 0])])],
        NOW,
    )
    sender = _Sender()
    runner = FlowRunner({"reminder": flow}, s, sender, FakeClock(NOW))  # type: ignore[arg-type]
    store: Any = s
    fail = {"claim_and_release": ["claim", "release"], "take_answer_lost": ["due"], "settle": ["settle"]}
    for name in fail[failing]:
        real = getattr(s, name)

        def once(real: Any = real, name: str = name) -> Any:
            async def call(*a: Any, **kw: Any) -> Any:
                setattr(store, name, real)  # fails once: the store answers again after
                if name == "due":
                    await real(*a, **kw)  # taken in Redis, the answer lost on the way back
                raise CoordinatorUnavailable(f"redis: {name} timed out")

            return call

        setattr(store, name, once())
    with pytest.raises(CoordinatorUnavailable):
        await runner.fire_due()
    left = await s.firing()
    if failing == "settle":  # the store answers the give-back: pending again at once
        assert left == []
    else:  # taken, not claimed, not given back (the give-back failed too, or the take's ids unknown)
        assert len(left) == (3 if failing == "claim_and_release" else 5)  # (expired ones settled)
        assert all(t.message is None for t in left)
    assert sender.sent == []
    # the store answers again: the next step gives them back and fires them; later steps find none
    assert await runner.fire_due() >= 3
    assert await runner.fire_due() == 0
    assert sorted(p for _, p in sender.sent) == phones  # each exactly once
    assert await runner.confirm() == 3
    counts = await s.counts()
    assert counts["reminder"] == {"fired": 3, "expired": 2}
    assert await s.firing() == []
