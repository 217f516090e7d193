"""Delivery reports that came before their message's submit answer, held and tried again.

The service applies a report to its ledger first, then to the messages it keeps in memory: memory
is updated with an answer before the ledger commits it, so a report the ledger matched has found
its message in memory too, and only what the ledger missed is parked.

A provider may push a receipt before Pigeon has recorded the answer that gave the message its
provider id (Tencent and Aliyun post as soon as the carrier answers; the submit answer may still be
on its way, or its hand-over not yet committed). Such a report matches nothing yet. Dropped, it
would be lost for good — its repeat, if the provider sends one, is dropped as a duplicate by the
webhook parser. So the service parks it here and tries it again every :data:`RETRY_EVERY` seconds
until it matches or :data:`TTL` seconds have passed (a receipt of another system's message, or of a
request that timed out: ``pigeon settle`` reaches those). Bounded: past :data:`LIMIT` parked
reports the oldest go first.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Final

from engine.core.messages import DeliveryReport

__all__ = ["LIMIT", "RETRY_EVERY", "TTL", "EarlyReports", "Parked"]

TTL: Final = 120.0
"""Seconds a report that matched nothing is kept and tried again."""
RETRY_EVERY: Final = 0.25
"""Seconds between two tries of the parked reports."""
LIMIT: Final = 50_000
"""Most reports parked at once."""


Parked = tuple[float, DeliveryReport]
"""When a report first came, and the report."""


class EarlyReports:
    """Reports with a provider id that matched no message yet, with the time each first came."""

    def __init__(self, ttl: float = TTL, limit: int = LIMIT) -> None:
        self.ttl = ttl
        self.limit = limit
        self._items: deque[Parked] = deque()
        self.expired = 0
        """Reports dropped after ``ttl`` without a match (or pushed out past ``limit``)."""

    def __len__(self) -> int:
        return len(self._items)

    def park(self, reports: Sequence[DeliveryReport], now: float) -> None:
        """Keep ``reports`` (those with a provider id: the others can never match later)."""
        for r in reports:
            if r.provider_id:
                self._items.append((now, r))
        while len(self._items) > self.limit:
            self._items.popleft()
            self.expired += 1

    def take(self, now: float) -> list[Parked]:
        """Every parked report still within its time (the expired are dropped)."""
        items, self._items = list(self._items), deque()
        fresh = [p for p in items if now - p[0] <= self.ttl]
        self.expired += len(items) - len(fresh)
        return fresh

    def put_back(self, items: Sequence[Parked]) -> None:
        """Park again what :meth:`take` gave that still matched nothing (keeping when it came)."""
        self._items.extendleft(reversed(items))
        while len(self._items) > self.limit:
            self._items.popleft()
            self.expired += 1
