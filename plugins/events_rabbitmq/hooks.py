"""Registers the ``rabbitmq`` event source."""

from __future__ import annotations

from pigeon import EventSourceRegistry, hookimpl
from plugins.event_queues import factory
from plugins.events_rabbitmq.config import QueueConfig

__all__ = ["register_event_sources"]


@hookimpl
def register_event_sources(event_sources: EventSourceRegistry) -> None:
    """Register ``rabbitmq``."""
    make = factory("rabbitmq", "plugins.events_rabbitmq.source", "QueueSource", "aio-pika", "rabbitmq")
    event_sources.add(
        "rabbitmq", make, QueueConfig, description="order and customer events from a RabbitMQ queue"
    )
