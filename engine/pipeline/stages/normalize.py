"""Stage ``normalize``: turn each row's phone value into a canonical number or reject it."""

from __future__ import annotations

from operator import itemgetter

from engine.core import speedups
from engine.core.phone import parse_phone
from engine.pipeline.runner import Batch, number_key

__all__ = ["Normalize"]


class Normalize:
    """Fills ``batch.numbers``: an 11-digit Chinese mobile, or E.164 for other countries.

    One batch-wide pass (:func:`engine.core.speedups.phone_keys`) keys the clean 11-digit values and
    reads the usual decorations (``+86 138-0013-8000``, ``0086…``, ``86…``), Excel's
    ``13800138000.0`` and full-width digits; only the rest go through
    :func:`engine.core.phone.parse_phone`, one by one. ``batch.keys`` is filled as well.

    With ``shard=(index, count)`` (a sharded send, :mod:`engine.run.shards`) it then keeps only the
    numbers of its shard — those whose key (:meth:`Batch.number_keys`) modulo ``count`` is
    ``index`` — and the rejected rows whose row number modulo ``count`` is ``index``; the others
    leave silently: another shard records them. Every later stage (dedupe, opt-outs, caps) so sees
    each number in exactly one process.
    """

    name = "normalize"

    def __init__(self, shard: tuple[int, int] | None = None) -> None:
        if shard is not None and not 0 <= shard[0] < shard[1]:
            raise ValueError(f"shard {shard[0]} of {shard[1]} does not exist")
        self.shard = shard

    def process(self, batch: Batch) -> None:
        """Normalize every phone value of the batch (and keep this shard's, when sharded)."""
        numbers = list(map(itemgetter(batch.phone_col), batch.rows))
        keys, odd = speedups.phone_keys(numbers)  # keyed, the cheap forms read in place
        batch.numbers = numbers
        batch.keys = keys
        if odd:
            self._odd(batch, numbers, keys, odd)
        if self.shard is not None and batch.nums:
            index, count = self.shard
            batch.keep([key % count == index for key in batch.number_keys()])

    def _odd(self, batch: Batch, numbers: list[str], keys: list[int], odd: list[int]) -> None:
        """The values the cheap tiers did not read: international, unusual or bad, through the
        full parser one by one. Each it reads is written back to ``numbers`` and keyed in
        ``keys``; the others are dropped with their reason."""
        idx: list[int] = []
        reasons: list[str] = []
        details: list[str] = []
        for i in odd:
            parsed = parse_phone(numbers[i])
            if parsed.reason is None:
                numbers[i] = parsed.national or parsed.e164
                keys[i] = number_key(numbers[i])
            else:
                idx.append(i)
                reasons.append(parsed.reason)
                details.append(parsed.detail)
        if self.shard is not None:
            index, count = self.shard
            nums = batch.nums
            if any(nums[i] % count != index for i in idx):
                # Another shard records those: take them out silently first, then drop the rest
                # at their new positions (each moved up by the foreign rows before it).
                mask = [True] * len(nums)
                mine: list[int] = []
                keep_reasons: list[str] = []
                keep_details: list[str] = []
                foreign = 0
                for i, reason, detail in zip(idx, reasons, details, strict=True):
                    if nums[i] % count == index:
                        mine.append(i - foreign)
                        keep_reasons.append(reason)
                        keep_details.append(detail)
                    else:
                        mask[i] = False
                        foreign += 1
                batch.keep(mask)
                idx, reasons, details = mine, keep_reasons, keep_details
        batch.drop(idx, reasons, details)
