"""The contract of an event source plugin: batches of raw events from a queue, acknowledged once taken."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["EventDelivery", "EventSource", "EventSourceContext"]


@dataclass(frozen=True, slots=True)
class EventDelivery:
    """A batch of events as the queue delivered them.

    ``payloads``: each event as its JSON bytes — the shape of one element of ``POST /v1/events``
    (``id``, ``type``, ``phone``, ``order_id``, ``at``, ``fields``). ``ack``: called once the engine
    has taken the whole batch (committed to its store, duplicates by event id included), so a crash
    before it makes the queue deliver the batch again — and the event ids make that harmless.
    """

    payloads: Sequence[bytes]
    ack: Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class EventSourceContext:
    """What an event source's factory gets beside its options."""

    name: str
    """The source's name in the engine file (``[service.flows.source]``'s plugin)."""


class EventSource(Protocol):
    """Events from outside (NATS, Redis Streams, RabbitMQ…) for the flows of ``pigeon serve``.

    :meth:`deliveries` is iterated by one task for the service's life; it waits (without blocking
    the loop) when the queue is empty, and raises :class:`~engine.core.errors.EngineError` with
    what to fix when the queue cannot be reached (the service logs it and tries again).
    """

    def deliveries(self) -> AsyncIterator[EventDelivery]:
        """Batches of events, as they come."""
        ...

    async def aclose(self) -> None:
        """Let go of the connection."""
        ...
