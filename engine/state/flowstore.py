"""The flow timer store's contract (:class:`FlowStore`), and the embedded SQLite one behind it.

The runner and the service talk to a :class:`FlowStore`: the embedded one
(:class:`SqliteFlowStore`, over :class:`~engine.state.timers.TimerStore` in the store file, the
default) or a shared one a coordination plugin gives (``[service.flows] store = "redis"``:
several ``pigeon serve`` hosts on one timer store). Events are applied as a batch of
:class:`EventPlan` in one call (one transaction, or one script), so a shared store costs one
round trip per batch, not per event.

Firing: :meth:`FlowStore.due` fetches due timers. A shared store *takes* them (they become
``firing``, owned by this host, with no message id yet): the caller then claims them with a
message id (:meth:`FlowStore.claim`), settles, reschedules, or gives them back
(:meth:`FlowStore.release`). The embedded store's ``due`` is a read and ``release`` does nothing:
only one service uses its file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from engine.state.timers import DueTimer, NewTimer, TimerState, TimerStore, TimerView

__all__ = [
    "EventApplied",
    "EventPlan",
    "FlowStore",
    "SharedFlowStores",
    "SqliteFlowStore",
    "StartPlan",
    "apply_sqlite",
]


@dataclass(frozen=True, slots=True)
class StartPlan:
    """A flow an event would start: its steps, if it is not running and within its limit."""

    flow: str
    at: float
    """The event's time (its start, counted by ``limit``)."""
    timers: Sequence[NewTimer]
    limit: int = 0
    """Most starts per customer since ``since`` (0: no limit)."""
    since: float = 0.0
    period: float = 0.0
    """The limit's period, seconds (a shared store keeps the starts that long)."""
    expired: int = 0
    """Steps left out as long past (counted if the flow starts)."""


@dataclass(frozen=True, slots=True)
class EventPlan:
    """One event to apply: its id (taken once), the steps it cancels, the flows it starts."""

    id: str
    customer: str
    subject: str
    cancels: Sequence[tuple[str, Sequence[int] | None]] = ()
    """(flow, its steps cancelled — None: all)."""
    starts: Sequence[StartPlan] = ()


@dataclass(slots=True)
class EventApplied:
    """What applying one :class:`EventPlan` did."""

    duplicate: bool = False
    cancelled: int = 0
    started: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    """Flows not started: a run of theirs is pending for the same subject."""
    limited: list[str] = field(default_factory=list)
    """Flows not started: their ``limit`` was reached."""
    scheduled: int = 0
    expired: int = 0


class FlowStore(Protocol):
    """Where the flows' timers, taken event ids, flow starts and paused flows live (asynchronous).

    Raises :class:`~engine.core.errors.CoordinatorUnavailable` (a shared store that does not
    answer): nothing was applied, or (an answer lost) all of it was — try again.
    """

    async def apply(self, plans: Sequence[EventPlan], now: float) -> list[EventApplied]:
        """Apply ``plans`` in order, atomically: per event, its id (seen before: a duplicate, nothing
        else done), its cancels, then its starts (not when running or over the limit)."""
        ...

    async def forget_events(self, before: float) -> int:
        """Forget event ids taken before ``before``."""
        ...

    async def due(self, now: float, limit: int, *, skip_flows: Sequence[str] = ()) -> list[DueTimer]:
        """Up to ``limit`` pending timers due by ``now``, earliest first (a shared store takes them)."""
        ...

    async def release(self, ids: Sequence[int]) -> None:
        """Give back timers :meth:`due` took and that were neither claimed, settled nor rescheduled."""
        ...

    async def next_due(self, *, skip_flows: Sequence[str] = ()) -> float | None:
        """When the earliest pending timer is due (None: none)."""
        ...

    async def claim(self, claims: Sequence[tuple[int, str]]) -> list[int]:
        """Give ``(timer id, message id)`` their message id (``firing``); the ids claimed."""
        ...

    async def settle(self, outcomes: Sequence[tuple[int, str]], now: float, state: TimerState) -> None:
        """End ``(timer id, reason)`` pairs in ``state``."""
        ...

    async def reschedule(self, moves: Sequence[tuple[int, float, str]]) -> None:
        """Put ``(timer id, due, reason)`` back to ``pending`` at a later time."""
        ...

    async def firing(self, limit: int = 100_000, *, after: int = 0) -> list[DueTimer]:
        """This host's timers left ``firing`` (a crash), by id, past ``after``."""
        ...

    async def adopt(self, now: float) -> tuple[int, int]:
        """Take over the firing timers of hosts whose lease ran out: (back to pending — never handed
        to a gateway, settled ``unknown`` — they may have been). The embedded store: (0, 0)."""
        ...

    async def heartbeat(self) -> None:
        """Renew this host's lease on the timers it fires (the embedded store: nothing)."""
        ...

    async def paused(self) -> list[str]:
        """The paused flows."""
        ...

    async def pause(self, flow: str, now: float) -> None:
        """Pause ``flow``."""
        ...

    async def resume(self, flow: str) -> None:
        """Resume ``flow``."""
        ...

    async def counts(self) -> dict[str, dict[str, int]]:
        """Flow → state name → timers."""
        ...

    async def pending_count(self) -> int:
        """Timers pending, all flows."""
        ...

    async def late_count(self, now: float) -> int:
        """Pending timers already due."""
        ...

    async def of_customer(self, customer: str, *, limit: int = 200) -> list[TimerView]:
        """The customer's timers, the latest due first."""
        ...

    async def aclose(self) -> None:
        """Release what the store holds (not a connection it was given)."""
        ...


