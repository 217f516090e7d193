"""The priority lane's budgets: each carrier's rate split into a marketing part and a reserved part.

A blast keeps its limiter full (every in-flight request is charged until its answer), so a
transactional message that shared that limiter would wait behind the blast's requests.
``pigeon serve`` therefore splits every carrier budget (``carriers.<c>.rate_per_second``) in two
sliding windows: marketing lanes get ``rate × (1 − transactional_share)``, the priority lane gets
``rate × transactional_share`` and, when that is used up, borrows whatever the marketing part has
free. The two parts never add up to more than the carrier's rate in any window, and a transactional
request finds its budget free as long as transactional traffic stays within its share. With its own
in-flight window on the same gateway (``service.transactional_in_flight``), the priority lane never
waits for a marketing batch: at most for one request already on the wire.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from engine.core.config import EngineConfig
from engine.core.messages import MessageBatch
from engine.sending.ratelimit import SlidingWindowLimiter, Ticket
from engine.sending.sender import Lane, LaneItem

__all__ = ["BorrowingLimiter", "PriorityBudgets", "PriorityLane", "split_budgets"]


class BorrowingLimiter(SlidingWindowLimiter):
    """A sliding window that, when full, charges ``lender`` instead if the lender allows sooner."""

    __slots__ = ("_borrowed", "lender")

    def __init__(self, rate: float, lender: SlidingWindowLimiter | None, *, min_rate: float = 1.0) -> None:
        super().__init__(rate, min_rate=min_rate)
        self.lender = lender
        self._borrowed: set[Ticket] = set()

    @property
    def capacity(self) -> float:
        """The largest request this window or its lender can let go."""
        return max(self.ceiling, self.lender.capacity if self.lender is not None else 0.0)

    def _own(self, at: float, parts: int) -> float:
        return super().earliest(at, parts) if parts <= self.ceiling else math.inf

    def earliest(self, at: float, parts: int) -> float:
        """The sooner of this window's and the lender's first allowed time."""
        own = self._own(at, parts)
        if own <= at or self.lender is None or parts > self.lender.capacity:
            return own
        return min(own, self.lender.earliest(at, parts))

    def take(self, at: float, parts: int) -> Ticket:
        """Charge this window when it allows ``at``, else the lender."""
        lender = self.lender
        if (
            lender is not None
            and self._own(at, parts) > at
            and parts <= lender.capacity
            and lender.earliest(at, parts) <= at
        ):
            ticket = lender.take(at, parts)
            self._borrowed.add(ticket)
            return ticket
        return super().take(at, parts)

    def done(self, ticket: Ticket, at: float) -> None:
        """The request is answered: its charge stays a window more where it was taken."""
        if ticket in self._borrowed:
            self._borrowed.discard(ticket)
            assert self.lender is not None
            self.lender.done(ticket, at)
        else:
            super().done(ticket, at)

    def cancel(self, ticket: Ticket) -> None:
        """The request never left: its charge is given back where it was taken."""
        if ticket in self._borrowed:
            self._borrowed.discard(ticket)
            assert self.lender is not None
            self.lender.cancel(ticket)
        else:
            super().cancel(ticket)


@dataclass
class PriorityBudgets:
    """The limiters of marketing lanes and of the priority lane, by carrier and by gateway."""

    marketing: dict[str, SlidingWindowLimiter] = field(default_factory=dict)
    """Carrier → the marketing part of its rate."""
    transactional: dict[str, SlidingWindowLimiter] = field(default_factory=dict)
    """Carrier → the reserved part (borrowing from the marketing part)."""
    marketing_gateways: dict[str, SlidingWindowLimiter] = field(default_factory=dict)
    """Gateway → the marketing part of its account's rate."""
    transactional_gateways: dict[str, SlidingWindowLimiter] = field(default_factory=dict)
    """Gateway → the reserved part of its account's rate."""


def _split(rate: float, share: float, blasts: int) -> tuple[SlidingWindowLimiter, SlidingWindowLimiter]:
    if share <= 0 and blasts == 1:
        shared = SlidingWindowLimiter(rate)
        return shared, shared
    marketing = SlidingWindowLimiter(rate * (1 - share) / blasts)
    return marketing, BorrowingLimiter(rate * share, marketing) if share > 0 else marketing


def split_budgets(
    config: EngineConfig, gateway_carriers: Mapping[str, tuple[str, ...]], *, blasts: int = 1
) -> PriorityBudgets:
    """Split each configured carrier and gateway rate; a gateway keeps the largest share of its carriers.

    :param gateway_carriers: gateway name → the carriers it serves (for its account's share).
    :param blasts: blasts that may run at once (``service.concurrent_blasts``): the marketing part
        is one blast's, ``rate × (1 − share) / blasts``, so that all of them together keep within it.
    """
    out = PriorityBudgets()
    shares: dict[str, float] = {c: cc.transactional_share for c, cc in config.carriers.items()}
    for carrier, cc in config.carriers.items():
        if cc.rate_per_second:
            out.marketing[carrier], out.transactional[carrier] = _split(
                cc.rate_per_second, cc.transactional_share, blasts
            )
    for name, carriers in gateway_carriers.items():
        rate = config.gateways[name].rate_per_second
        if rate:
            share = max((shares.get(c, 0.2) for c in carriers), default=0.2)
            out.marketing_gateways[name], out.transactional_gateways[name] = _split(rate, share, blasts)
    return out


class PriorityLane(Lane):
    """The transactional lane: whatever waits in its inbox when a request slot frees up goes in one
    request (per carrier, up to the gateway's ``max_batch``), so a burst of API calls never queues
    one request per message behind its own in-flight window."""

    async def run(self, inbox: MemoryObjectReceiveStream[LaneItem]) -> None:
        """Send everything that arrives in ``inbox``, coalesced; returns when it is closed and drained."""
        size = self.primary.max_batch
        slots = anyio.Semaphore(self.in_flight)
        async with inbox, anyio.create_task_group() as tg:
            async for first in inbox:
                await slots.acquire()
                waiting = [first]
                with contextlib.suppress(anyio.WouldBlock, anyio.EndOfStream):
                    while True:  # only what is there now: never waits for more
                        waiting.append(inbox.receive_nowait())
                by_carrier: dict[str, list[MessageBatch]] = {}
                for b in waiting:
                    by_carrier.setdefault(b.carrier, []).append(b)
                held = True
                for batches in by_carrier.values():
                    merged = MessageBatch.concat(batches)
                    for start in range(0, len(merged), size):
                        if not held:
                            await slots.acquire()
                        held = False
                        tg.start_soon(self._deliver, merged[start : start + size], slots)
                if held:
                    slots.release()

    async def _deliver(self, pending: MessageBatch, slots: anyio.Semaphore) -> None:
        try:
            await self._attempts(pending)
        finally:
            slots.release()
