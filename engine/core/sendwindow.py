"""Allowed sending hours: when a window is open, and when it next opens, in a recipient's time zone."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from functools import lru_cache
from typing import Final
from zoneinfo import ZoneInfo

__all__ = ["ALL_DAY", "SendWindow", "timezone_for"]

_SPEC: Final = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
CHINA_TZ: Final = "Asia/Shanghai"


@dataclass(frozen=True, slots=True)
class SendWindow:
    """Daily hours ``start``–``end`` (end excluded) in ``timezone``; may cross midnight (22:00-06:00);
    ``00:00-24:00`` is all day. ``more``: further ranges of the same days — the seeds' lunch and
    evening windows, ``"11:30-13:00, 19:30-21:30"`` — open when any range is."""

    start: time
    end: time
    timezone: str = CHINA_TZ
    more: tuple[tuple[time, time], ...] = ()

    @classmethod
    def parse(cls, spec: str, timezone: str = CHINA_TZ) -> SendWindow:
        """``"08:00-21:00"`` (or several, comma-separated) → a window; ValueError saying what to write."""
        ranges = [_range(part, spec) for part in spec.split(",")]
        ZoneInfo(timezone)  # raises for an unknown zone
        (start, end), *more = ranges
        return cls(start, end, timezone, tuple(more))

    @property
    def ranges(self) -> tuple[tuple[time, time], ...]:
        """Every ``(start, end)`` of the window."""
        return ((self.start, self.end), *self.more)

    def __str__(self) -> str:
        return ", ".join(f"{a:%H:%M}-{b:%H:%M}" for a, b in self.ranges) + f" {self.timezone}"

    def is_open(self, now: float) -> bool:
        """Whether ``now`` (epoch seconds) falls inside the window."""
        t = datetime.fromtimestamp(now, ZoneInfo(self.timezone)).time()
        return any(_inside(t, a, b) for a, b in self.ranges)

    def next_open(self, now: float) -> float:
        """``now`` if the window is open, else the epoch second it next opens."""
        if self.is_open(now):
            return now
        tz = ZoneInfo(self.timezone)
        local = datetime.fromtimestamp(now, tz)
        openings = []
        for start, _ in self.ranges:
            opening = datetime.combine(local.date(), start, tzinfo=tz)
            if opening <= local:
                opening = datetime.combine(local.date() + timedelta(days=1), start, tzinfo=tz)
            openings.append(opening.timestamp())
        return min(openings)

    def describe_opening(self, now: float) -> str:
        """When it opens next, for people: ``2026-11-23 08:00 Asia/Shanghai (in 9h 12m)``."""
        at = self.next_open(now)
        local = datetime.fromtimestamp(at, ZoneInfo(self.timezone))
        wait = int(at - now)
        return f"{local:%Y-%m-%d %H:%M} {self.timezone} (in {wait // 3600}h {wait % 3600 // 60:02d}m)"


ALL_DAY: Final = SendWindow(time(0, 0), time(0, 0), CHINA_TZ)
"""A window that is always open."""


def _range(part: str, spec: str) -> tuple[time, time]:
    """One ``HH:MM-HH:MM`` of ``spec``; ValueError saying what to write otherwise."""
    m = _SPEC.match(part)
    if not m:
        raise ValueError(f'{spec!r} is not a window: write e.g. "08:00-21:00" or "11:30-13:00, 19:30-21:30"')
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if not (0 <= h1 <= 23 and 0 <= h2 <= 24 and 0 <= m1 <= 59 and 0 <= m2 <= 59) or (h2 == 24 and m2):
        raise ValueError(f"{part.strip()!r} has an hour or minute out of range")
    if (h1, m1) == (h2, m2):
        raise ValueError(f"{part.strip()!r} is empty: start and end are the same time")
    return time(h1, m1), time(0, 0) if h2 == 24 else time(h2, m2)


def _inside(t: time, start: time, end: time) -> bool:
    if start < end:
        return start <= t < end
    return t >= start or t < end  # crosses midnight (or ends at 24:00)


@lru_cache(maxsize=1024)
def timezone_for(e164: str) -> str:
    """The time zone of an international number (its country's first), via ``phonenumbers``."""
    import phonenumbers
    from phonenumbers import timezone as pn_tz

    try:
        zones = pn_tz.time_zones_for_number(phonenumbers.parse(e164, None))
    except phonenumbers.NumberParseException:
        return CHINA_TZ
    zone = zones[0] if zones else CHINA_TZ
    try:
        ZoneInfo(zone)
    except (KeyError, ValueError):
        return CHINA_TZ
    return zone if zone != "Etc/Unknown" else CHINA_TZ
