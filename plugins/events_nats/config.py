"""The ``nats_jetstream`` event source's options (importable without the ``nats-py`` package)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = ["JetStreamConfig"]


class JetStreamConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[service.flows.source] plugin = "nats_jetstream"`` options."""

    url: str = "nats://127.0.0.1:4222"
    """Where NATS (JetStream on) listens: ``nats://[user:password@]host:port``; ``tls://`` for TLS."""
    stream: str = "PIGEON_EVENTS"
    """The JetStream stream holding the events (created, file-backed, if missing)."""
    subject: str = "pigeon.events"
    """The subject the shop publishes events to (``nats pub pigeon.events '{"id": …}'``); the
    stream is created with it when missing, and the consumer reads only it."""
    durable: str = "pigeon"
    """The durable consumer's name: every service of one store reads through it; what was
    delivered and never acknowledged (a crash) is delivered again after ``ack_wait``."""
    deliver: Literal["new", "all"] = "new"
    """Where a new durable consumer starts: at the stream's end (``new``), or at its first event
    (``all``: a back-fill of what the stream holds — the event ids keep repeats harmless)."""
    ack_wait: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    """Seconds an unacknowledged event waits before JetStream delivers it again (a crashed service's)."""
    batch: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500
    """Events fetched per request."""
    block: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    """Seconds a fetch waits for new events."""
