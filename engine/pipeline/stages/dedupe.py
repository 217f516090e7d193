"""Stage ``dedupe``: the same number twice in one campaign is sent once, however it was written."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from engine.core import speedups
from engine.core.messages import State, SuppressReason
from engine.pipeline.runner import Batch

__all__ = ["Dedupe", "SharedClaims"]

SharedClaims = Callable[[Sequence[int], Sequence[int]], list[int]]
"""``claim(keys, rows)``: claim each number key for its row in a table the processes of one send
share; returns the indices whose number another row holds (``pigeon send --shards N`` on byte
ranges: :mod:`engine.state.dedupe_claims`)."""


class Dedupe:
    """Suppresses every occurrence of a number after its first (reason ``duplicate``).

    Runs after ``normalize``, so ``13800138000``, ``+86 138-0013-8000`` and ``００８６…`` are one
    number. Keeps one int per distinct number for the run (about 50 bytes each); a batch costs one
    hash insertion per number (:func:`engine.core.speedups.first_seen`).
    """

    name = "dedupe"

    def __init__(self, shared: SharedClaims | None = None) -> None:
        self.seen: set[int] = set()
        self.shared = shared
        """With byte-range shards: the numbers this process sees first are claimed in the shared
        table too, one call per batch; a number another row (in another shard's range) holds is a
        duplicate here."""

    def process(self, batch: Batch) -> None:
        """Suppress the numbers of ``batch`` already seen in this run (or earlier in the batch)."""
        keys = batch.number_keys()
        dup = speedups.first_seen(self.seen, keys)
        if self.shared is not None and len(dup) < len(keys):
            local = set(dup)
            fresh = [i for i in range(len(keys)) if i not in local]
            nums = batch.nums
            held = self.shared([keys[i] for i in fresh], [nums[i] for i in fresh])
            if held:
                dup = sorted(local.union(fresh[i] for i in held))
        batch.drop(
            dup,
            SuppressReason.DUPLICATE,
            "the same number appears on an earlier row of this segment",
            state=State.SUPPRESSED,
        )
