"""Stage ``route``: give each number its carrier from the prefix table, then from plugins."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from contextlib import suppress
from itertools import repeat
from operator import floordiv, itemgetter
from typing import Protocol

from engine.core.carriers import INTL, PrefixTable
from engine.core.messages import RejectReason
from engine.pipeline.runner import Batch, positions

__all__ = ["CarrierResolver", "Route"]

_PREFIX5 = itemgetter(slice(0, 5))
_SUBSCRIBER = 10**6
"""A national key divided by this is its 5-digit prefix."""


class CarrierResolver(Protocol):
    """Overrides carriers for a whole batch (number portability lookups, learned DLR codes).

    Registered through the ``register_carrier_resolvers`` hook and called once per batch, never
    per number.
    """

    def resolve(self, numbers: Sequence[str], carriers: list[str]) -> None:
        """Replace entries of ``carriers`` (index-aligned with ``numbers``) where the prefix is wrong.

        ``numbers`` holds 11-digit Chinese mobiles and ``+``-prefixed E.164 numbers of other
        countries; write only carrier codes the engine knows (``cm cu ct cbn intl``).
        """


class Route:
    """Fills ``batch.carriers``; rejects unallocated, satellite and special ranges, and carriers
    no gateway serves."""

    name = "route"

    def __init__(
        self,
        table: PrefixTable,
        routable: Collection[str],
        resolvers: Sequence[CarrierResolver] = (),
    ) -> None:
        self.table = table
        self.routable = frozenset(routable)
        self.resolvers = tuple(resolvers)
        # The route as a list indexed by the 5-digit prefix as an int: the batch's number keys
        # (computed by normalize) route with one integer division and one index each.
        # A national number has 11 digits, so its key // 10**6 is its 5-digit prefix; a key past the
        # list (an international number) raises IndexError and the batch takes the string path.
        route = table.route
        self._by_prefix: list[str | None] | None = None
        if route and all(len(p) == 5 and p.isascii() and p.isdigit() for p in route):
            self._by_prefix = [None] * (max(map(int, route)) + 1)
            for prefix, carrier in route.items():
                self._by_prefix[int(prefix)] = carrier

    def process(self, batch: Batch) -> None:
        """Route every number of the batch."""
        numbers = batch.numbers
        carriers: list[str | None] | None = None
        if self._by_prefix is not None:
            prefixes = map(floordiv, batch.number_keys(), repeat(_SUBSCRIBER))
            with suppress(IndexError):  # an international number: its key is past every prefix
                carriers = list(map(self._by_prefix.__getitem__, prefixes))
        if carriers is None:
            carriers = list(map(self.table.route.get, map(_PREFIX5, numbers)))
        batch.carriers = carriers  # type: ignore[assignment]  # holes filled or dropped below
        if None in carriers:
            idx: list[int] = []
            reasons: list[str] = []
            details: list[str] = []
            for i in positions(carriers, None):
                n = numbers[i]
                if n[0] == "+":
                    carriers[i] = INTL
                    continue
                reason, detail = self.table.reject_reason(n)
                idx.append(i)
                reasons.append(reason)
                details.append(detail)
            batch.drop(idx, reasons, details)
        for resolver in self.resolvers:
            resolver.resolve(batch.numbers, batch.carriers)
        routable = self.routable
        if not routable.issuperset(batch.carriers):
            gone = [i for i, c in enumerate(batch.carriers) if c not in routable]
            batch.drop(
                gone,
                RejectReason.NO_GATEWAY,
                [f"no gateway is configured for carrier {batch.carriers[i]}" for i in gone],
            )
