"""Provider-made per-phone links (``[links] mode = "provider"``): made a batch at a time, clicks pulled.

**Making.** A campaign's batch is read in two halves (:meth:`engine.run.plan.OpenSegment.abatches`):
the stages up to ``route``, then — awaited — :meth:`ProviderLinker.prepare`, then ``links`` →
``render`` → ``count_parts`` → the rest. ``prepare`` looks the batch's numbers up in the links
store (a resume finds the links an earlier run made and makes none again), asks each carrier's
primary gateway for the missing ones in **one** :meth:`~engine.sending.gateway.ManagedLinks.create_links`
call per gateway and batch (the gateway splits it into requests as its API allows), stores them in
one transaction, and hands the batch's links to the ``links`` stage. A gateway error that may pass
(unavailable, unreachable, timeout) is tried again after 0.5, 1, 2, 4 s; then, or on any other
error, :class:`LinksUnavailable` stops the run with everyone not handed over ``pending``.

Links are made for the rows that reach ``links`` (after opt-outs, consent, caps and routing): a
row dropped later — a duplicate number, the holdout, outside the send window — has a link that is
never sent. A number's link belongs to the row it was first made for.

**Pulling.** :func:`pull_clicks` (``pigeon links pull ID``) asks every gateway that made links for
the campaign for its clicks since the first of them, keeps those on the campaign's links and
records each once in the links store's ``clicks`` table, against the link's recipient row and
group — where ``pigeon report ID --outcomes`` counts redirector clicks too.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

import anyio
import msgspec

from engine.core.config import LoadedEngine, convert_section
from engine.core.errors import EngineError, GatewayError
from engine.core.plugin_host import PluginHost
from engine.pipeline.runner import Batch
from engine.pipeline.stages.links import Links
from engine.sending.gateway import Gateway, GatewayContext, ManagedLink, ManagedLinks
from engine.state.ledger.store import Ledger
from engine.state.links import LinkStore, ProviderLink, links_path

__all__ = ["RETRY_DELAYS", "LinksUnavailable", "ProviderLinker", "PullCounts", "apull_clicks", "pull_clicks"]

RETRY_DELAYS: Final = (0.5, 1.0, 2.0, 4.0)
"""Seconds before each new try of a ``create_links`` that failed with a retriable gateway error."""


class LinksUnavailable(EngineError):
    """The provider made no links for a batch (``reason``: ``gateway_refused`` when it refused the
    credentials or the request, ``links_unavailable`` when it did not answer in time)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _e164(number: str) -> str:
    """A number as the stages keep it (national for China) as gateways take it."""
    return number if number[0] == "+" else "+86" + number


