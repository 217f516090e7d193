"""Stage ``normalize``: turn each row's phone value into a canonical number or reject it."""

from __future__ import annotations

from engine.phone import parse_phone
from engine.pipeline import Batch

__all__ = ["Normalize"]


class Normalize:
    """Fills ``batch.numbers``: an 11-digit Chinese mobile, or E.164 for other countries.

    Clean 11-digit values take a comprehension-only fast path; everything else goes through
    :func:`engine.phone.parse_phone` one by one.
    """

    name = "normalize"

    def process(self, batch: Batch) -> None:
        """Normalize every phone value of the batch."""
        pc = batch.phone_col
        numbers = [r[pc] for r in batch.rows]
        odd = [
            i
            for i, p in enumerate(numbers)
            if not (len(p) == 11 and p[0] == "1" and p.isdigit() and p.isascii())
        ]
        batch.numbers = numbers
        if not odd:
            return
        idx: list[int] = []
        reasons: list[str] = []
        details: list[str] = []
        for i in odd:
            parsed = parse_phone(numbers[i])
            if parsed.reason is None:
                numbers[i] = parsed.national or parsed.e164
            else:
                idx.append(i)
                reasons.append(parsed.reason)
                details.append(parsed.detail)
        batch.drop(idx, reasons, details)
