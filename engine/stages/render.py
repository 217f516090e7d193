"""Stage ``render``: fill defaults, reject rows missing a required field, and format every text."""

from __future__ import annotations

from operator import itemgetter

from engine.messages import RejectReason
from engine.pipeline import Batch, positions
from engine.template import BoundTemplate

__all__ = ["Render"]


class Render:
    """Fills ``batch.texts`` with the template compiled into one list comprehension (defaults included)."""

    name = "render"

    def __init__(self, template: BoundTemplate) -> None:
        self.template = template

    def process(self, batch: Batch) -> None:
        """Render every row of the batch."""
        t = self.template
        rows = batch.rows
        missing: dict[int, str] = {}
        for col, field in t.required:
            for i in positions(list(map(itemgetter(col), rows)), ""):
                missing.setdefault(i, field)
        if missing:
            idx = sorted(missing)
            batch.drop(
                idx,
                RejectReason.MISSING_FIELD,
                [f"field {missing[i]!r} is empty; give it a default: {{{missing[i]}|…}}" for i in idx],
            )
            rows = batch.rows
        batch.texts = t.render_rows(rows)
