"""A bounded memory of callback keys already seen: providers push the same receipt more than once."""

from __future__ import annotations

from collections.abc import Hashable

__all__ = ["SeenKeys"]


class SeenKeys:
    """Remembers the last ``size`` to ``2 × size`` keys (two generations of sets, swapped when full)."""

    def __init__(self, size: int = 1_000_000) -> None:
        self.size = size
        self._new: set[Hashable] = set()
        self._old: set[Hashable] = set()

    def first(self, key: Hashable) -> bool:
        """True the first time ``key`` is offered (within the memory), False for a repeat."""
        if key in self._new or key in self._old:
            return False
        if len(self._new) >= self.size:
            self._old, self._new = self._new, set()
        self._new.add(key)
        return True
