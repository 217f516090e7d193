"""Which recipients a campaign keeps back as its holdout: a fixed hash of (campaign, number) under a share.

A holdout is a random share of each group that is deliberately *not* sent, so that a campaign's
effect is measured (buyers among those sent against buyers among those held out) rather than
assumed. The choice must be stable — the same recipient of the same campaign is held out on every
run, resume and shard — and independent of everything a merchant could correlate with buying
(row order, group, spend), so it is a hash:

    h = splitmix64(number_key XOR seed(campaign))      seed = first 8 bytes of SHA-256(campaign id)
    held out  ⇔  (h >> 11) / 2**53 < share

``number_key`` is :func:`engine.core.messages.number_key` of the normalized number (the 11-digit
national number for China). Over any group the held-out share is binomial around ``share``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["MAX_HOLDOUT", "campaign_seed", "held_out"]

MAX_HOLDOUT: Final = 0.5
"""The largest share a campaign may hold out (more is not a campaign, it is an experiment on it)."""

_M1: Final = np.uint64(0xBF58476D1CE4E5B9)
_M2: Final = np.uint64(0x94D049BB133111EB)
_GOLDEN: Final = np.uint64(0x9E3779B97F4A7C15)


def campaign_seed(campaign_id: str) -> int:
    """The campaign's 64-bit seed: the first 8 bytes of SHA-256 of its id, big-endian."""
    return int.from_bytes(hashlib.sha256(campaign_id.encode()).digest()[:8], "big")


def held_out(
    keys: Sequence[int] | npt.NDArray[np.int64], campaign_id: str, share: float
) -> npt.NDArray[np.bool_]:
    """Whether each number (by its number key) is in the campaign's holdout of ``share`` (0–0.5)."""
    if share <= 0:
        return np.zeros(len(keys), dtype=np.bool_)
    x = np.asarray(keys, dtype=np.int64).view(np.uint64) ^ np.uint64(campaign_seed(campaign_id))
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53)) < share
