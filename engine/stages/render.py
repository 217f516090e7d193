"""Stage ``render``: fill defaults, reject rows missing a required field, and format every text."""

from __future__ import annotations

from engine.messages import RejectReason
from engine.pipeline import Batch
from engine.template import BoundTemplate

__all__ = ["Render"]


class Render:
    """Fills ``batch.texts`` with the precompiled template's ``str.format`` over each row."""

    name = "render"

    def __init__(self, template: BoundTemplate) -> None:
        self.template = template

    def process(self, batch: Batch) -> None:
        """Render every row of the batch."""
        t = self.template
        rows = batch.rows
        for col, default in t.defaults:
            if "" in [r[col] for r in rows]:
                for r in rows:
                    if not r[col]:
                        r[col] = default
        missing: dict[int, str] = {}
        for col, field in t.required:
            values = [r[col] for r in rows]
            if "" in values:
                for i, v in enumerate(values):
                    if not v:
                        missing.setdefault(i, field)
        if missing:
            idx = sorted(missing)
            batch.drop(
                idx,
                RejectReason.MISSING_FIELD,
                [f"field {missing[i]!r} is empty; give it a default: {{{missing[i]}|…}}" for i in idx],
            )
            rows = batch.rows
        fmt = t.format
        batch.texts = [fmt(*r) for r in rows]
