"""Registers the ``redis_streams`` event source."""

from __future__ import annotations

from pigeon import ConfigError, EventSource, EventSourceContext, EventSourceRegistry, hookimpl
from plugins.events_redis.config import StreamConfig

__all__ = ["register_event_sources"]


def _make(config: StreamConfig, ctx: EventSourceContext) -> EventSource:
    import sniffio

    if sniffio.current_async_library() != "asyncio":  # (called in the service's loop)
        raise ConfigError(
            "<engine config>",
            "backend",
            "the 'redis_streams' event source needs the asyncio backend (redis-py is asyncio-only): "
            'set backend = "asyncio" in the engine file, or `pigeon serve --backend asyncio`',
        )
    try:  # the client is an optional extra: every other plugin loads without it
        from plugins.events_redis.source import StreamSource
    except ImportError as exc:
        raise ConfigError(
            "<engine config>",
            "service.flows.source.plugin",
            f"'redis_streams' needs the redis client ({exc}): pip install 'pigeon-sms[redis]'",
        ) from exc
    return StreamSource(config, ctx)


@hookimpl
def register_event_sources(event_sources: EventSourceRegistry) -> None:
    """Register ``redis_streams``."""
    event_sources.add(
        "redis_streams", _make, StreamConfig, description="order and customer events from a Redis Stream"
    )
