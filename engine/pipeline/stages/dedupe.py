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
        """With byte-range shards: every number is claimed for its row in the table the shards
        share (instead of ``seen``), one call per batch; a number another row holds — in this
        process's range or another's — is a duplicate here."""

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
        """The duplicates of a batch when the processes share the claims: every number is claimed
        for its row (one call per batch; this process's own repeats lose to their first row there
        too, so no set of its own is kept). A resume leaves out the rows the ledger holds as final
        (skipped after the stages anyway): one recorded ``duplicate`` whose winner died before
        logging its claim must not take the number, and the winners that did log theirs are in
        the table already — whatever the shards' ranges are this time."""
        skip = shared.skip
        if skip is not None and nums:
            rows = np.asarray(nums, dtype=np.int64)
            final = np.zeros(rows.size, dtype=bool)
            inside = rows < skip.size
            final[inside] = skip[rows[inside]]
            if final.any():
                pos: list[int] = np.flatnonzero(~final).tolist()
                held = shared([keys[i] for i in pos], [nums[i] for i in pos])
                return [pos[i] for i in held]
        return shared(keys, nums)
