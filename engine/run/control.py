"""Run control shared by the service and a running blast: pause, resume, cancel, and shared lanes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import anyio

from engine.sending.gateway import Gateway
from engine.sending.ratelimit import SlidingWindowLimiter
from engine.sending.retry import Breaker

__all__ = ["RunControl", "RunState", "SendResources"]


class RunState(StrEnum):
    """Where a controlled run stands."""

    RUNNING = "running"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    """Asked to stop: no new rows are read; what is in flight is sent and recorded."""


class RunControl:
    """Pause, resume and cancel a blast between two batches; thread-unsafe, event-loop only."""

    def __init__(self) -> None:
        self.stop = anyio.Event()
        """Set on :meth:`cancel`; the run stops reading and drains what is in flight."""
        self._resumed = anyio.Event()
        self._resumed.set()
        self.state = RunState.RUNNING

    def pause(self) -> None:
        """Read no more rows until :meth:`resume` (requests already in the lanes still go)."""
        if self.state is RunState.RUNNING:
            self.state = RunState.PAUSED
            self._resumed = anyio.Event()

    def resume(self) -> None:
        """Read on after a pause."""
        if self.state is RunState.PAUSED:
            self.state = RunState.RUNNING
            self._resumed.set()

    def cancel(self) -> None:
        """Stop for good: no more rows; what is in flight is sent and recorded."""
        self.state = RunState.CANCELLED
        self.stop.set()
        self._resumed.set()

    async def wait_running(self) -> None:
        """Return at once when running or cancelled; while paused, wait for resume or cancel."""
        while self.state is RunState.PAUSED:
            await self._resumed.wait()


@dataclass(frozen=True)
class SendResources:
    """Gateways and budgets owned by a long-running process and lent to each run it starts.

    A run given these does not open or close gateways, and its lanes share the breakers and the
    marketing part of every carrier's rate with the other runs and the API's lanes.
    """

    gateways: Mapping[str, Gateway]
    limiters: Mapping[str, SlidingWindowLimiter]
    gateway_limiters: Mapping[str, SlidingWindowLimiter]
    breakers: Mapping[str, Breaker]
