"""Opt-outs: reading 退订/R replies, and the in-memory set every blast checks at full speed."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from engine.core.messages import number_key

__all__ = ["DEFAULT_KEYWORDS", "OptOutSet", "is_opt_out_reply", "sorted_search"]


def sorted_search(arr: npt.NDArray[np.int64], keys: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
    """For each key, the index in sorted ``arr`` where it is or would be (clipped to the last).

    The keys are searched in ascending order: each search then starts near the previous one,
    which keeps the large array's upper levels in cache (about 30% faster on 1M entries).
    """
    order = np.argsort(keys, kind="stable")
    pos = np.empty(keys.size, dtype=np.intp)
    pos[order] = np.searchsorted(arr, keys[order])
    np.minimum(pos, arr.size - 1, out=pos)
    return pos


DEFAULT_KEYWORDS: Final = frozenset({"R", "T", "TD", "退订", "N", "0000", "STOP", "UNSUBSCRIBE"})
"""Replies that mean "stop": the carriers' and providers' common set (configurable)."""


def _trim(text: str) -> str:
    """``text`` without surrounding whitespace, punctuation and symbols (Unicode categories P, Z, S, C)."""
    start, end = 0, len(text)
    while start < end and unicodedata.category(text[start])[0] in "PZSC":
        start += 1
    while end > start and unicodedata.category(text[end - 1])[0] in "PZSC":
        end -= 1
    return text[start:end]


def is_opt_out_reply(text: str, keywords: Iterable[str] = DEFAULT_KEYWORDS) -> bool:
    """Whether a customer's reply (MO) is an opt-out keyword.

    Case- and width-insensitive (``ｔｄ`` is ``TD``), surrounding spaces and punctuation ignored
    (``"R。"``, ``【退订】``); the keyword must be the whole reply, so ``"R U open?"`` is not one.
    """
    norm = _trim(unicodedata.normalize("NFKC", text)).casefold()
    return norm in {unicodedata.normalize("NFKC", k).casefold() for k in keywords}


class OptOutSet:
    """Opted-out numbers as one sorted ``int64`` array: 8 bytes a number, batch lookups in C.

    10,000,000 numbers take 80 MB. :meth:`contains` answers for a whole batch with one
    ``searchsorted``; numbers added while a blast runs (replies) go to a small overlay set.
    """

    def __init__(self, keys: npt.NDArray[np.int64] | None = None) -> None:
        arr = np.asarray(keys if keys is not None else [], dtype=np.int64)
        if arr.size and bool((arr[1:] < arr[:-1]).any()):
            arr = np.sort(arr)
        self._keys = arr
        self._extra: set[int] = set()

    @classmethod
    def from_numbers(cls, numbers: Iterable[str]) -> OptOutSet:
        """Build from normalized numbers (11-digit Chinese mobiles, ``+`` E.164 otherwise)."""
        return cls(np.unique(np.fromiter(map(number_key, numbers), dtype=np.int64)))

    def __len__(self) -> int:
        return int(self._keys.size) + len(self._extra)

    @property
    def keys(self) -> npt.NDArray[np.int64]:
        r"""The sorted keys loaded (not those :meth:`add`\ ed since)."""
        return self._keys

    @property
    def nbytes(self) -> int:
        """Memory held by the sorted array."""
        return int(self._keys.nbytes)

    def add(self, numbers: Iterable[str]) -> None:
        """Add numbers that opted out while the engine runs."""
        self._extra.update(map(number_key, numbers))

    def contains(self, keys: Sequence[int]) -> list[int]:
        """Indices of the opted-out entries of ``keys`` (:func:`~engine.core.messages.number_key`)."""
        if not keys or not len(self):
            return []
        k = np.fromiter(keys, dtype=np.int64, count=len(keys))
        arr = self._keys
        if arr.size:
            pos = sorted_search(arr, k)
            hit = arr[pos] == k
        else:
            hit = np.zeros(len(keys), dtype=bool)
        if self._extra:
            extra = self._extra
            hit |= np.fromiter((x in extra for x in keys), dtype=bool, count=len(keys))
        return [int(i) for i in np.flatnonzero(hit)]

    def contains_numbers(self, numbers: Sequence[str]) -> list[int]:
        """Indices of the opted-out entries of normalized ``numbers``."""
        return self.contains([number_key(n) for n in numbers])
