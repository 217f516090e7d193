"""Registers the ``redis_streams`` event source."""

from __future__ import annotations

from pigeon import EventSourceRegistry, hookimpl
from plugins.event_queues import factory
from plugins.events_redis.config import StreamConfig

__all__ = ["register_event_sources"]


@hookimpl
def register_event_sources(event_sources: EventSourceRegistry) -> None:
    """Register ``redis_streams``."""
    make = factory(
        "redis_streams", "plugins.events_redis.source", "StreamSource", "redis-py's client", "redis"
    )
    event_sources.add(
        "redis_streams", make, StreamConfig, description="order and customer events from a Redis Stream"
    )
