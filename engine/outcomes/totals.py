"""Per-customer order totals, summed in chunks with numpy in memory that grows with customers, not orders.

Orders arrive in batches (:class:`engine.outcomes.orders.ParsedOrders`). Each batch's arrays go to
a buffer; when the buffer holds more rows than there are customers so far (and at least
:data:`MIN_BUFFER`), it is folded into the table: the table and the buffer are concatenated, sorted
by number key, and reduced per key (``np.add.reduceat``, ``np.maximum.reduceat``…). The table stays
sorted by key, one row per customer. Memory is the table plus at most as many buffered rows again
(and the sort's temporaries): proportional to the number of customers, whatever the number of
orders — 10 million orders of 1 million customers fold about five times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["MIN_BUFFER", "NEVER", "CustomerTotals", "Totals"]

MIN_BUFFER: Final = 1 << 20
"""Buffered order rows below which no fold happens (about 40 MB of arrays)."""
NEVER: Final = np.iinfo(np.int64).min
"""The last paid time of a customer with no paid order."""
_NO_FIRST: Final = np.iinfo(np.int64).max

Int64Array = npt.NDArray[np.int64]


@dataclass
class Totals:
    """One row per customer, sorted by number key (all arrays aligned)."""

    keys: Int64Array
    """The customer's number key (:func:`engine.core.messages.number_key`)."""
    orders: Int64Array
    """Paid orders (F)."""
    cents: Int64Array
    """Amount paid over those orders, in cents (M)."""
    first: Int64Array
    """First paid order time (wall-clock seconds); the largest int64 without a paid order."""
    last: Int64Array
    """Last paid order time (R is measured from it); :data:`NEVER` without a paid order."""
    seen: Int64Array
    """Last order time of any status (for customers without a paid order: their recency)."""

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def empty(cls) -> Totals:
        """No customer yet."""
        z = np.empty(0, dtype=np.int64)
        return cls(z, z.copy(), z.copy(), z.copy(), z.copy(), z.copy())


class CustomerTotals:
    """Accumulates orders into per-customer :class:`Totals` (see the module's docstring)."""

    def __init__(self, min_buffer: int = MIN_BUFFER) -> None:
        self.min_buffer = min_buffer
        self._table = Totals.empty()
        self._buffer: list[Totals] = []
        self._buffered = 0
        self.folds = 0
        """How many times the buffer was folded into the table."""
        self.peak_rows = 0
        """The most rows held at once (table plus buffer): what memory follows."""

    def add(
        self,
        keys: Int64Array,
        seconds: Int64Array,
        cents: Int64Array,
        paid: npt.NDArray[np.bool_],
    ) -> None:
        """Count one batch of orders (aligned arrays; ``paid`` False for a row that only makes its
        customer known)."""
        if len(keys) == 0:
            return
        if paid.all():
            orders = np.ones(len(keys), dtype=np.int64)
            first = last = seconds
            amount = cents
        else:
            orders = paid.astype(np.int64)
            amount = np.where(paid, cents, 0)
            first = np.where(paid, seconds, _NO_FIRST)
            last = np.where(paid, seconds, NEVER)
        self._buffer.append(Totals(keys, orders, amount, first, last, seconds))
        self._buffered += len(keys)
        self.peak_rows = max(self.peak_rows, len(self._table) + self._buffered)
        if self._buffered >= max(self.min_buffer, len(self._table)):
            self._fold()

    def result(self) -> Totals:
        """Every customer's totals (folds what is buffered)."""
        if self._buffer:
            self._fold()
        return self._table

    def _fold(self) -> None:
        parts = [self._table, *self._buffer]
        self._buffer = []
        self._buffered = 0
        keys = np.concatenate([p.keys for p in parts])
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))

        def reduce(name: str, ufunc: np.ufunc) -> Int64Array:
            values = np.concatenate([getattr(p, name) for p in parts])[order]
            out: Int64Array = ufunc.reduceat(values, starts)
            return out

        self._table = Totals(
            keys=keys[starts],
            orders=reduce("orders", np.add),
            cents=reduce("cents", np.add),
            first=reduce("first", np.minimum),
            last=reduce("last", np.maximum),
            seen=reduce("seen", np.maximum),
        )
        self.folds += 1
