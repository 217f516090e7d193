"""Retry policy and circuit breaker: pure state machines that take ``now`` and return decisions."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Breaker", "RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, up to ``max_attempts`` sends of a message."""

    max_attempts: int = 5
    base: float = 0.2
    """Seconds before the first retry (before jitter)."""
    cap: float = 30.0
    """Longest wait between two attempts."""

    def delay(self, attempt: int, rng: random.Random, at_least: float = 0.0) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` ≥ 1 sends so far).

        Full jitter (uniform in ``[0, base·2^(attempt-1)]``, capped) spreads retries out; a
        provider's ``Retry-After`` (``at_least``) is always honoured.
        """
        ceiling = min(self.cap, self.base * 2 ** (attempt - 1))
        return max(at_least, rng.uniform(0, ceiling))


class Breaker:
    """Stops sending to a failing gateway for ``cooldown`` seconds after ``threshold`` failures in a row.

    Closed: requests go. Open: none go until the cooldown ends. Then one trial request goes
    (half-open): its success closes the breaker, its failure opens it again.
    """

    __slots__ = ("_failures", "_open_until", "_trial", "cooldown", "threshold")

    def __init__(self, threshold: int = 3, cooldown: float = 10.0) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._failures = 0
        self._open_until = 0.0
        self._trial = False

    def allow(self, now: float) -> bool:
        """Whether a request may go to the gateway now."""
        if self._failures < self.threshold:
            return True
        if now < self._open_until or self._trial:
            return False
        self._trial = True  # half-open: one request tests the water
        return True

    def ready_at(self) -> float:
        """When the breaker next lets a request through (0 when closed)."""
        return self._open_until if self._failures >= self.threshold else 0.0

    def success(self) -> None:
        """A request went through: close."""
        self._failures = 0
        self._trial = False

    def failure(self, now: float) -> None:
        """A request failed: count it, and open (again) at the threshold."""
        self._failures += 1
        self._trial = False
        if self._failures >= self.threshold:
            self._open_until = now + self.cooldown

    @property
    def is_open(self) -> bool:
        """Whether the breaker holds requests back."""
        return self._failures >= self.threshold
