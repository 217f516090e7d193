"""Time as an injected dependency, so rate limits and windows are testable without sleeping."""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    """Where the engine reads time from."""

    def monotonic(self) -> float:
        """Seconds on a monotonic clock (for rates and timeouts)."""

    def time(self) -> float:
        """Seconds since the epoch (for records and calendar windows)."""


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def time(self) -> float:
        """``time.time()``."""
        return time.time()


class FakeClock:
    """A clock that moves only when told to: ``advance(seconds)``."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._wall = start
        self._mono = 0.0

    def monotonic(self) -> float:
        """The fake monotonic time."""
        return self._mono

    def time(self) -> float:
        """The fake wall time."""
        return self._wall

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._mono += seconds
        self._wall += seconds
