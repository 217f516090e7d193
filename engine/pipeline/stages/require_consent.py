"""Stage ``require_consent``: marketing only to numbers with a consent record (``pigeon consent import``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from engine.core.messages import State, SuppressReason
from engine.pipeline.runner import Batch

__all__ = ["RequireConsent"]


class RequireConsent:
    """Suppresses the numbers without a consent record (reason ``no_consent``), one look-up per batch.

    ``consented(keys)`` answers with the indices of the :func:`~engine.core.messages.number_key`
    keys that have a record: a loaded set's ``contains`` (a blast: read once before it starts), or
    a query of the store (the service: every batch sees consents imported meanwhile).
    """

    name = "require_consent"

    def __init__(self, consented: Callable[[Sequence[int]], list[int]]) -> None:
        self.consented = consented

    def process(self, batch: Batch) -> None:
        """Suppress the numbers of ``batch`` that gave no consent."""
        keys = batch.number_keys()
        if not keys:
            return
        have = set(self.consented(keys))
        if len(have) == len(keys):
            return
        missing = [i for i in range(len(keys)) if i not in have]
        batch.drop(
            missing,
            SuppressReason.NO_CONSENT,
            "no consent record for this number (the campaign or API key requires one: "
            "`pigeon consent import`)",
            state=State.SUPPRESSED,
        )
