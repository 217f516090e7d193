"""Unix timestamps from outside (webhooks, stored rows): seconds checked, milliseconds detected, no crash.

Pigeon's timestamps are Unix **seconds** (a float). A provider that sends milliseconds (or
microseconds, nanoseconds) is read right: a value too far in the future to be seconds, which
divided by 1,000 (once, twice or three times) lands in the sane range, is taken in that unit.
Anything else outside the sane range — before :data:`EARLIEST` (2000-01-01), more than
:data:`FUTURE_SLACK` ahead of now, negative, NaN or infinite — is not a time.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

__all__ = ["EARLIEST", "FUTURE_SLACK", "epoch_seconds", "iso_utc"]

EARLIEST = 946_684_800.0
"""2000-01-01T00:00:00Z: nothing Pigeon records happened before."""
FUTURE_SLACK = 86_400.0
"""Seconds a timestamp may be ahead of the receiving clock (skewed clocks, time zones misread)."""


def epoch_seconds(value: float | int, now: float) -> float | None:
    """``value`` as Unix seconds, or None when it is not a sane time.

    ``0`` is "not given" and stays ``0.0``. Milliseconds, microseconds and nanoseconds since the
    epoch are converted to seconds. The sane range is ``[EARLIEST, now + FUTURE_SLACK]``.
    """
    try:
        v = float(value)
    except (OverflowError, ValueError, TypeError):
        return None
    if v == 0.0:
        return 0.0
    if not math.isfinite(v) or v < 0:
        return None
    latest = now + FUTURE_SLACK
    for _ in range(4):  # s, ms, µs, ns
        if EARLIEST <= v <= latest:
            return v
        if v < EARLIEST:
            return None
        v /= 1000.0
    return None


def iso_utc(ts: float, fmt: str | None = None) -> str:
    """``ts`` formatted in UTC (ISO 8601, or ``fmt``); a value no calendar holds is shown as a number.

    Stored rows may hold anything an older version accepted (a millisecond value read as seconds
    is the year 57888): milliseconds are shown as the time they are, and showing never fails.
    """
    seconds = epoch_seconds(ts, time.time())  # a stored millisecond value shows as its time
    try:
        when = datetime.fromtimestamp(seconds or ts, UTC)
    except (OverflowError, ValueError, OSError, TypeError):
        return f"{ts!r} (not a time)"
    return when.strftime(fmt) if fmt else when.isoformat()
