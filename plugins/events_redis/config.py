"""The ``redis_streams`` event source's options (importable without the ``redis`` package)."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["StreamConfig"]


class StreamConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[service.flows.source] plugin = "redis_streams"`` options."""

    url: str = "redis://127.0.0.1:6379/0"
    """Where Redis 5+ (or Valkey) listens: ``redis://[user:password@]host:port/db``, ``rediss://`` for TLS."""
    stream: str = "pigeon:events"
    """The stream the shop appends events to (``XADD pigeon:events * event '{"id": …}'``)."""
    group: str = "pigeon"
    """The consumer group (created at the stream's end if missing): every service of one store reads in it."""
    consumer: str = "serve"
    """This service's name in the group: after a crash, a restart under the same name first takes
    the events it was given and never acknowledged."""
    field: str = "event"
    """The entry's field holding the event's JSON (one element of ``POST /v1/events``)."""
    batch: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500
    """Entries read per request."""
    block: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    """Seconds a read waits for new entries."""