class ProviderLinker:
    """Makes and stores the links of a batch's numbers before its ``links`` stage runs."""

    def __init__(
        self,
        stage: Links,
        gateways: Mapping[str, ManagedLinks],
        routes: Mapping[str, str],
        *,
        delays: tuple[float, ...] = RETRY_DELAYS,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.stage = stage
        self.gateways = gateways
        """Name → gateway, for the primary gateway of every carrier."""
        self.routes = routes
        """Carrier → name of its primary gateway."""
        self.delays = delays
        self.notify = notify
        self.made = 0
        """Links made by the provider in this run (for tests and the summary)."""
        self.calls = 0
        """``create_links`` calls made in this run."""

    async def prepare(self, batch: Batch) -> None:
        """Give ``batch`` (run up to ``route``) its numbers' links: stored ones, else new ones."""
        stage = self.stage
        store, campaign = stage.store, stage.campaign
        numbers, carriers = batch.numbers, batch.carriers
        known = store.provider_urls(campaign, numbers)
        need: dict[str, dict[str, int]] = {}
        routes = self.routes
        for i, (n, c) in enumerate(zip(numbers, carriers, strict=True)):
            if n not in known:
                need.setdefault(routes[c], {}).setdefault(n, i)
        if need:
            groups = stage.groups(batch)
            nums = batch.nums
            new: list[ProviderLink] = []
            for name, todo in need.items():
                made = await self._create(name, [_e164(n) for n in todo], stage.target, campaign)
                for (n, i), link in zip(todo.items(), made, strict=True):
                    if link.url:
                        new.append(ProviderLink((n, link.url, groups[i], nums[i], name, link.expires_at)))
                        known[n] = link.url
            store.add_provider_links(campaign, new)
            self.made += len(new)
        stage.provided = known

    async def _create(self, name: str, phones: list[str], target: str, campaign: str) -> list[ManagedLink]:
        gateway = self.gateways[name]
        for attempt in range(len(self.delays) + 1):
            self.calls += 1
            try:
                made = list(await gateway.create_links(phones, target, campaign))
            except GatewayError as exc:
                if not exc.retriable or attempt == len(self.delays):
                    reason = "links_unavailable" if exc.retriable else "gateway_refused"
                    raise LinksUnavailable(
                        reason,
                        f"gateway {name!r} made no provider links ({type(exc).__name__}: {exc}); "
                        "nothing of this batch was sent: resume the campaign when the provider answers",
                    ) from exc
                if self.notify is not None:
                    self.notify(f"gateway {name!r}: provider links: {exc}; trying again")
                await anyio.sleep(self.delays[attempt])
                continue
            if len(made) != len(phones):
                raise LinksUnavailable(
                    "gateway_refused",
                    f"gateway {name!r} answered {len(made)} links for {len(phones)} numbers (a plugin bug)",
                )
            return made
        raise AssertionError("unreachable")  # pragma: no cover


class PullCounts(msgspec.Struct, kw_only=True):
    """What one ``pigeon links pull`` found."""

    campaign: str
    links: int = 0
    """Provider links the campaign has."""
    clicks_seen: int = 0
    """Clicks the providers listed (on any of the account's links made in the window)."""
    clicks_new: int = 0
    """Clicks on the campaign's links recorded by this pull (one per link, ever)."""
    clicked: int = 0
    """The campaign's links clicked so far."""
    gateways: list[str] = msgspec.field(default_factory=list)


async def apull_clicks(
    engine: LoadedEngine, campaign_id: str, *, host: PluginHost | None = None
) -> PullCounts:
    """Pull the provider clicks of ``campaign_id``'s links into the links store (see the module)."""
    path = links_path(engine.store_path)
    counts = PullCounts(campaign=campaign_id)
    if not path.exists():
        return counts
    store = LinkStore(path)
    try:
        firsts = store.provider_gateways(campaign_id)
        links = store.provider_links(campaign_id)
        by_number = {link[0]: url for url, link in links.items()}
        counts.links, counts.gateways = len(links), sorted(firsts)
        if not links:
            return counts
        ecfg = engine.config
        host = host or PluginHost(disabled=ecfg.plugins.disabled)
        with tempfile.TemporaryDirectory(prefix="pigeon-links-") as scratch:  # (a gateway's journal)
            run_dir = Path(scratch)
            for name, since in sorted(firsts.items()):
                gcfg = ecfg.gateways.get(name)
                if gcfg is None:
                    raise EngineError(
                        f"{engine.file}: gateway {name!r} made links for campaign {campaign_id!r} but is no "
                        "longer in [gateways]: put it back to pull its clicks"
                    )
                reg = host.gateways.get(gcfg.plugin)
                opts = convert_section(
                    gcfg.options, reg.config_type, file=engine.file, path=f"gateways.{name}.options"
                )
                gateway: Gateway = reg.factory(
                    opts, GatewayContext(name=name, base_dir=engine.base_dir, run_dir=run_dir)
                )
                try:
                    if not isinstance(gateway, ManagedLinks):
                        raise EngineError(f"gateway {name!r} ({gcfg.plugin}) cannot report link clicks")
                    clicks = await gateway.link_clicks(campaign_id, since)
                finally:
                    await gateway.aclose()
                counts.clicks_seen += len(clicks)
                pairs = [
                    (c.url or by_number.get(c.phone.removeprefix("+86"), ""), c.clicked_at) for c in clicks
                ]
                counts.clicks_new += store.record_provider_clicks(campaign_id, pairs, links)
        counts.clicked = store.provider_clicked(campaign_id)
    finally:
        store.close()
    return counts


def pull_clicks(
    engine: LoadedEngine, campaign_id: str, *, backend: str = "asyncio", ledger: Ledger | None = None
) -> PullCounts:
    """:func:`apull_clicks` on its own event loop (``ledger``: only to check the campaign exists)."""
    if ledger is not None and ledger.campaign(campaign_id) is None:
        raise EngineError(f"no campaign {campaign_id!r} in {ledger.path}")
    return anyio.run(lambda: apull_clicks(engine, campaign_id), backend=backend)
