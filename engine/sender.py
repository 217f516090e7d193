"""Per-gateway send lanes: take carrier-grouped messages, pace them per carrier, call the gateway."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from engine.clock import Clock
from engine.errors import GatewayError
from engine.gateway import Gateway
from engine.messages import MessageBatch
from engine.ratelimit import SlidingWindowLimiter
from engine.report import RunRecorder

__all__ = ["Accumulator", "LaneItem", "run_lane"]

LaneItem = MessageBatch
"""What crosses into a lane: a batch of one carrier's messages."""


class Accumulator:
    """Packs one carrier's messages into requests of at most ``size`` (a gateway's ``max_batch``).

    Pure and synchronous: :meth:`add` returns the batches to send now and keeps the rest;
    :meth:`flush` returns what is left at the end. Small per-carrier groups are joined until they
    fill a request; a group of at least half a request goes as it is (no copy, no wait). So every
    request but the last carries at least ``size // 2`` messages, whatever the carrier mix.
    """

    __slots__ = ("_count", "_pending", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._pending: list[MessageBatch] = []
        self._count = 0

    def add(self, messages: MessageBatch) -> list[MessageBatch]:
        """Take ``messages``; return the batches of ``size`` that are now full.

        Incoming batches are cut, never the merged one, so each message is copied once on its
        way to a request (twice for the few at a cut).
        """
        full: list[MessageBatch] = []
        size = self.size
        if not self._count and size // 2 <= len(messages) <= size:
            return [messages]  # big enough already: no copy, no wait
        while len(messages):
            room = size - self._count
            if len(messages) < room:
                self._pending.append(messages)
                self._count += len(messages)
                break
            self._pending.append(messages[:room] if len(messages) > room else messages)
            full.append(MessageBatch.concat(self._pending))
            self._pending, self._count = [], 0
            messages = messages[room:]
        return full

    def flush(self) -> list[MessageBatch]:
        """Whatever is pending, as one batch (or none)."""
        if not self._count:
            return []
        merged = MessageBatch.concat(self._pending)
        self._pending, self._count = [], 0
        return [merged]


async def run_lane(
    gateway: Gateway,
    inbox: MemoryObjectReceiveStream[LaneItem],
    limiters: Mapping[str, SlidingWindowLimiter],
    clock: Clock,
    recorder: RunRecorder,
    on_handover: Callable[[MessageBatch], None] | None = None,
) -> None:
    """Send everything that arrives in ``inbox`` through ``gateway``, one request at a time.

    Requests hold at most ``gateway.max_batch`` messages of one carrier. A carrier's limiter (when
    it has a rate) books each request's billed parts before it goes, so no second ever carries more
    than the rate. ``on_handover`` sees each
    request just before it goes (frequency caps count a message then). A failed request is
    recorded with its reason, never dropped silently.
    """
    size = gateway.max_batch
    async with inbox:
        async for messages in inbox:
            carrier = messages.carrier
            limiter = limiters.get(carrier)
            for start in range(0, len(messages), size):
                chunk = messages[start : start + size]
                if limiter is not None:
                    delay = limiter.reserve(clock.monotonic(), chunk.total_parts())
                    if delay > 0:
                        await anyio.sleep(delay)
                if on_handover is not None:
                    on_handover(chunk)
                try:
                    results = await gateway.send(chunk)
                except GatewayError as exc:
                    recorder.failed(gateway.name, chunk, f"gateway_error:{type(exc).__name__}")
                else:
                    recorder.results(gateway.name, chunk, results)
