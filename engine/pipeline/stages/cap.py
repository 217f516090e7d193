"""Stage ``cap``: a number that reached its frequency cap is not sent to again until the window allows."""

from __future__ import annotations

from engine.core.clock import Clock
from engine.core.messages import State, SuppressReason
from engine.pipeline.runner import Batch
from engine.state.caps import CapState

__all__ = ["Cap"]


class Cap:
    """Suppresses numbers at their cap (reason ``capped``); two array searches per window and batch."""

    name = "cap"

    def __init__(self, state: CapState, clock: Clock, *, repeats: bool = False) -> None:
        self.state = state
        self.clock = clock
        self.repeats = repeats
        """Count a number's earlier messages in the same batch (streams without ``dedupe``)."""
        limits = ", ".join(f"{w.limit} per {w.period}" for w in state.windows)
        self.detail = f"this number reached its frequency cap ({limits})"

    def process(self, batch: Batch) -> None:
        """Suppress the numbers of ``batch`` that reached a cap now."""
        over = self.state.over(self.clock.time(), batch.number_keys(), repeats=self.repeats)
        if over:
            batch.drop(over, SuppressReason.CAPPED, self.detail, state=State.SUPPRESSED)
