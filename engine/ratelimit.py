"""A pure token bucket in SMS parts per second: callers pass ``now`` and get back how long to wait."""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """Holds up to ``burst`` parts, refilled at ``rate`` parts per second.

    :meth:`reserve` always books the request and returns the delay after which it may be sent,
    so a request larger than the burst is still served (it waits until the tokens it owes have
    accrued). Over any interval of length ``t`` the parts released never exceed
    ``max(burst, largest request) + rate * t``: callers keep requests within ``burst``
    to hold the stricter bound.
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float | None = None, now: float = 0.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else rate)
        if self.burst <= 0:
            raise ValueError("burst must be positive")
        self._tokens = self.burst
        self._last = now

    def reserve(self, now: float, parts: int) -> float:
        """Book ``parts`` and return the seconds to wait before sending them (0 if none)."""
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
        self._tokens -= parts
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self.rate

    def available(self, now: float) -> float:
        """Tokens available at ``now`` without booking anything (negative while in debt)."""
        if now > self._last:
            return min(self.burst, self._tokens + (now - self._last) * self.rate)
        return self._tokens
