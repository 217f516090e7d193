"""Registers the ``rabbitmq`` event source."""

from __future__ import annotations

from typing import cast

from pigeon import EventSource, EventSourceContext, EventSourceRegistry, hookimpl
from plugins.event_queues import client_module
from plugins.events_rabbitmq.config import QueueConfig

__all__ = ["register_event_sources"]


def _make(config: QueueConfig, ctx: EventSourceContext) -> EventSource:
    source = client_module("rabbitmq", "plugins.events_rabbitmq.source", "aio-pika", "rabbitmq")
    return cast(EventSource, source.QueueSource(config, ctx))


@hookimpl
def register_event_sources(event_sources: EventSourceRegistry) -> None:
    """Register ``rabbitmq``."""
    event_sources.add(
        "rabbitmq", _make, QueueConfig, description="order and customer events from a RabbitMQ queue"
    )
