"""Reconnect backoff: exponential with full jitter, pure (the caller passes the attempt and a RNG)."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delay before reconnect attempt ``n`` (1-based): ``uniform(base, min(cap, base * 2**(n-1)))``."""

    __slots__ = ("base", "cap")

    def __init__(self, base: float = 0.5, cap: float = 30.0) -> None:
        if not 0 < base <= cap:
            raise ValueError("need 0 < base <= cap")
        self.base = base
        self.cap = cap

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt ``attempt`` (0 for the first one)."""
        if attempt <= 1:
            return 0.0
        top = min(self.cap, self.base * 2.0 ** (attempt - 2))
        r = rng.random() if rng is not None else random.random()
        return self.base + (top - self.base) * r if top > self.base else top
