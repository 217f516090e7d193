"""A table of number keys → rows that forked processes share, in which each key is won by one row.

``pigeon send --shards N`` on byte ranges (:mod:`engine.run.shards`) creates one before it forks
its shards: an open-addressing table of ``2^k`` slots (two int64 each: a key, 0 for an empty slot,
and its row) in anonymous shared memory (``mmap(-1, …)``, ``MAP_SHARED``: inherited by ``fork``, outside
``/dev/shm`` — whose size a container caps — and gone with the last process that maps it, so a
killed run leaks nothing). Each shard's ``dedupe`` stage claims the numbers it sees first with one
call per batch (:func:`engine.core.speedups.claim_keys`): compiled, every slot is taken by one
atomic compare-and-swap, so the shards never wait on each other; the pure-Python twin runs under
a lock shared by the processes.

The table is memory only. What makes a crashed run's claims survive is the store's log of them
(:mod:`engine.state.dedupe_claims`), from which a resume fills a new table before it forks.
"""

from __future__ import annotations

import mmap
import multiprocessing
from collections.abc import Sequence

from engine.core import speedups

__all__ = ["LocalKeys", "SharedKeys", "table_slots"]

LOAD = 0.67
"""The most keys per slot the table is sized for (linear probing stays short below it)."""


def table_slots(keys: int) -> int:
    """The slots (a power of two, at least 1,024) for a table of up to ``keys`` keys."""
    slots = 1024
    while slots * LOAD < keys:
        slots *= 2
    return slots


class SharedKeys:
    """Number keys claimed for rows, shared by the processes forked after it is made.

    ``keys`` is the most keys it will hold (the segment's rows, plus a resume's earlier claims):
    16 bytes a slot, ``table_slots(keys)`` slots — 32 MiB for a 1M-row segment.
    """

    def __init__(self, keys: int) -> None:
        self.slots = table_slots(keys)
        self._map = mmap.mmap(-1, 16 * self.slots)  # anonymous, MAP_SHARED: shared across fork
        self.table = memoryview(self._map)
        self._lock = multiprocessing.get_context("fork").Lock()  # for the pure-Python twin only

    def claim(self, keys: Sequence[int], rows: Sequence[int]) -> list[int]:
        """Claim ``keys[i]`` for ``rows[i]`` (keys positive); the positions whose key another row
        holds — the same row again keeps its key. Safe from any number of processes at once."""
        ks, rs = list(keys), list(rows)
        if speedups.ACCELERATED:
            return speedups.claim_keys(self.table, ks, rs)
        with self._lock:
            return speedups.claim_keys(self.table, ks, rs)

    def __len__(self) -> int:
        """How many keys are claimed (a pass over the table: for tests and reports)."""
        view = self.table.cast("q")
        return sum(1 for k in view[::2] if k)

    def close(self) -> None:
        """Unmap the table in this process (the others keep theirs)."""
        self.table.release()
        self._map.close()


class LocalKeys:
    """The same claims for one process alone (a resume on one process, or hash shards, whose
    numbers no other process sees): a dict."""

    def __init__(self) -> None:
        self.rows: dict[int, int] = {}

    def claim(self, keys: Sequence[int], rows: Sequence[int]) -> list[int]:
        """As :meth:`SharedKeys.claim`."""
        held = self.rows.setdefault
        return [i for i, (k, r) in enumerate(zip(keys, rows, strict=True)) if held(k, r) != r]

    def __len__(self) -> int:
        """How many keys are claimed."""
        return len(self.rows)

    def close(self) -> None:
        """Nothing to release."""
