"""Registers the ``nats_jetstream`` event source."""

from __future__ import annotations

from typing import cast

from pigeon import EventSource, EventSourceContext, EventSourceRegistry, hookimpl
from plugins.event_queues import client_module
from plugins.events_nats.config import JetStreamConfig

__all__ = ["register_event_sources"]


def _make(config: JetStreamConfig, ctx: EventSourceContext) -> EventSource:
    source = client_module("nats_jetstream", "plugins.events_nats.source", "nats-py", "nats")
    return cast(EventSource, source.JetStreamSource(config, ctx))


@hookimpl
def register_event_sources(event_sources: EventSourceRegistry) -> None:
    """Register ``nats_jetstream``."""
    event_sources.add(
        "nats_jetstream",
        _make,
        JetStreamConfig,
        description="order and customer events from a NATS JetStream stream",
    )
