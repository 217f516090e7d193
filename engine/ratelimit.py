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
    the window slightly (3% by default) so that jitter between sender and provider cannot make two
    requests look closer together than they were sent — the first requests of a run also open
    their connections, and arrive a few milliseconds later than the ones that follow on them.
    """

    __slots__ = ("_log", "_used", "ceiling", "rate", "window")

    def __init__(self, rate: float, window: float = 1.0, margin: float = 0.03) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if window <= 0:
            raise ValueError("window must be positive")
        self.rate = float(rate)
        self.ceiling = self.rate
        """The configured rate; :meth:`slow_down` lowers ``rate`` below it, :meth:`recover` climbs back."""
        self.window = window * (1 + margin)
        self._log: deque[tuple[float, int]] = deque()
        self._used = 0

    def earliest(self, at: float, parts: int) -> float:
        """The first time ≥ ``at`` when ``parts`` may go, without booking them."""
        log = self._log
        t = max(at, log[-1][0]) if log else at
        used = self._used
        need = min(parts, self.rate)  # an oversized request waits for an empty window
        for ts, n in log:
            if ts <= t - self.window:
                used -= n  # already out of the window at t
            elif used + need > self.rate:
                used -= n
                t = max(t, ts + self.window)
            else:
                break
        return t

    def book(self, at: float, parts: int) -> None:
        """Record ``parts`` sent at ``at`` (a time :meth:`earliest` allowed)."""
        log = self._log
        while log and log[0][0] <= at - self.window:
            self._used -= log.popleft()[1]
        log.append((max(at, log[-1][0]) if log else at, parts))
        self._used += parts

    def reserve(self, now: float, parts: int) -> float:
        """Book ``parts`` at the earliest allowed time and return the seconds to wait (0 if none)."""
        at = self.earliest(now, parts)
        self.book(at, parts)
        return at - now

    @staticmethod
    def reserve_all(limiters: list[SlidingWindowLimiter], now: float, parts: int) -> float:
        """Book ``parts`` on every limiter at the first time all of them allow; the seconds to wait."""
        at = now
        while True:
            later = max(lim.earliest(at, parts) for lim in limiters)
            if later <= at:
                break
            at = later
        for lim in limiters:
            lim.book(at, parts)
        return at - now

    def slow_down(self, factor: float = 0.5, floor: float = 1.0) -> None:
        """The provider said "too fast" (429, throttled): halve the rate (multiplicative decrease)."""
        self.rate = max(floor, self.rate * factor)

    def recover(self, step: float = 0.05) -> None:
        """A request went through: climb back towards the configured rate (additive increase)."""
        self.rate = min(self.ceiling, self.rate + self.ceiling * step)

    def used(self, now: float) -> int:
        """Parts booked in the window ending at ``now``."""
        return sum(p for ts, p in self._log if now - self.window < ts <= now)