@runtime_checkable
class SharedFlowStores(Protocol):
    """A coordinator that can hold the flows' timers for several hosts (``store = "redis"``)."""

    def flow_store(self, host: str, lease: float) -> FlowStore:
        """The shared timer store, as host ``host`` (its lease on what it fires: ``lease`` s)."""
        ...


def apply_sqlite(store: TimerStore, plans: Sequence[EventPlan], now: float) -> list[EventApplied]:
    """:meth:`FlowStore.apply` on the embedded store, in one transaction."""
    out: list[EventApplied] = []
    with store.batch():
        fresh = store.take_events([p.id for p in plans], now)
        for plan, new in zip(plans, fresh, strict=True):
            got = EventApplied(duplicate=not new)
            out.append(got)
            if not new:
                continue
            for flow, steps in plan.cancels:
                got.cancelled += store.cancel(plan.customer, plan.subject, flow, steps, now)
            for start in plan.starts:
                if store.has_pending(start.flow, plan.customer, plan.subject):
                    got.running.append(start.flow)
                    continue
                if start.limit and store.starts_since(start.flow, plan.customer, start.since) >= start.limit:
                    got.limited.append(start.flow)
                    continue
                store.started(start.flow, plan.customer, start.at)
                store.schedule_in_batch(start.timers)
                got.started.append(start.flow)
                got.scheduled += len(start.timers)
                got.expired += start.expired
    return out


class SqliteFlowStore:
    """The embedded :class:`FlowStore`: :class:`TimerStore` in the store file (one service per file)."""

    def __init__(self, store: TimerStore) -> None:
        self.sync = store
        """The synchronous store underneath (the CLI's, tests')."""

    async def apply(self, plans: Sequence[EventPlan], now: float) -> list[EventApplied]:
        """See :meth:`FlowStore.apply` (one transaction)."""
        return apply_sqlite(self.sync, plans, now)

    async def forget_events(self, before: float) -> int:
        """See :meth:`FlowStore.forget_events`."""
        return self.sync.forget_events(before)

    async def due(self, now: float, limit: int, *, skip_flows: Sequence[str] = ()) -> list[DueTimer]:
        """See :meth:`FlowStore.due` (a read: the timers stay pending until claimed)."""
        return self.sync.due(now, limit, skip_flows=skip_flows)

    async def release(self, ids: Sequence[int]) -> None:
        """Nothing to give back: :meth:`due` took nothing."""

    async def next_due(self, *, skip_flows: Sequence[str] = ()) -> float | None:
        """See :meth:`FlowStore.next_due`."""
        return self.sync.next_due(skip_flows=skip_flows)

    async def claim(self, claims: Sequence[tuple[int, str]]) -> list[int]:
        """See :meth:`FlowStore.claim`."""
        return self.sync.claim(claims)

    async def settle(self, outcomes: Sequence[tuple[int, str]], now: float, state: TimerState) -> None:
        """See :meth:`FlowStore.settle`."""
        self.sync.settle(outcomes, now, state)

    async def reschedule(self, moves: Sequence[tuple[int, float, str]]) -> None:
        """See :meth:`FlowStore.reschedule`."""
        self.sync.reschedule(moves)

    async def firing(self, limit: int = 100_000, *, after: int = 0) -> list[DueTimer]:
        """See :meth:`FlowStore.firing`."""
        return self.sync.firing(limit, after=after)

    async def adopt(self, now: float) -> tuple[int, int]:
        """No other host fires from this file."""
        return (0, 0)

    async def heartbeat(self) -> None:
        """No lease: one service per file."""

    async def paused(self) -> list[str]:
        """See :meth:`FlowStore.paused`."""
        return self.sync.paused()

    async def pause(self, flow: str, now: float) -> None:
        """See :meth:`FlowStore.pause`."""
        self.sync.pause(flow, now)

    async def resume(self, flow: str) -> None:
        """See :meth:`FlowStore.resume`."""
        self.sync.resume(flow)

    async def counts(self) -> dict[str, dict[str, int]]:
        """See :meth:`FlowStore.counts`."""
        return self.sync.counts()

    async def pending_count(self) -> int:
        """See :meth:`FlowStore.pending_count`."""
        return self.sync.pending_count()

    async def late_count(self, now: float) -> int:
        """See :meth:`FlowStore.late_count`."""
        return self.sync.late_count(now)

    async def of_customer(self, customer: str, *, limit: int = 200) -> list[TimerView]:
        """See :meth:`FlowStore.of_customer`."""
        return self.sync.of_customer(customer, limit=limit)

    async def aclose(self) -> None:
        """Close the store (if it opened its connection)."""
        self.sync.close()
