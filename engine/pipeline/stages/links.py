"""Stage ``links``: each row gets the campaign's tracked link (group, own or provider-made) as ``{link}``."""

from __future__ import annotations

from engine.core.links import link_url
from engine.core.messages import RejectReason
from engine.pipeline.runner import Batch
from engine.state.links import LinkStore

__all__ = ["Links"]

ALL = "all"


class Links:
    """Appends the link to every row (the template is bound to the segment's columns plus the link
    field, last). ``group`` mode: one code per group, made once; ``recipient`` mode: one code per
    row, the batch's codes stored in one transaction (``record`` False for previews: the same
    codes, nothing stored); ``provider`` mode: the link the gateway's provider made for the row's
    number, which :class:`engine.run.provider_links.ProviderLinker` put in :attr:`provided` for
    this batch (a number without one is rejected ``no_link``; previews get a stand-in of
    ``{domain}/`` and ``length`` characters). Runs before ``render``, so ``count_parts`` bills the
    link's characters."""

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
        self.provided: dict[str, str] | None = None
        """``provider`` mode: number → its provider link, for the batch about to run."""

    def groups(self, batch: Batch) -> list[str]:
        """Each row's group (``all`` without a group column)."""
        gc = self.group_col
        return [str(r[gc]).strip() or ALL for r in batch.rows] if gc is not None else [ALL] * len(batch.rows)

    def process(self, batch: Batch) -> None:
        """Add the link column to ``batch.rows``."""
        rows = batch.rows
        if not rows:
            return
        if self.mode == "provider":
            if not self.record:
                stand_in = link_url(self.domain or "https://x.cn", "x" * self.length)
                batch.rows = [(*r, stand_in) for r in rows]
                return
            if self.provided is None:
                raise RuntimeError("provider links are made before this stage (OpenSegment.abatches)")
            got = self.provided
            missing = [i for i, n in enumerate(batch.numbers) if n not in got]
            batch.drop(missing, RejectReason.NO_LINK, "the provider made no link for this number")
            batch.rows = [(*r, got[n]) for r, n in zip(batch.rows, batch.numbers, strict=True)]
            return
        groups = self.groups(batch)
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
