"""A/B variants: which of a campaign's texts each recipient gets, by a stable hash of the number.

A recipient's variant is a pure function of the campaign id and the number: the number (as its
:func:`~engine.core.messages.number_key` int) is mixed with a salt made from the campaign id by
SplitMix64's finalizer, and the top 53 bits, read as a fraction of 1, fall into one variant's
share. So a number gets the same text on every run and resume of the campaign, whatever the row
order, the sharding or the batch, and another campaign splits the same customers afresh. The
finalizer is a bijection with full avalanche: shares come out within a fraction of a percent of
those configured from ten thousand recipients on (``tests/unit/test_variants.py`` checks 1M).

One batch is assigned in a few numpy operations, never a Python loop per recipient
(``tests/unit/test_variants.py::test_bench_assign`` measures it beside the render it precedes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from itertools import accumulate

import numpy as np
import numpy.typing as npt

__all__ = ["Split"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64's finalizer, element-wise (uint64 arithmetic wraps, as the algorithm wants)."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


class Split:
    """Recipients split over named variants by share, stably per (campaign, number)."""

    def __init__(self, campaign_id: str, names: Sequence[str], shares: Sequence[float]) -> None:
        if len(names) != len(shares) or not names:
            raise ValueError("a split needs one share per variant name")
        self.names = tuple(names)
        self.shares = tuple(float(s) for s in shares)
        total = sum(self.shares)
        self._bounds = np.array([c / total for c in accumulate(self.shares)][:-1], dtype=np.float64)
        """Upper bounds of every variant but the last, as fractions of 1."""
        digest = hashlib.blake2b(campaign_id.encode(), digest_size=8, person=b"pigeon-ab").digest()
        self._salt = np.uint64(int.from_bytes(digest, "little"))

    def indices(self, keys: Sequence[int]) -> npt.NDArray[np.intp]:
        """Each recipient's variant, as an index into :attr:`names` (``keys``: number keys)."""
        x = np.fromiter(keys, dtype=np.uint64, count=len(keys))
        with np.errstate(over="ignore"):
            z = _mix(x ^ self._salt)
        u = (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
        return np.searchsorted(self._bounds, u, side="right")

    def assign(self, keys: Sequence[int]) -> list[str]:
        """Each recipient's variant name (the same ``str`` objects, so a column of them is cheap)."""
        names = self.names
        return [names[i] for i in self.indices(keys).tolist()]
