"""The ``blackhole`` gateway and its hook implementation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import msgspec

from pigeon import ACCEPTED, GatewayContext, GatewayRegistry, MessageBatch, SubmitResult, hookimpl

__all__ = ["BlackholeConfig", "BlackholeGateway"]


class BlackholeConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``plugin = "blackhole"`` options."""

    max_batch: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    """Messages per (pretend) request."""


class BlackholeGateway:
    """Accepts everything instantly; ``accepted`` and ``parts`` count what it swallowed."""

    idempotent = True

    def __init__(self, config: BlackholeConfig, ctx: GatewayContext) -> None:
        self.name = ctx.name
        self.max_batch = config.max_batch
        self.accepted = 0
        self.parts = 0
        self.requests = 0

    async def send(self, batch: MessageBatch) -> Sequence[SubmitResult]:
        """Accept the whole batch."""
        self.requests += 1
        self.accepted += len(batch)
        self.parts += batch.total_parts()
        return [ACCEPTED] * len(batch)

    async def aclose(self) -> None:
        """Nothing to close."""


@hookimpl
def register_gateways(gateways: GatewayRegistry) -> None:
    """Register ``blackhole``."""
    gateways.add("blackhole", BlackholeGateway, BlackholeConfig, description="accepts and counts everything")
