"""Stage ``same_content``: the same text to the same number at most once per short window (30 s)."""

from __future__ import annotations

import zlib
from collections.abc import Mapping

from engine.core.messages import State, SuppressReason
from engine.pipeline.runner import Batch

__all__ = ["SameContent", "content_hash"]


def content_hash(text: str) -> int:
    """A stable 32-bit hash of a message text (crc32; never 0, which the store reads as 'none')."""
    return zlib.crc32(text.encode("utf-8")) or 1


class SameContent:
    """Suppresses a message whose exact text the number got within the window (reason ``same_content``).

    ``recent`` holds, for numbers sent to within the window by earlier runs and other campaigns,
    the hashes of their texts; it is small (a window of seconds), so only rows whose number is in
    it cost a hash. Within one campaign run, dedupe already sends each number once.
    """

    name = "same_content"

    def __init__(self, recent: Mapping[int, set[int]], period: str) -> None:
        self.recent = recent
        self.detail = f"the same text went to this number less than {period} ago"

    def process(self, batch: Batch) -> None:
        """Suppress repeats of a recent text in ``batch``."""
        recent = self.recent
        if not recent:
            return
        keys, texts = batch.number_keys(), batch.texts
        hits = [i for i, k in enumerate(keys) if k in recent and content_hash(texts[i]) in recent[k]]
        if hits:
            batch.drop(hits, SuppressReason.SAME_CONTENT, self.detail, state=State.SUPPRESSED)
