"""Stage ``holdout``: a fixed random share of the recipients is kept back, unsent, to measure lift."""

from __future__ import annotations

import numpy as np

from engine.core.holdout import held_out
from engine.core.messages import State, SuppressReason
from engine.pipeline.runner import Batch

__all__ = ["Holdout"]


class Holdout:
    """Suppresses the campaign's holdout (reason ``held_out``): :func:`engine.core.holdout.held_out`
    of each number — the same recipients on every run, resume and shard.

    It runs after every rule that refuses a row (opt-outs, caps, duplicates, same content), so the
    holdout is a random share of the recipients that *would* have been sent: the outcomes report
    compares like with like.
    """

    name = "holdout"

    def __init__(self, campaign_id: str, share: float) -> None:
        self.campaign_id = campaign_id
        self.share = share
        self.detail = f"kept back to measure the campaign's effect (holdout {share:.1%})"

    def process(self, batch: Batch) -> None:
        """Suppress the numbers of ``batch`` that are in the holdout."""
        if not batch.nums:
            return
        hit = np.flatnonzero(held_out(batch.number_keys(), self.campaign_id, self.share))
        if hit.size:
            batch.drop(hit.tolist(), SuppressReason.HELD_OUT, self.detail, state=State.SUPPRESSED)
