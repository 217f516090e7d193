"""A pure rate limiter in SMS parts per second: callers pass ``now`` and get back how long to wait."""

from __future__ import annotations

from collections import deque

__all__ = ["SlidingWindowLimiter"]


class SlidingWindowLimiter:
    """At most ``rate`` parts in *any* interval of ``window`` seconds — the way carriers and
    providers meter, so a provider never sees a second over its budget.

    :meth:`reserve` books a request and returns the delay before it may go. Reservations are kept
    (time, parts) in order; a request waits until enough of the parts sent in the last window have
    left it. A request larger than ``rate`` goes alone, once the window is empty. ``margin`` widens
    the window slightly (1% by default) so that jitter between sender and provider cannot make two
    requests look closer together than they were sent.
    """

    __slots__ = ("_log", "_used", "rate", "window")

    def __init__(self, rate: float, window: float = 1.0, margin: float = 0.01) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if window <= 0:
            raise ValueError("window must be positive")
        self.rate = float(rate)
        self.window = window * (1 + margin)
        self._log: deque[tuple[float, int]] = deque()
        self._used = 0

    def reserve(self, now: float, parts: int) -> float:
        """Book ``parts`` and return the seconds to wait before sending them (0 if none)."""
        log = self._log
        t = max(now, log[-1][0]) if log else now
        while log and log[0][0] <= t - self.window:
            self._used -= log.popleft()[1]
        need = min(parts, self.rate)  # an oversized request waits for an empty window
        while log and self._used + need > self.rate:
            oldest, n = log.popleft()
            self._used -= n
            t = max(t, oldest + self.window)
        log.append((t, parts))
        self._used += parts
        return t - now

    def used(self, now: float) -> int:
        """Parts booked in the window ending at ``now``."""
        return sum(p for ts, p in self._log if now - self.window < ts <= now)
