"""The priority lane's budgets: each carrier's rate split into a marketing part and a reserved part.

A blast books its requests ahead on its limiter (each in-flight slot reserves the next free time),
so a transactional message that shared that limiter would queue behind the blast's reservations.
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
from collections.abc import Mapping
from dataclasses import dataclass, field

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from engine.config import EngineConfig
from engine.messages import MessageBatch
from engine.ratelimit import SlidingWindowLimiter
from engine.sender import Lane, LaneItem

__all__ = ["BorrowingLimiter", "PriorityBudgets", "PriorityLane", "split_budgets"]


class BorrowingLimiter(SlidingWindowLimiter):
    """A sliding window that, when full, books on ``lender`` instead if the lender allows sooner."""

    __slots__ = ("lender",)

    def __init__(self, rate: float, lender: SlidingWindowLimiter | None) -> None:
        super().__init__(rate)
        self.lender = lender

    def earliest(self, at: float, parts: int) -> float:
        """The sooner of this window's and the lender's first allowed time."""
        own = super().earliest(at, parts)
        if own <= at or self.lender is None:
            return own
        return min(own, self.lender.earliest(at, parts))

    def book(self, at: float, parts: int) -> None:
        """Book on this window when it allows ``at``, else on the lender."""
        if self.lender is None or super().earliest(at, parts) <= at:
            super().book(at, parts)
        elif self.lender.earliest(at, parts) <= at:
            self.lender.book(at, parts)
        else:  # neither allows ``at`` (a caller that did not ask first): keep the own window's order
            super().book(at, parts)


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
