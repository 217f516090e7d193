"""Counters of one bind (window, answers, latency, throttles, reconnects, receipts): plain numbers."""

from __future__ import annotations

from bisect import bisect_left
from typing import Final

__all__ = ["LATENCY_BUCKETS", "LinkStats"]

LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds (seconds) of the response-latency histogram."""


class LinkStats:
    """What one bind did since it was created; read by the metrics collector on scrape."""

    __slots__ = (
        "_latency_sum",
        "bind_failures",
        "binds",
        "buckets",
        "closes",
        "dropped",
        "expired",
        "receipts",
        "reconnects",
        "requests",
        "throttled",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.expired = 0
        self.dropped = 0
        self.binds = 0
        self.bind_failures = 0
        self.reconnects = 0
        self.throttled = 0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        """Answers per latency bucket (the last one: above every bound)."""
        self._latency_sum = 0.0
        self.closes: dict[str, int] = {}
        """Sessions ended, by reason (``unbound``, ``peer_unbind``, ``keepalive``, ``lost``)."""
        self.receipts: dict[str, int] = {}
        """Delivery receipts read on this bind, by status (``delivered``, ``failed``…)."""

    def answered(self, latency: float) -> None:
        """One answer came after ``latency`` seconds."""
        self.buckets[bisect_left(LATENCY_BUCKETS, latency)] += 1
        self._latency_sum += latency

    @property
    def answers(self) -> int:
        """Answers received."""
        return sum(self.buckets)

    @property
    def latency_sum(self) -> float:
        """Sum of answer latencies (seconds)."""
        return self._latency_sum
