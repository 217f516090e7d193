"""The ``rabbitmq`` event source's options (importable without the ``aio-pika`` package)."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["QueueConfig"]


class QueueConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[service.flows.source] plugin = "rabbitmq"`` options."""

    url: str = "amqp://guest:guest@127.0.0.1:5672/"
    """Where RabbitMQ listens: ``amqp://user:password@host:port/vhost``, ``amqps://`` for TLS."""
    queue: str = "pigeon.events"
    """The queue holding the events (declared durable if missing); each message's body is one event's JSON."""
    exchange: str = ""
    """An exchange to bind the queue to (it must exist); empty: the shop publishes to the queue
    through the default exchange (routing key = the queue's name)."""
    routing_key: str = ""
    """The binding's routing key (``exchange`` set); empty: the queue's name."""
    batch: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500
    """Most events unacknowledged at once (the channel's prefetch) and taken per batch."""
    block: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    """Seconds between two looks at the connection while no event comes."""
