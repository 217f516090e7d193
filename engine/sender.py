"""Per-gateway send lanes: take carrier-grouped messages, pace them per carrier, call the gateway."""

from __future__ import annotations

from collections.abc import Mapping

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from engine.clock import Clock
from engine.errors import GatewayError
from engine.gateway import Gateway
from engine.messages import MessageBatch
from engine.ratelimit import TokenBucket
from engine.report import RunRecorder

__all__ = ["LaneItem", "run_lane"]

LaneItem = MessageBatch
"""What crosses into a lane: a batch of one carrier's messages."""


async def run_lane(
    gateway: Gateway,
    inbox: MemoryObjectReceiveStream[LaneItem],
    buckets: Mapping[str, TokenBucket],
    clock: Clock,
    recorder: RunRecorder,
) -> None:
    """Send everything that arrives in ``inbox`` through ``gateway``, one request at a time.

    Requests hold at most ``gateway.max_batch`` messages of one carrier. A carrier's bucket (when
    it has a rate) is charged in billed parts before each request. A failed request is recorded
    with its reason, never dropped silently.
    """
    size = gateway.max_batch
    async with inbox:
        async for messages in inbox:
            carrier = messages.carrier
            bucket = buckets.get(carrier)
            for start in range(0, len(messages), size):
                chunk = messages[start : start + size]
                if bucket is not None:
                    delay = bucket.reserve(clock.monotonic(), chunk.total_parts())
                    if delay > 0:
                        await anyio.sleep(delay)
                try:
                    results = await gateway.send(chunk)
                except GatewayError as exc:
                    recorder.failed(gateway.name, chunk, f"gateway_error:{type(exc).__name__}")
                else:
                    recorder.results(gateway.name, chunk, results)
