"""Registers the ``nats_jetstream`` event source."""

from __future__ import annotations

from pigeon import EventSourceRegistry, hookimpl
from plugins.event_queues import factory
from plugins.events_nats.config import JetStreamConfig

__all__ = ["register_event_sources"]


@hookimpl
def register_event_sources(event_sources: EventSourceRegistry) -> None:
    """Register ``nats_jetstream``."""
    make = factory("nats_jetstream", "plugins.events_nats.source", "JetStreamSource", "nats-py", "nats")
    event_sources.add(
        "nats_jetstream",
        make,
        JetStreamConfig,
        description="order and customer events from a NATS JetStream stream",
    )
