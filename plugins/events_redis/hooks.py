"""Registers the ``redis_streams`` event source."""

from __future__ import annotations

from typing import cast

from pigeon import EventSource, EventSourceContext, EventSourceRegistry, hookimpl
from plugins.event_queues import client_module
from plugins.events_redis.config import StreamConfig

__all__ = ["register_event_sources"]


def _make(config: StreamConfig, ctx: EventSourceContext) -> EventSource:
    source = client_module("redis_streams", "plugins.events_redis.source", "redis-py's client", "redis")
    return cast(EventSource, source.StreamSource(config, ctx))


@hookimpl
def register_event_sources(event_sources: EventSourceRegistry) -> None:
    """Register ``redis_streams``."""
    event_sources.add(
        "redis_streams", _make, StreamConfig, description="order and customer events from a Redis Stream"
    )
