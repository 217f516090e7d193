"""A campaign's daily limit while it sends: how many recipients today may still take, and the split
of a batch between today and the next day."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from engine.core.messages import MessageBatch

__all__ = ["DAILY_LIMIT", "DailyQuota", "day_start"]

DAILY_LIMIT = "daily_limit"
"""The ``pending`` reason of recipients read but held for a later day when a run stops waiting."""


class DailyQuota:
    """At most ``limit`` recipients per calendar day in ``timezone``: pure, ``now`` passed in.

    ``earlier`` (recipients earlier runs handed over today, from the ledger) counts for the day the
    quota was made on; ``share`` is the part of each day this process may take (``1/count`` for a
    shard). A day's count starts again at the zone's midnight.
    """

    __slots__ = ("_day", "_tz", "limit", "per_day", "timezone", "used")

    def __init__(
        self, limit: int, timezone: str, now: float, *, earlier: int = 0, share: float = 1.0
    ) -> None:
        self.per_day = int(limit * share)
        """What this process may take on a day of its own."""
        self.timezone = timezone
        self._tz = ZoneInfo(timezone)
        self._day = self._date(now)
        self.limit = int(max(0, limit - earlier) * share)
        """What it may take today (what earlier runs took today counted)."""
        self.used = 0

    def _date(self, now: float) -> date:
        return datetime.fromtimestamp(now, self._tz).date()

    def room(self, now: float) -> int:
        """Recipients today may still take."""
        day = self._date(now)
        if day != self._day:
            self._day, self.limit, self.used = day, self.per_day, 0
        return max(0, self.limit - self.used)

    def take(
        self, by_carrier: dict[str, MessageBatch], now: float
    ) -> tuple[dict[str, MessageBatch], dict[str, MessageBatch]]:
        """``by_carrier`` split into what today takes (counted) and what waits for a later day,
        in the batch's order: carriers in turn, each batch's first messages first."""
        room = self.room(now)
        now_part: dict[str, MessageBatch] = {}
        later: dict[str, MessageBatch] = {}
        for carrier, mb in by_carrier.items():
            n = min(room, len(mb))
            if n:
                now_part[carrier] = mb.take(list(range(n)))
            if n < len(mb):
                later[carrier] = mb.take(list(range(n, len(mb))))
            room -= n
            self.used += n
        return now_part, later

    def next_day(self, now: float) -> float:
        """The epoch second of the zone's next midnight after ``now``."""
        local = datetime.fromtimestamp(now, self._tz)
        return (local.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)).timestamp()

    def describe(self, at: float, now: float) -> str:
        """``at`` for people: ``2026-11-23 08:00 Asia/Shanghai (in 9h 12m)``."""
        wait = int(at - now)
        local = datetime.fromtimestamp(at, self._tz)
        return f"{local:%Y-%m-%d %H:%M} {self.timezone} (in {wait // 3600}h {wait % 3600 // 60:02d}m)"


def day_start(now: float, timezone: str) -> float:
    """The epoch second of the midnight that began ``now``'s day in ``timezone``."""
    local = datetime.fromtimestamp(now, ZoneInfo(timezone))
    return local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
