"""Stage ``normalize``: turn each row's phone value into a canonical number or reject it."""

from __future__ import annotations

import re
from operator import itemgetter

from engine.phone import parse_phone
from engine.pipeline import Batch

__all__ = ["Normalize"]

_TIER2 = re.compile(r"^(?:\+86|0086|86)?(1[0-9]{10})$|^.*$", re.MULTILINE)
"""One result per line: the 11-digit national number of a decorated value, or ""."""
_FULL_WIDTH = str.maketrans("０１２３４５６７８９", "0123456789")


def _clean(p: str) -> bool:
    """An 11-digit ASCII Chinese mobile as it is (the fast path's test)."""
    return len(p) == 11 and p.isascii() and p.isdigit() and p[0] == "1"


class Normalize:
    """Fills ``batch.numbers``: an 11-digit Chinese mobile, or E.164 for other countries.

    Clean 11-digit values take a comprehension-only fast path; everything else goes through
    :func:`engine.phone.parse_phone` one by one.
    """

    name = "normalize"

    def process(self, batch: Batch) -> None:
        """Normalize every phone value of the batch."""
        numbers = list(map(itemgetter(batch.phone_col), batch.rows))
        # isascii() is O(1) in CPython: check it before the O(n) isdigit().
        odd = [
            i
            for i, p in enumerate(numbers)
            if not (len(p) == 11 and p.isascii() and p.isdigit() and p[0] == "1")
        ]
        batch.numbers = numbers
        if not odd:
            return
        idx: list[int] = []
        reasons: list[str] = []
        details: list[str] = []
        # Second tier, for all the odd values at once: the usual decorations (+86 138-0013-8000,
        # 0086…, 86…) are spaces and dashes removed, then one regex pass gives each line its
        # national number or "" (a value holding a newline would shift the lines: all "" then).
        vals = [numbers[i] for i in odd]
        nationals = _TIER2.findall("\n".join(vals).replace(" ", "").replace("-", ""))
        if len(nationals) != len(vals):
            nationals = [""] * len(vals)
        for i, raw, national in zip(odd, vals, nationals, strict=True):
            if national:
                numbers[i] = national
                continue
            # Third tier, as parse_phone reads them: Excel's 13800138000.0 and full-width digits.
            head, dot, zeros = raw.partition(".")
            if dot:
                if zeros and not zeros.strip("0") and _clean(head):
                    numbers[i] = head
                    continue
            elif len(raw) == 11 and raw[0] == "\uff11" and max(raw) <= "\uff19" and min(raw) >= "\uff10":
                numbers[i] = raw.translate(_FULL_WIDTH)
                continue
            parsed = parse_phone(raw)
            if parsed.reason is None:
                numbers[i] = parsed.national or parsed.e164
            else:
                idx.append(i)
                reasons.append(parsed.reason)
                details.append(parsed.detail)
        batch.drop(idx, reasons, details)
