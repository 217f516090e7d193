"""Stage ``dedupe``: the same number twice in one campaign is sent once, however it was written."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from engine.core import speedups
from engine.core.messages import State, SuppressReason
from engine.pipeline.runner import Batch

__all__ = ["Dedupe", "SharedClaims"]


class SharedClaims(Protocol):
    """A table the processes of one send share (``pigeon send --shards N`` on byte ranges:
    :mod:`engine.state.dedupe_claims`)."""

    skip: npt.NDArray[np.bool_] | None
    """During a resume: the rows the ledger holds as final (indexed by row), left out of dedupe."""

    def __call__(self, keys: Sequence[int], rows: Sequence[int]) -> list[int]:
        """Claim each number key for its row; the indices whose number another row holds."""
        ...


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
        shared = self.shared
        if shared is None:
            dup = speedups.first_seen(self.seen, keys)
        else:
            dup = self._shared(shared, keys, batch.nums)
        batch.drop(
            dup,
            SuppressReason.DUPLICATE,
            "the same number appears on an earlier row of this segment",
            state=State.SUPPRESSED,
        )

    def _shared(self, shared: SharedClaims, keys: list[int], nums: list[int]) -> list[int]:
        """The duplicates of a batch when the processes share the claims: this process's repeats,
        then the numbers another row claimed first. A resume leaves out the rows the ledger holds
        as final (skipped after the stages anyway): one recorded ``duplicate`` whose winner died
        before logging its claim must not take the number, and the winners that did log theirs
        are in the table already — whatever the shards' ranges are this time."""
        skip = shared.skip
        pos: list[int] | None = None  # the batch positions dedupe sees (None: all)
        if skip is not None and nums:
            rows = np.asarray(nums, dtype=np.int64)
            final = np.zeros(rows.size, dtype=bool)
            inside = rows < skip.size
            final[inside] = skip[rows[inside]]
            if final.any():
                pos = np.flatnonzero(~final).tolist()
                keys = [keys[i] for i in pos]
                nums = [nums[i] for i in pos]
        dup = speedups.first_seen(self.seen, keys)
        if not dup:  # (the common batch: no repeat within this process)
            return shared(keys, nums) if pos is None else [pos[i] for i in shared(keys, nums)]
        if len(dup) < len(keys):
            local = set(dup)
            fresh = [i for i in range(len(keys)) if i not in local]
            held = shared([keys[i] for i in fresh], [nums[i] for i in fresh])
            if held:
                dup = sorted(local.union(fresh[i] for i in held))
        return dup if pos is None else [pos[i] for i in dup]
