"""Frequency caps: how many messages a number may get per window, across campaigns and runs.

Pure state with time passed in, so the promise — no number ever gets more than ``limit`` messages
in any window — is property-tested with a fake clock. Windows are *rolling* (any ``seconds``-long
interval) or *calendar days* in a time zone (``calendar_day``).

History comes from the store at the start of a run as sorted arrays; messages handed to a gateway
during the run are added with :meth:`CapState.record`. A check counts, for each window, the
number's history inside the window that ends now, plus what this run already recorded.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from engine.core.periods import parse_period
from engine.state.optout import sorted_search

__all__ = ["CapState", "CapWindow"]


@dataclass(frozen=True, slots=True)
class CapWindow:
    """At most ``limit`` messages per number within each ``period``."""

    limit: int
    period: str
    """A rolling period (``24h``, ``7d``) or ``calendar_day``."""
    timezone: str = "Asia/Shanghai"
    """For ``calendar_day``: where the day starts."""

    def start(self, now: float) -> float:
        """Start of the window that ends at ``now`` (epoch seconds)."""
        seconds = parse_period(self.period)
        if seconds is not None:
            return now - seconds
        tz = ZoneInfo(self.timezone)
        local = datetime.fromtimestamp(now, tz)
        return local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()

    def reset_after(self, now: float) -> float:
        """When a number capped at ``now`` can next be sent to, at the latest."""
        seconds = parse_period(self.period)
        if seconds is not None:
            return now + seconds
        tz = ZoneInfo(self.timezone)
        local = datetime.fromtimestamp(now, tz)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
        return midnight.timestamp()

    def bucket(self, now: float) -> tuple[str, float]:
        """Where a shared store counts this window at ``now``: a name and, for ``calendar_day``, the
        epoch second the count is dropped (the next local midnight), else the rolling period in
        seconds. A calendar day's name is its local date (``day:Asia/Shanghai:2026-12-04``): a new
        day is a new, empty bucket; a rolling period's is its length (``roll:86400``)."""
        seconds = parse_period(self.period)
        if seconds is not None:
            return f"roll:{seconds:.0f}", seconds
        local = datetime.fromtimestamp(now, ZoneInfo(self.timezone))
        return f"day:{self.timezone}:{local.date().isoformat()}", self.reset_after(now)


class CapState:
    """Send history of many numbers, plus this run's sends, checked a batch at a time.

    History is kept as the sorted distinct keys and, per window, how many of each key's sends fall
    inside the window: a batch check is one ``searchsorted`` and one gather per window. The
    per-window counts are recomputed when their start is more than ``refresh`` seconds old (or the
    calendar day changed); until then the start used is *earlier* than the true one, so history is
    over-counted, never under-counted: a cap can hold a number back a little early, never let one
    message too many through.
    """

    def __init__(
        self,
        windows: Sequence[CapWindow],
        keys: npt.NDArray[np.int64] | None = None,
        times: npt.NDArray[np.float64] | None = None,
        *,
        refresh: float = 60.0,
    ) -> None:
        self.windows = tuple(windows)
        k = np.asarray(keys if keys is not None else [], dtype=np.int64)
        t = np.asarray(times if times is not None else [], dtype=np.float64)
        order = np.argsort(k, kind="stable")
        self._times = t[order]
        self._unique, self._first = np.unique(k[order], return_index=True)
        self._refresh = refresh
        self._counts: dict[int, tuple[float, npt.NDArray[np.int64]]] = {}
        # This run's sends: 16 bytes each in arrays, plus a set to spot a number sent again.
        self._run_keys = array("q")
        self._run_times = array("d")
        self._run_set: set[int] = set()

    def _window_counts(self, i: int, start: float) -> npt.NDArray[np.int64]:
        """Per distinct key, its history sends at or after ``start`` (cached for ``refresh`` s)."""
        cached = self._counts.get(i)
        if cached is not None and 0 <= start - cached[0] <= self._refresh:
            return cached[1]
        if self._unique.size:
            counts = np.add.reduceat((self._times >= start).astype(np.int64), self._first)
        else:
            counts = np.zeros(0, dtype=np.int64)
        self._counts[i] = (start, counts)
        return counts

    def over(self, now: float, keys: Sequence[int], *, repeats: bool = False) -> list[int]:
        """Indices of ``keys`` that already reached a window's limit at ``now`` (one more would exceed).

        ``repeats``: a number twice in ``keys`` counts the ones before it (a stream without a
        ``dedupe`` stage: the API's). A segment's repeats are left to ``dedupe``, which names them
        ``duplicate``."""
        if not self.windows or not len(keys):
            return []
        k = np.fromiter(keys, dtype=np.int64, count=len(keys))
        unique = self._unique
        if unique.size:
            pos = sorted_search(unique, k)
            known = unique[pos] == k
        again: list[int] = []
        if self._run_set and not self._run_set.isdisjoint(keys):
            again = [i for i, key in enumerate(keys) if key in self._run_set]
        run_keys = np.frombuffer(self._run_keys, dtype=np.int64) if again else None
        run_times = np.frombuffer(self._run_times, dtype=np.float64) if again else None
        over = np.zeros(len(keys), dtype=bool)
        prior: npt.NDArray[np.int64] | None = None
        if repeats and len(set(keys)) < len(keys):  # a number twice in one batch
            prior = np.zeros(len(keys), dtype=np.int64)  # each counts the ones before it
            seen: dict[int, int] = {}
            for i, key in enumerate(keys):
                prior[i] = seen.get(key, 0)
                seen[key] = int(prior[i]) + 1
        for wi, w in enumerate(self.windows):
            start = w.start(now)
            if unique.size:
                counts = np.where(known, self._window_counts(wi, start)[pos], 0)
            else:
                counts = np.zeros(len(keys), dtype=np.int64)
            if run_keys is not None and run_times is not None:
                for i in again:
                    counts[i] += int(np.count_nonzero((run_keys == keys[i]) & (run_times >= start)))
            if prior is not None:
                counts = counts + prior
            over |= counts >= w.limit
        return [int(i) for i in np.flatnonzero(over)]

    def record(self, now: float, keys: Sequence[int]) -> None:
        """Count messages handed to a gateway at ``now``."""
        self._run_keys.extend(keys)
        self._run_times.extend([now] * len(keys))
        self._run_set.update(keys)
