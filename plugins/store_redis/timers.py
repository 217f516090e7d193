"""The flows' timer store in Redis: several ``pigeon serve`` hosts share one set of timers, each fired once.

``[service.flows] store = "redis"`` (docs/flows.md, "Several hosts: the timers in Redis"). Keys,
all under the hash tag ``{flows}`` (one Cluster slot: the whole store lives on one node)::

    <prefix>:{flows}:t:<id>            hash        a timer (see plugins.store_redis.timer_scripts)
    <prefix>:{flows}:p:<flow>          sorted set  the flow's pending timers by due time
    <prefix>:{flows}:firing            sorted set  timers taken by a host (its name in the hash's ``o``)
    <prefix>:{flows}:who:<c>␟<s>␟<f>   set         a customer's subject's pending/firing timers of a flow
    <prefix>:{flows}:cust:<customer>   sorted set  the customer's timers by due (look-ups)
    <prefix>:{flows}:ev:<event id>     string      an event taken (expires after 30 days)
    <prefix>:{flows}:starts:<f>␟<c>    sorted set  a limited flow's starts for a customer (its period)
    <prefix>:{flows}:host:<host>       string      a host's lease on what it fires (``lease`` s)
    <prefix>:{flows}:paused            hash        paused flows
    <prefix>:{flows}:counts            hash        flow␟state → timers
    <prefix>:{flows}:flows, :seq       set, int    the flows with timers; the timer id counter

Each call is one script over a batch (events, due timers, claims, settles). A host takes due
timers into ``firing`` under its name and renews its lease with every take and heartbeat; once a
host's lease has run out, another host adopts its firing timers: those without a message id
(never handed to the lanes) go back to pending, those with one are ended ``unknown`` (reason
``fired_by_dead_host``): they may have reached the gateway, so they are never sent again blind.
Ended timers are kept ``keep`` seconds (7 days) for look-ups. redis-py's client is asyncio-only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from engine.state.flowstore import EventApplied, EventPlan
from engine.state.timers import DueTimer, TimerState, TimerView
from plugins.store_redis import timer_scripts as S

__all__ = ["EVENT_TTL", "KEEP_DONE", "RedisFlowStore"]

T = TypeVar("T")
EVENT_TTL = 30 * 86400.0
"""Seconds an event id is remembered (as the embedded store's ``forget_events`` after 30 days)."""
KEEP_DONE = 7 * 86400.0
"""Seconds an ended timer (fired, cancelled, expired) is kept for look-ups."""
ADOPT_BATCH = 10_000
"""Most firing timers of stopped hosts adopted per call."""
_SEP = "\x1f"
_enc = msgspec.json.Encoder()
_rows = msgspec.json.Decoder(list[list[Any]])
_STATES = {str(int(s)): s.name.lower() for s in TimerState}


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _due(row: Sequence[Any]) -> DueTimer:
    fields = row[6]
    due = float(row[5])
    return DueTimer(
        id=int(row[0]),
        flow=_s(row[1]),
        step=int(row[2]),
        customer=_s(row[3]),
        subject=_s(row[4]),
        due=due,
        fields=fields.encode() if isinstance(fields, str) and fields else (bytes(fields) if fields else None),
        message=_s(row[7]) or None,
        planned=float(row[8]) if row[8] else due,
    )


class RedisFlowStore:
    """A :class:`~engine.state.flowstore.FlowStore` in Redis, as host ``host`` (see the module docstring)."""

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        prefix: str,
        host: str,
        lease: float,
        call: Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]],
    ) -> None:
        self.client = client
        self.base = f"{prefix}:{{flows}}"
        self.host = host
        self.lease_ms = math.ceil(lease * 1000)
        self._call = call
        """Runs a Redis call, a :class:`~pigeon.CoordinatorUnavailable` if it fails (the coordinator's)."""
        self._keep_ms = math.ceil(KEEP_DONE * 1000)
        reg = client.register_script
        self._apply = reg(S.APPLY)
        self._take = reg(S.TAKE)
        self._claim = reg(S.CLAIM)
        self._release = reg(S.RELEASE)
        self._settle = reg(S.SETTLE)
        self._reschedule = reg(S.RESCHEDULE)
        self._firing = reg(S.FIRING)
        self._adopt = reg(S.ADOPT)
        self._next = reg(S.NEXT_DUE)
        self._look = reg(S.LOOK)
        self._of_customer = reg(S.OF_CUSTOMER)

    async def _run(self, what: str, script: Any, args: Sequence[Any]) -> Any:
        keys = [self.base]
        return await self._call(what, lambda: script(keys=keys, args=list(args)))

    # -- events ------------------------------------------------------------------------------

    async def apply(self, plans: Sequence[EventPlan], now: float) -> list[EventApplied]:
        """Apply the events' plans in one script (see :meth:`FlowStore.apply`)."""
        if not plans:
            return []
        doc = [
            [
                p.id,
                p.customer,
                p.subject,
                [[flow, list(steps) if steps is not None else False] for flow, steps in p.cancels],
                [
                    [
                        s.flow,
                        s.at,
                        s.limit,
                        s.since,
                        math.ceil((s.period + 86400.0) * 1000),
                        s.expired,
                        [[t.step, repr(t.due), (t.fields or b"").decode()] for t in s.timers],
                    ]
                    for s in p.starts
                ],
            ]
            for p in plans
        ]
        args = [repr(now), math.ceil(EVENT_TTL * 1000), self._keep_ms, _enc.encode(doc)]
        res = _rows.decode(await self._run("take events", self._apply, args))
        return [
            EventApplied(
                duplicate=bool(r[0]),
                cancelled=int(r[1]),
                started=[_s(x) for x in r[2]],
                running=[_s(x) for x in r[3]],
                limited=[_s(x) for x in r[4]],
                scheduled=int(r[5]),
                expired=int(r[6]),
            )
            for r in res
        ]

    async def forget_events(self, before: float) -> int:
        """Nothing to do: event ids expire by themselves (:data:`EVENT_TTL`)."""
        return 0

    # -- firing ------------------------------------------------------------------------------

    async def due(self, now: float, limit: int, *, skip_flows: Sequence[str] = ()) -> list[DueTimer]:
        """Take up to ``limit`` due timers (paused flows left out, as the store knows them): firing,
        this host's, no message id yet."""
        rows = await self._run("take due timers", self._take, [repr(now), limit, self.host, self.lease_ms])
        return [_due(r) for r in _rows.decode(rows)]

    async def release(self, ids: Sequence[int]) -> None:
        """Give taken, unclaimed timers back (pending)."""
        if ids:
            await self._run("give timers back", self._release, [self.host, *ids])

    async def next_due(self, *, skip_flows: Sequence[str] = ()) -> float | None:
        """The earliest pending timer's due time (flows not paused)."""
        got = _s(await self._run("read the next due time", self._next, []))
        return float(got) if got else None

    async def claim(self, claims: Sequence[tuple[int, str]]) -> list[int]:
        """Give taken timers their message ids; those still this host's."""
        if not claims:
            return []
        args: list[Any] = [self.host]
        for tid, mid in claims:
            args += [tid, mid]
        return [int(x) for x in await self._run("claim timers", self._claim, args)]

    async def settle(self, outcomes: Sequence[tuple[int, str]], now: float, state: TimerState) -> None:
        """End timers in ``state``."""
        if not outcomes:
            return
        args: list[Any] = [repr(now), int(state), self._keep_ms, self.host]
        for tid, reason in outcomes:
            args += [tid, reason]
        await self._run("settle timers", self._settle, args)

    async def reschedule(self, moves: Sequence[tuple[int, float, str]]) -> None:
        """Timers pending again at a later time."""
        if not moves:
            return
        args: list[Any] = [self.host, repr(time.time()), self._keep_ms]
        for tid, due, reason in moves:
            args += [tid, repr(due), reason]
        await self._run("reschedule timers", self._reschedule, args)

    async def firing(self, limit: int = 100_000, *, after: int = 0) -> list[DueTimer]:
        """This host's firing timers (a restart under the same name), by id."""
        rows = await self._run("read firing timers", self._firing, [self.host, after, limit])
        return [_due(r) for r in _rows.decode(rows)]

    async def adopt(self, now: float) -> tuple[int, int]:
        """Take over the firing timers of hosts whose lease ran out (see the module docstring)."""
        again, unknown = await self._run(
            "adopt timers", self._adopt, [repr(now), self.host, self._keep_ms, ADOPT_BATCH]
        )
        return int(again), int(unknown)

    async def heartbeat(self) -> None:
        """Renew this host's lease."""
        key = f"{self.base}:host:{self.host}"
        await self._call("renew the timers' lease", lambda: self.client.set(key, "1", px=self.lease_ms))

    # -- paused flows --------------------------------------------------------------------------

    async def paused(self) -> list[str]:
        """The paused flows."""
        got = await self._call("read paused flows", lambda: self.client.hkeys(f"{self.base}:paused"))
        return sorted(_s(x) for x in got)

    async def pause(self, flow: str, now: float) -> None:
        """Pause ``flow`` (for every host)."""
        key = f"{self.base}:paused"
        await self._call("pause a flow", lambda: self.client.hsetnx(key, flow, repr(now)))

    async def resume(self, flow: str) -> None:
        """Resume ``flow``."""
        key = f"{self.base}:paused"
        await self._call("resume a flow", lambda: self.client.hdel(key, flow))

    # -- looking ---------------------------------------------------------------------------------

    async def counts(self) -> dict[str, dict[str, int]]:
        """Flow → state → timers (ended ones counted since the store began, not only those kept)."""
        raw = await self._call("count timers", lambda: self.client.hgetall(f"{self.base}:counts"))
        out: dict[str, dict[str, int]] = {}
        for k, v in raw.items():
            flow, _, st = _s(k).rpartition(_SEP)
            n = int(v)
            if n and st in _STATES:
                out.setdefault(flow, {})[_STATES[st]] = n
        return out

    async def pending_count(self) -> int:
        """Timers pending, all flows."""
        return int((await self._run("count timers", self._look, ["-inf"]))[0])

    async def late_count(self, now: float) -> int:
        """Pending timers already due."""
        return int((await self._run("count timers", self._look, [repr(now)]))[1])

    async def of_customer(self, customer: str, *, limit: int = 200) -> list[TimerView]:
        """The customer's timers (those kept), the latest due first."""
        rows = await self._run("read a customer's timers", self._of_customer, [customer, limit])
        return [
            TimerView(
                int(r[0]),
                _s(r[1]),
                int(r[2]),
                _s(r[3]),
                float(r[4]),
                _STATES.get(_s(r[5]), _s(r[5])),
                _s(r[6]) or None,
                _s(r[7]),
            )
            for r in rows
        ]

    async def aclose(self) -> None:
        """Nothing: the client is the coordinator's (closed with it)."""
