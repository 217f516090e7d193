"""Stage ``count_parts``: billed SMS parts per message, and rejects for messages over the maximum."""

from __future__ import annotations

from collections.abc import Sequence

from engine.core import sms, speedups
from engine.core.messages import RejectReason
from engine.core.template import Template
from engine.pipeline.runner import Batch, positions

__all__ = ["CountParts"]


class CountParts:
    """Fills ``batch.parts`` by the real billing rules (see :mod:`engine.core.sms`).

    Per batch, one scan decides whether every text is plain (no two-unit character, and for a
    UCS-2 template no need to check the encoding): then each message costs a length lookup.
    Otherwise each message is counted exactly.
    """

    name = "count_parts"

    def __init__(self, template: Template, others: Sequence[Template] = ()) -> None:
        self.max_length = template.max_length
        # (an A/B test's texts share the maximum; the shortcut holds when every text is UCS-2)
        self.ucs2 = all(t.literal_encoding == "ucs2" for t in (template, *others))
        enc: sms.Encoding = "ucs2" if self.ucs2 else "gsm7"
        limit = min(template.max_length, sms.MULTI[enc] * sms.MAX_PARTS)
        self.max_units = limit
        self.table = [sms.parts_for_units(n, enc) for n in range(limit + 1)]

    def process(self, batch: Batch) -> None:
        """Count the parts of every text of the batch."""
        texts = batch.texts
        if self.ucs2:
            # Every character in the BMP: a text's UTF-16 length is its len().
            lengths, plain = speedups.text_lengths(texts)
        else:
            joined = "".join(texts)
            plain = sms.NOT_GSM7.search(joined) is None and sms.GSM7_EXT_RE.search(joined) is None
            lengths = list(map(len, texts)) if plain else []
        limit = self.max_units
        if plain:
            if max(lengths) <= limit:
                parts = list(map(self.table.__getitem__, lengths))
            else:
                table = self.table
                parts = [table[n] if n <= limit else 0 for n in lengths]
        else:
            parts = [sms.count_parts(t) if sms.units(t) <= limit else 0 for t in texts]
        batch.parts = parts
        if 0 in parts:
            idx = positions(parts, 0)
            details = [
                f"{sms.units(texts[i])} characters with its fields filled in, over the maximum "
                f"of {self.max_length}"
                for i in idx
            ]
            batch.drop(idx, RejectReason.TOO_LONG, details)
