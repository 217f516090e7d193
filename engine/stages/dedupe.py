"""Stage ``dedupe``: the same number twice in one campaign is sent once, however it was written."""

from __future__ import annotations

from engine.messages import State, SuppressReason
from engine.pipeline import Batch

__all__ = ["Dedupe", "number_key"]

_INTL_OFFSET = 10**15  # E.164 has at most 15 digits: international keys never meet Chinese ones


def number_key(number: str) -> int:
    """An int identifying a normalized number (11-digit Chinese mobile, or ``+`` E.164)."""
    return int(number) if number[0] != "+" else _INTL_OFFSET + int(number[1:])


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
        numbers = batch.numbers
        if any(n[0] == "+" for n in numbers):
            keys = list(map(number_key, numbers))
        else:
            keys = list(map(int, numbers))
        seen = self.seen
        if len(set(keys)) == len(keys) and seen.isdisjoint(keys):
            seen.update(keys)
            return
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
