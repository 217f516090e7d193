"""Stage ``render``: fill defaults, reject rows missing a required field, and format every text."""

from __future__ import annotations

import re
from operator import itemgetter

from engine.messages import RejectReason
from engine.pipeline import Batch, positions
from engine.template import BoundTemplate

__all__ = ["Render"]

_LINK = re.compile(r"(?i)\b(?:https?://|www\.)|\b[a-z0-9-]+\.(?:com|cn|net|top|xyz|cc|me|io|shop)(?:/|\b)")


class Render:
    """Fills ``batch.texts`` with the template compiled into one list comprehension (defaults included)."""

    name = "render"

    def __init__(self, template: BoundTemplate, *, forbid_urls: bool = False) -> None:
        self.template = template
        self.forbid_urls = forbid_urls
        """Reject rows whose field values hold a link (for gateways that refuse links in variables)."""
        self._field_cols = sorted({template.index[f] for f in template.template.fields})

    def process(self, batch: Batch) -> None:
        """Render every row of the batch."""
        t = self.template
        rows = batch.rows
        if self.forbid_urls and self._field_cols:
            self._drop_links(batch)
            rows = batch.rows
        missing: dict[int, str] = {}
        for col, field in t.required:
            getter = itemgetter(col)
            if all(map(getter, rows)):  # the usual case: no value empty, no list built
                continue
            for i in positions(list(map(getter, rows)), ""):
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

    def _drop_links(self, batch: Batch) -> None:
        rows = batch.rows
        values = ["\x00".join([r[c] for c in self._field_cols]) for r in rows]
        if not _LINK.search("\x00".join(values)):
            return
        bad = [i for i, v in enumerate(values) if _LINK.search(v)]
        batch.drop(
            bad,
            RejectReason.URL_IN_FIELD,
            "a field holds a link, and a gateway of this campaign refuses links in variables: "
            "put the link in the template text",
        )
