"""The gateway contract: what a gateway plugin returns, what it is given, and what it must answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from engine.messages import MessageBatch, SubmitResult

__all__ = ["Gateway", "GatewayContext"]


@dataclass(frozen=True, slots=True)
class GatewayContext:
    """What a gateway factory gets besides its config."""

    name: str
    """The gateway's name in the engine config (``[gateways.<name>]``)."""
    base_dir: Path
    """Directory of the engine config file: relative paths resolve against it."""
    run_dir: Path
    """Directory of the current run, for gateways that write files."""


@runtime_checkable
class Gateway(Protocol):
    """Sends batches of messages to one provider over one pooled connection (or a few).

    A :class:`~engine.messages.MessageBatch` holds one carrier's messages as columns (``ids``,
    ``tos``, ``texts``, ``parts``); iterating it yields :class:`~engine.messages.Message` structs.
    ``send`` answers with one :class:`SubmitResult` per message, index-aligned with the batch.
    Per-message refusals are results, not exceptions; a failure of the whole request raises a
    :class:`~engine.errors.GatewayError`. Library exceptions never escape a gateway.
    """

    name: str
    max_batch: int
    """Messages per request (1 for one-per-request APIs)."""
    idempotent: bool
    """Whether sending the same message id twice is safe (the provider deduplicates)."""

    async def send(self, batch: MessageBatch) -> Sequence[SubmitResult]:
        """Submit ``batch`` (at most ``max_batch`` messages) and report each message's outcome."""

    async def aclose(self) -> None:
        """Close connections and flush files; called once at the end of a run."""
