"""Stage ``links``: each row gets the campaign's tracked link (its group's, or its own) as ``{link}``."""

from __future__ import annotations

from engine.core.links import link_url
from engine.pipeline.runner import Batch
from engine.state.links import LinkStore

__all__ = ["Links"]

ALL = "all"


class Links:
    """Appends the link to every row (the template is bound to the segment's columns plus the link
    field, last). ``group`` mode: one code per group, made once; ``recipient`` mode: one code per
    row, the batch's codes stored in one transaction (``record`` False for previews: the same
    codes, nothing stored). Runs before ``render``, so ``count_parts`` bills the link's characters."""

    name = "links"

    def __init__(
        self,
        store: LinkStore,
        campaign: str,
        *,
        mode: str,
        target: str,
        domain: str,
        length: int,
        group_col: int | None,
        record: bool = True,
    ) -> None:
        self.store = store
        self.campaign = campaign
        self.mode = mode
        self.target = target
        self.domain = domain
        self.length = length
        self.group_col = group_col
        self.record = record
        self._group_links: dict[str, str] = {}

    def process(self, batch: Batch) -> None:
        """Add the link column to ``batch.rows``."""
        rows = batch.rows
        if not rows:
            return
        gc = self.group_col
        groups = [str(r[gc]).strip() or ALL for r in rows] if gc is not None else [ALL] * len(rows)
        if self.mode == "group":
            known = self._group_links
            new = [g for g in dict.fromkeys(groups) if g not in known]
            if new:
                codes = self.store.assign(
                    self.campaign, new, new, [0] * len(new), self.target, self.length, write=self.record
                )
                for g, c in zip(new, codes, strict=True):
                    known[g] = link_url(self.domain, c)
            urls = [known[g] for g in groups]
        else:
            nums = batch.nums
            codes = self.store.assign(
                self.campaign, list(map(str, nums)), groups, nums, self.target, self.length, write=self.record
            )
            base = self.domain.rstrip("/") + "/"
            urls = [base + c for c in codes]
        batch.rows = [(*r, u) for r, u in zip(rows, urls, strict=True)]
