"""Stage ``render``: fill defaults, reject rows missing a required field, and format every text.

For a template filed with a provider (:mod:`engine.core.provider_template`) it also checks each row's
parameter values against the provider's rules (length, no link) and keeps them in
``batch.params`` for the gateway. In an A/B test (:mod:`engine.core.variants`) each row gets the
text of its number's variant, and ``batch.variants`` its name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from operator import itemgetter

import numpy as np

from engine.core.messages import RejectReason
from engine.core.provider_template import LINK, ProviderTemplate, param_problem
from engine.core.template import BoundTemplate
from engine.core.variants import Split
from engine.pipeline.runner import Batch, positions

__all__ = ["Render"]

_LINK = re.compile(r"(?i)\b(?:https?://|www\.)|\b[a-z0-9-]+\.(?:com|cn|net|top|xyz|cc|me|io|shop)(?:/|\b)")


class Render:
    """Fills ``batch.texts`` with the template compiled into one list comprehension (defaults included)."""

    name = "render"

    def __init__(
        self,
        template: BoundTemplate,
        *,
        forbid_urls: bool = False,
        trusted: Sequence[str] = (),
        variants: Sequence[BoundTemplate] = (),
        split: Split | None = None,
        trusted_params: Sequence[str] = (),
    ) -> None:
        self.template = template
        self.forbid_urls = forbid_urls
        """Reject rows whose field values hold a link (for gateways that refuse links in variables);
        ``trusted`` fields are not checked (the campaign's own tracked link)."""
        self.variants = list(variants)
        """An A/B test's templates, in the order of ``split.names`` (empty: one text for all)."""
        self.split = split if self.variants else None
        if self.split is not None and len(self.split.names) != len(self.variants):
            raise ValueError("one bound template per variant of the split")
        self._field_cols = sorted(
            {t.index[f] for t in (template, *self.variants) for f in t.template.fields if f not in trusted}
        )
        self.provider: ProviderTemplate | None = template.template.provider
        """The filed template whose parameters each row must carry (None: free text)."""
        if self.provider is not None:
            p = self.provider
            self._param_cols = [template.index[f] for f in p.fields]
            self._param_defaults = [d or "" for d in p.defaults]
            self._param_trusted = [f in trusted_params for f in p.fields]
            """Parameters whose values may hold a link: the link a provider made for the row's
            number (``[links] mode = "provider"``), sent in the filed template's variable."""

    def process(self, batch: Batch) -> None:
        """Render every row of the batch."""
        t = self.template
        rows = batch.rows
        if self.forbid_urls and self._field_cols:
            self._drop_links(batch)
            rows = batch.rows
        if self.split is not None:
            self._render_variants(batch, self.split)
            return
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
        if self.provider is not None:
            self._params(batch)
            rows = batch.rows
        batch.texts = t.render_rows(rows)

    def _render_variants(self, batch: Batch, split: Split) -> None:
        """Each row in its number's variant: rows grouped by variant, each group rendered by its
        template in one call, the texts put back in row order."""
        members = self._members(batch, split)
        missing: dict[int, str] = {}
        rows = batch.rows
        for bound, idx in zip(self.variants, members, strict=True):
            for col, field in bound.required:
                values = [rows[i][col] for i in idx]
                if all(values):
                    continue
                for k in positions(values, ""):
                    missing.setdefault(idx[k], field)
        if missing:
            drop = sorted(missing)
            batch.drop(
                drop,
                RejectReason.MISSING_FIELD,
                [f"field {missing[i]!r} is empty; give it a default: {{{missing[i]}|…}}" for i in drop],
            )
            members = self._members(batch, split)
            rows = batch.rows
        texts: list[str] = [""] * len(rows)
        for bound, idx in zip(self.variants, members, strict=True):
            if idx:
                for i, text in zip(idx, bound.render_rows([rows[i] for i in idx]), strict=True):
                    texts[i] = text
        batch.texts = texts
        names = split.names
        order = np.zeros(len(rows), dtype=np.intp)
        for v, idx in enumerate(members):
            order[idx] = v
        batch.variants = [names[v] for v in order.tolist()]

    @staticmethod
    def _members(batch: Batch, split: Split) -> list[list[int]]:
        """Per variant, the batch positions of its rows (ascending)."""
        which = split.indices(batch.number_keys())
        return [np.flatnonzero(which == v).tolist() for v in range(len(split.names))]

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

    def _params(self, batch: Batch) -> None:
        """Each row's parameter values (defaults filled), rows breaking a provider rule dropped."""
        p = self.provider
        assert p is not None
        cols, defaults = self._param_cols, self._param_defaults
        values = [tuple([r[c] or d for c, d in zip(cols, defaults, strict=True)]) for r in batch.rows]
        bad: dict[int, tuple[str, str]] = {}
        for k, limit in enumerate(p.limits):
            column = [v[k] for v in values]
            # the usual case, every value fine, costs two C-level passes over the column
            if max(map(len, column), default=0) > limit or (
                not p.links_allowed and not self._param_trusted[k] and LINK.search("\x00".join(column))
            ):
                for i, v in enumerate(column):
                    problem = param_problem(p, k, v, links=self._param_trusted[k])
                    if i not in bad and problem is not None:
                        bad[i] = problem
        if bad:
            idx = sorted(bad)
            batch.drop(idx, [bad[i][0] for i in idx], [bad[i][1] for i in idx])
            skip = set(idx)
            values = [v for i, v in enumerate(values) if i not in skip]
        batch.params = [(p, v) for v in values]
