"""A pure rate limiter in SMS parts per second, held where the receiver measures: callers pass ``now``.

The guarantee: in *any* interval of ``window`` seconds, the parts of the requests that *arrive at
the provider* add up to at most ``rate`` — whatever the network and the machine do between the
decision to send and the arrival. A booking alone cannot promise that: a request booked at ``t``
may reach the provider much later (a busy CPU, a slow connection, a pool wait) and land in the
same second as requests booked a window after it. So a request is charged from the moment it is
:meth:`~SlidingWindowLimiter.take`\\ n (just before it is written) until one ``window`` after its
answer came back (:meth:`~SlidingWindowLimiter.done`) — its arrival lies somewhere in between.
Proof sketch: take requests X, Y whose arrivals lie in one window, X taken last (at ``x``). Y
arrived after ``x − window`` (X arrives after ``x``), so its answer came after that, so Y was still
charged at ``x`` and was counted when X was let go. Every set of requests arriving within one
window was therefore counted together by the last of them: together they fit the rate.

Requests larger than the rate can never go (the sender splits them first, and refuses at start
a message whose parts exceed a rate); after :meth:`~SlidingWindowLimiter.slow_down`, a request
larger than the lowered rate goes alone in its window. A request that never left the machine
(connection refused) gives its parts back (:meth:`~SlidingWindowLimiter.cancel`). A run that starts
charges what earlier runs on its store handed over in the last seconds
(:meth:`~SlidingWindowLimiter.charge`): a resume right after a kill cannot double the rate. ``margin``
widens the window slightly (1% by default) for the receiver's own clock and timestamping.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Sequence
from typing import Any

__all__ = ["SlidingWindowLimiter", "Ticket"]

Ticket = int
"""A request charged to a limiter and not answered yet (unique in the process)."""
_TICKETS = itertools.count(1)


class SlidingWindowLimiter:
    """At most ``rate`` parts in any ``window`` seconds at the receiver; pure (time is passed in)."""

    __slots__ = (
        "_done",
        "_done_parts",
        "_in_flight",
        "_in_flight_parts",
        "ceiling",
        "min_rate",
        "rate",
        "waiters",
        "window",
    )

    def __init__(
        self, rate: float, window: float = 1.0, margin: float = 0.01, *, min_rate: float = 1.0
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if window <= 0:
            raise ValueError("window must be positive")
        self.rate = float(rate)
        self.ceiling = self.rate
        """The configured rate; :meth:`slow_down` lowers ``rate`` below it, :meth:`recover` climbs back."""
        self.min_rate = min(float(min_rate), self.rate)
        """The lowest :meth:`slow_down` goes: the parts of the longest message allowed, so that
        every message can still go."""
        self.window = window * (1 + margin)
        self._done: deque[tuple[float, int]] = deque()
        """Answered requests still charged: (answer time, parts), answer times non-decreasing."""
        self._done_parts = 0
        self._in_flight: dict[Ticket, int] = {}
        self._in_flight_parts = 0
        self.waiters: list[Any] = []
        """For the async layer: what senders waiting for an answer wait on (engine.sending.sender)."""

    def _expire(self, at: float) -> None:
        """Forget answers that left the window by ``at`` (the present: :meth:`take` calls it)."""
        done = self._done
        edge = at - self.window
        while done and done[0][0] <= edge:
            self._done_parts -= done.popleft()[1]

    def earliest(self, at: float, parts: int) -> float:
        """The first time ≥ ``at`` when ``parts`` may go, assuming no answer comes meanwhile;
        ``math.inf`` when only an answer to a request in flight can make room. Changes nothing
        (``at`` may lie in the future)."""
        if parts > self.ceiling:
            raise ValueError(f"{parts} parts can never fit a rate of {self.ceiling:g}/s: split the request")
        room = max(0.0, self.rate - parts)  # over a slowed-down rate: alone in the window
        used = self._in_flight_parts + self._done_parts
        if used <= room:
            return at
        if self._in_flight_parts > room:
            return math.inf
        for ts, n in self._done:  # the oldest leave first (those already out: at once)
            used -= n
            if used <= room:
                return max(at, ts + self.window)
        return at  # pragma: no cover - the loop always returns: in-flight parts alone fit

    def take(self, at: float, parts: int) -> Ticket:
        """Charge ``parts`` from ``at`` (a time :meth:`earliest` allowed) until :meth:`done`."""
        self._expire(at)
        ticket = next(_TICKETS)
        self._in_flight[ticket] = parts
        self._in_flight_parts += parts
        return ticket

    def done(self, ticket: Ticket, at: float) -> None:
        """The request's answer (or failure after it may have been sent) came at ``at``: it stays
        charged one window more."""
        parts = self._in_flight.pop(ticket, None)
        if parts is None:
            return
        self._in_flight_parts -= parts
        done = self._done
        done.append((max(at, done[-1][0]) if done else at, parts))
        self._done_parts += parts

    def charge(self, parts: int, at: float) -> None:
        """Count ``parts`` as answered at ``at`` (charged until a window later): another run's
        recent requests, read from the store when this limiter starts."""
        if parts > 0:
            done = self._done
            done.append((max(at, done[-1][0]) if done else at, parts))
            self._done_parts += parts

    def cancel(self, ticket: Ticket) -> None:
        """The request never left this machine: its parts are not charged."""
        parts = self._in_flight.pop(ticket, None)
        if parts is not None:
            self._in_flight_parts -= parts

    @staticmethod
    def earliest_all(limiters: Sequence[SlidingWindowLimiter], at: float, parts: int) -> float:
        """The first time ≥ ``at`` every limiter lets ``parts`` go (``math.inf``: wait for an answer)."""
        t = at
        while True:
            later = max(lim.earliest(t, parts) for lim in limiters)
            if later <= t or later == math.inf:
                return later
            t = later

    def slow_down(self, factor: float = 0.5) -> None:
        """The provider said "too fast" (429, throttled): halve the rate (multiplicative decrease)."""
        self.rate = max(self.min_rate, self.rate * factor)

    def recover(self, step: float = 0.05) -> None:
        """A request went through: climb back towards the configured rate (additive increase)."""
        self.rate = min(self.ceiling, self.rate + self.ceiling * step)

    def used(self, now: float) -> int:
        """Parts charged at ``now``: in flight, or answered less than a window ago."""
        edge = now - self.window
        return self._in_flight_parts + sum(p for ts, p in self._done if ts > edge)

    @property
    def capacity(self) -> float:
        """The largest request this limiter can ever let go (its configured rate)."""
        return self.ceiling

    @property
    def in_flight(self) -> int:
        """Parts of requests taken and not answered yet."""
        return self._in_flight_parts
