"""Stage ``dedupe``: the same number twice in one campaign is sent once, however it was written."""

from __future__ import annotations

from engine.core import speedups
from engine.core.messages import State, SuppressReason
from engine.pipeline.runner import Batch

__all__ = ["Dedupe"]


class Dedupe:
    """Suppresses every occurrence of a number after its first (reason ``duplicate``).

    Runs after ``normalize``, so ``13800138000``, ``+86 138-0013-8000`` and ``００８６…`` are one
    number. Keeps one int per distinct number for the run (about 50 bytes each); a batch costs one
    hash insertion per number (:func:`engine.core.speedups.first_seen`).
    """

    name = "dedupe"

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def process(self, batch: Batch) -> None:
        """Suppress the numbers of ``batch`` already seen in this run (or earlier in the batch)."""
        dup = speedups.first_seen(self.seen, batch.number_keys())
        batch.drop(
            dup,
            SuppressReason.DUPLICATE,
            "the same number appears on an earlier row of this segment",
            state=State.SUPPRESSED,
        )
