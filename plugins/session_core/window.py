"""A bounded in-flight window: requests awaiting their response, by sequence number, with deadlines."""

from __future__ import annotations

from typing import Any

__all__ = ["SequenceNumbers", "Window"]


class SequenceNumbers:
    """Sequence numbers ``first..last`` that wrap (SMPP 1..0x7FFFFFFF, CMPP 1..0xFFFFFFFF)."""

    __slots__ = ("_next", "first", "last")

    def __init__(self, first: int = 1, last: int = 0x7FFFFFFF, start: int | None = None) -> None:
        if not 0 <= first < last:
            raise ValueError("need 0 <= first < last")
        self.first = first
        self.last = last
        self._next = first if start is None else start

    def next(self) -> int:
        """The next number; after ``last`` comes ``first`` again."""
        n = self._next
        self._next = n + 1 if n < self.last else self.first
        return n


class Window:
    """At most ``size`` requests in flight, each with a deadline for its response.

    Every request of a window shares one timeout, so insertion order is deadline order: the
    expired ones are found from the front without a heap. Entries are ``seq → (deadline, token,
    tag)``; the token and tag are the caller's (what to tell when the answer comes).
    """

    __slots__ = ("pending", "size")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a window holds at least one request")
        self.size = size
        self.pending: dict[int, tuple[float, Any, int]] = {}
        """``seq → (deadline, token, tag)`` in the order they were sent (the session's hot paths
        use it directly)."""

    def __len__(self) -> int:
        return len(self.pending)

    def __contains__(self, seq: int) -> bool:
        return seq in self.pending

    @property
    def room(self) -> int:
        """How many more requests may go now."""
        return self.size - len(self.pending)

    def add(self, seq: int, deadline: float, token: Any, tag: int = 0) -> None:
        """Record a request sent; the caller checked :attr:`room`."""
        if seq in self.pending:
            raise ValueError(f"sequence number {seq} is already in flight")
        self.pending[seq] = (deadline, token, tag)

    def pop(self, seq: int) -> tuple[float, Any, int] | None:
        """The request answered by ``seq`` (removed), or None if none is waiting for it."""
        return self.pending.pop(seq, None)

    def next_deadline(self) -> float:
        """The earliest deadline (``inf`` when empty)."""
        for deadline, _, _ in self.pending.values():
            return deadline
        return float("inf")

    def expired(self, now: float) -> list[tuple[int, Any, int]]:
        """Remove and return ``(seq, token, tag)`` of every request whose deadline is ``<= now``."""
        out: list[tuple[int, Any, int]] = []
        for seq, (deadline, token, tag) in self.pending.items():
            if deadline > now:
                break
            out.append((seq, token, tag))
        for seq, _, _ in out:
            del self.pending[seq]
        return out

    def drain(self) -> list[tuple[int, Any, int]]:
        """Remove and return every request (the connection is gone)."""
        out = [(seq, token, tag) for seq, (_, token, tag) in self.pending.items()]
        self.pending.clear()
        return out
