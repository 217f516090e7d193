"""Stage ``dedupe``: the same number twice in one campaign is sent once, however it was written."""

from __future__ import annotations

from engine.messages import State, SuppressReason
from engine.pipeline import Batch

__all__ = ["Dedupe"]


class Dedupe:
    """Suppresses every occurrence of a number after its first (reason ``duplicate``).

    Runs after ``normalize``, so ``13800138000``, ``+86 138-0013-8000`` and ``００８６…`` are one
    number. Keeps one int per distinct number for the run (about 50 bytes each). A batch without
    duplicates costs two set operations in C; otherwise one pass finds them.
    """

    name = "dedupe"

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def process(self, batch: Batch) -> None:
        """Suppress the numbers of ``batch`` already seen in this run (or earlier in the batch)."""
        keys = batch.number_keys()
        seen = self.seen
        if seen.isdisjoint(keys):
            before = len(seen)
            seen.update(keys)
            if len(seen) - before == len(keys):
                return  # no number seen before, none twice in the batch: the usual case
            seen.difference_update(keys)  # a number twice in this batch: redo it item by item
        dup: list[int] = []
        add = seen.add
        for i, k in enumerate(keys):
            if k in seen:
                dup.append(i)
            else:
                add(k)
        batch.drop(
            dup,
            SuppressReason.DUPLICATE,
            "the same number appears on an earlier row of this segment",
            state=State.SUPPRESSED,
        )
