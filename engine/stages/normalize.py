"""Stage ``normalize``: turn each row's phone value into a canonical number or reject it."""

from __future__ import annotations

from engine.phone import QUICK_CLEAN, parse_phone
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
        clean = QUICK_CLEAN
        for i in odd:
            raw = numbers[i]
            # Second tier: the common decorated forms (+86 138-0013-8000, 0086…, 86…, full width)
            # need only a translate and a prefix check; anything else gets the full parser.
            s = raw.translate(clean)
            if s.isdigit() and s.isascii() and (n := len(s)) >= 11 and s[n - 11] == "1":
                if n == 11 or (n == 13 and s[:2] == "86") or (n == 15 and s[:4] == "0086"):
                    numbers[i] = s[n - 11 :]
                    continue
            elif s[:3] == "+86" and len(s) == 14 and s[3] == "1" and s[3:].isdigit() and s.isascii():
                numbers[i] = s[3:]
                continue
            parsed = parse_phone(raw)
            if parsed.reason is None:
                numbers[i] = parsed.national or parsed.e164
            else:
                idx.append(i)
                reasons.append(parsed.reason)
                details.append(parsed.detail)
        batch.drop(idx, reasons, details)
