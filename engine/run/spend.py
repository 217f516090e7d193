"""A campaign's spend cap while it sends: each request's cost is counted at its hand-over, and the
request that would cross the cap is never handed over (the run halts, the rest stays pending)."""

from __future__ import annotations

from collections.abc import Mapping

from engine.core.errors import RunHalt
from engine.core.messages import MessageBatch
from engine.observability.metrics import NO_METRICS, Metrics

__all__ = ["SPEND_CAP", "SpendCapReached", "SpendMeter", "cost_of"]

SPEND_CAP = "spend_cap"
"""The halt reason (and the ``pending`` reason of the recipients left) when the cap is reached."""


class SpendCapReached(RunHalt):
    """The next request would take the campaign over ``policy.spend_cap``: it is not handed over."""

    reason = SPEND_CAP


def cost_of(parts: Mapping[str, int], prices: Mapping[str, float]) -> float:
    """Billed parts per carrier, priced."""
    return sum(n * prices.get(c, 0.0) for c, n in parts.items())


class SpendMeter:
    """What a run may still spend, and what it has: pure, called at each first hand-over.

    ``cap`` is the campaign's ``policy.spend_cap``, ``spent`` what earlier runs handed over (from
    the ledger), ``share`` the part of the rest this process may use (``1/count`` for a shard).
    """

    __slots__ = ("cap", "currency", "limit", "metrics", "prices", "spent", "used")

    def __init__(
        self,
        cap: float,
        prices: Mapping[str, float],
        *,
        spent: float = 0.0,
        share: float = 1.0,
        currency: str = "",
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self.cap, self.prices, self.spent, self.currency, self.metrics = cap, prices, spent, currency, metrics
        self.limit = max(0.0, cap - spent) * share
        """What this process may hand over in this run."""
        self.used = 0.0
        """What it handed over so far."""

    def charge(self, batch: MessageBatch, campaign: str = "") -> None:
        """Count ``batch``'s cost; raise :class:`SpendCapReached` (nothing counted) when it would
        cross the limit."""
        price = self.prices.get(batch.carrier, 0.0)
        if not price:
            return
        cost = batch.total_parts() * price
        if self.used + cost > self.limit + 1e-9:
            cur = f" {self.currency}" if self.currency else ""
            total = self.spent + self.used
            raise SpendCapReached(
                f"campaign {campaign!r} reached its spend cap: {total:,.2f}{cur} handed over of "
                f"policy.spend_cap = {self.cap:,.2f}{cur}, and the next request ({len(batch)} "
                f"messages, {cost:,.2f}{cur}) would cross it. Nothing more is handed over; everyone "
                f"not sent is pending (reason {SPEND_CAP}): raise spend_cap, then `pigeon resume "
                f"{campaign}`"
            )
        self.used += cost
        self.metrics.spend(batch.carrier, cost)
