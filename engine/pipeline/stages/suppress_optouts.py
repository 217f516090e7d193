"""Stage ``suppress_optouts``: numbers that opted out are never sent a marketing message."""

from __future__ import annotations

from engine.core.messages import State, SuppressReason
from engine.pipeline.runner import Batch
from engine.state.optout import OptOutSet

__all__ = ["SuppressOptouts"]


class SuppressOptouts:
    """Suppresses opted-out numbers (reason ``opted_out``): one sorted-array search per batch."""

    name = "suppress_optouts"

    def __init__(self, optouts: OptOutSet) -> None:
        self.optouts = optouts

    def process(self, batch: Batch) -> None:
        """Suppress the opted-out numbers of ``batch``."""
        hits = self.optouts.contains(batch.number_keys())
        if hits:
            batch.drop(
                hits,
                SuppressReason.OPTED_OUT,
                "this number opted out (see `pigeon optout check`)",
                state=State.SUPPRESSED,
            )
