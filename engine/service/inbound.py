"""What gateways bring in: delivery reports and MO replies, by webhook or on their own connections."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial

import anyio
import msgspec

from engine.core.errors import ConfigError
from engine.core.messages import DeliveryReport
from engine.core.phone import mask, parse_phone
from engine.core.plugin_host import PluginHost
from engine.core.timestamps import epoch_seconds
from engine.sending.gateway import Receiving
from engine.sending.webhooks import GenericParser, MoReply, WebhookParser, opt_outs_in
from engine.service.callbacks import INSERT_EVENT, event_row, report_state
from engine.service.context import ServiceContext
from engine.service.early_reports import RETRY_EVERY, EarlyReports
from engine.service.stored import by_row, is_opaque, load
from engine.service.wire import API_CAMPAIGNS, ApiError
from engine.state.ledger.store import Ledger
from engine.state.optout import DEFAULT_KEYWORDS
from engine.state.outbox import campaign_callback

__all__ = ["Inbound", "sane_reports"]

log = logging.getLogger("pigeon.service")


class Inbound:
    """Webhook parsers per gateway; reports matched in memory and in the ledger; replies' opt-outs
    recorded in the store, the service's opt-out set and every listener's (the running blasts)."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.parsers: dict[str, WebhookParser] = {}
        self.keywords = ctx.service.optout_keywords or sorted(DEFAULT_KEYWORDS)
        self.optout_listeners: list[Callable[[list[str]], None]] = []
        """Called with the numbers of every new opt-out from a reply."""
        self.reports_ledger: Ledger | None = None
        """Delivery reports' connection, used by one thread at a time (:meth:`apply_reports`)."""
        self._reports_limiter = anyio.CapacityLimiter(1)
        self._scope: anyio.CancelScope | None = None
        self.early = EarlyReports()
        """Reports that matched no message yet (come before their submit answer), tried again."""

    def open(self) -> None:
        """Open the reports' own ledger connection."""
        self.reports_ledger = Ledger(self.ctx.engine.store_path)

    def register(self, host: PluginHost, gateways: Iterable[str]) -> None:
        """A parser per gateway: ``service.webhooks.<gateway>.parser`` (generic by default) and its secret."""
        registry = host.webhook_parsers
        for name in gateways:
            wcfg = self.ctx.service.webhooks.get(name)
            secret: bytes | None = None
            if wcfg is not None and wcfg.secret_env:
                value = os.environ.get(wcfg.secret_env)
                if not value:
                    raise ConfigError(
                        self.ctx.engine.file,
                        f"service.webhooks.{name}.secret_env",
                        f"the environment variable {wcfg.secret_env} is not set",
                    )
                secret = value.encode()
            kind = wcfg.parser if wcfg is not None else "generic"
            allow = wcfg.allow_unsigned if wcfg is not None else False
            if kind == "generic":
                self.parsers[name] = GenericParser(secret, allow_unsigned=allow)
            elif kind in registry:
                self.parsers[name] = registry.get(kind).factory(secret, name)
            else:
                known = ["generic", *registry.names()]
                raise ConfigError(
                    self.ctx.engine.file,
                    f"service.webhooks.{name}.parser",
                    f"unknown webhook parser {kind!r}; registered: {', '.join(known)}",
                )

    def parser(self, gateway: str) -> WebhookParser:
        """The parser of ``gateway``'s callbacks; 404 for an unknown gateway."""
        p = self.parsers.get(gateway)
        if p is None:
            raise ApiError(  # (no list of the configured ones: the caller is not authenticated)
                404, "Unknown gateway", "no such gateway receives callbacks here (service.webhooks)"
            )
        return p

    async def apply_reports(self, reports: Sequence[DeliveryReport]) -> int:
        """Record delivery reports (ledger and memory); how many matched a message.

        The ledger's part runs in a thread on a connection of its own: matching by provider id may
        first bring the provider-id index up to date (:meth:`Ledger.index_providers`), which must
        not hold up the event loop."""
        reports = sane_reports(reports, self.ctx.clock.time())
        latencies: dict[int, float] = {}
        matched, missed = await self._apply_reports(reports, latencies)
        if missed:  # their submit answer may not be recorded yet: tried again for a while
            self.early.park(missed, time.monotonic())
        self.ctx.counters["reports"] += len(reports)
        by_gateway: dict[str, tuple[Counter[str], list[float]]] = {}
        for i, r in enumerate(reports):
            counts, seconds = by_gateway.setdefault(r.gateway, (Counter(), []))
            counts[r.status.value] += 1
            if i in latencies:
                seconds.append(latencies[i])
        for gw, (counts, seconds) in by_gateway.items():
            self.ctx.metrics.delivery_reports(counts, seconds, gateway=gw)
        self.ctx.counters["reports_matched"] += matched
        log.info(
            "delivery reports",
            extra={
                "event": "webhook.reports",
                "count": len(reports),
                "matched": matched,
                "gateway": reports[0].gateway if reports else "",
            },
        )
        return matched

    async def _apply_reports(
        self, reports: Sequence[DeliveryReport], latencies: dict[int, float] | None = None
    ) -> tuple[int, list[DeliveryReport]]:
        """Apply reports to the ledger, then to the messages in memory (which see an answer before
        the ledger commits it): how many matched, and those that matched nothing in the ledger
        (without a ledger: in memory). ``latencies`` gets report index → seconds to the report."""
        missed: list[DeliveryReport] = []
        found = 0
        if self.reports_ledger is not None:
            apply = partial(self._ledger_reports, self.reports_ledger, reports, missed, latencies)
            found = await anyio.to_thread.run_sync(apply, limiter=self._reports_limiter)
        in_memory = None if self.reports_ledger is not None else missed
        matched = self.ctx.records.reports(reports, in_memory, latencies=latencies)
        return max(matched, found), missed

    def _ledger_reports(
        self,
        ledger: Ledger,
        reports: Sequence[DeliveryReport],
        missed: list[DeliveryReport],
        latencies: dict[int, float] | None,
    ) -> int:
        """(In a worker thread.) The reports into the ledger: an API message's opaque id is read as
        its ledger id first, and each matched API message with a callback URL gets its event in
        the reports' transaction. Returns how many matched; the unmatched go to ``missed``
        (as they came)."""
        db = ledger.db
        opaque = [r.message_id for r in reports if r.message_id and is_opaque(r.message_id)]
        stored = load(db, opaque) if opaque else {}
        given: Sequence[DeliveryReport] = reports
        original: dict[int, DeliveryReport] = {}
        if stored:
            translated: list[DeliveryReport] = []
            for r in reports:
                m = stored.get(r.message_id)
                if m is not None:
                    t = msgspec.structs.replace(r, message_id=m.ledger_id)
                    original[id(t)] = r
                    translated.append(t)
                else:
                    translated.append(r)
            given = translated
        unmatched: list[DeliveryReport] = []
        n = ledger.apply_reports(given, unmatched, latencies=latencies, also=_report_events)
        missed += [original.get(id(r), r) for r in unmatched]
        return n

    async def retry_early(self, closing: anyio.Event) -> None:
        """Try the parked reports again until they match or expire (:mod:`engine.service.early_reports`),
        until ``closing`` is set."""
        while not closing.is_set():
            with anyio.move_on_after(RETRY_EVERY):
                await closing.wait()
            items = self.early.take(time.monotonic()) if len(self.early) else []
            if not items:
                continue
            matched, missed = await self._apply_reports([r for _, r in items])
            self.ctx.counters["reports_matched"] += matched
            left = {id(r) for r in missed}
            self.early.put_back([p for p in items if id(p[1]) in left])

    def apply_replies(self, replies: Sequence[MoReply]) -> int:
        """Record MO replies; opt-out keywords go to the store and every running blast's set now."""
        numbers, records = opt_outs_in(replies, self.keywords)
        if self.ctx.store is not None:  # every reply, for the outcomes report's replies column
            now = time.time()
            stop = {r.number for r in records}
            heard = [
                (p.e164, epoch_seconds(r.at, now) or now, p.e164 in stop)
                for r in replies
                if (p := parse_phone(r.from_)).reason is None
            ]
            self.ctx.store.add_replies(heard)
        if records:
            assert self.ctx.store is not None
            self.ctx.metrics.optouts_added(self.ctx.store.add_optouts(records), "mo")
            self.ctx.optouts.add(numbers)
            for listener in self.optout_listeners:
                listener(numbers)
        self.ctx.counters["replies"] += len(replies)
        self.ctx.counters["optouts"] += len(records)
        log.info(
            "MO replies",
            extra={
                "event": "webhook.replies",
                "count": len(replies),
                "optouts": len(records),
                "numbers": [mask(n) for n in numbers[:20]],
            },
        )
        return len(records)

    async def serve(self, gateways: Mapping[str, Receiving]) -> None:
        """Feed what SMPP/CMPP connections bring in (receipts, MO) to the webhook path until stopped."""
        sink = _Sink(self)
        async with anyio.create_task_group() as tg:
            self._scope = tg.cancel_scope
            for gw in gateways.values():
                gw.attach(sink)
                tg.start_soon(gw.serve)

    def stop(self) -> None:
        """Stop reading the gateways' connections."""
        if self._scope is not None:
            self._scope.cancel()

    def close(self) -> None:
        """Close the reports' connection."""
        if self.reports_ledger is not None:
            self.reports_ledger.close()


def sane_reports(reports: Sequence[DeliveryReport], now: float) -> Sequence[DeliveryReport]:
    """``reports`` with every ``done_at`` in Unix seconds: a plugin parser's milliseconds converted,
    a value that is no sane time dropped (``0``: unknown), as the generic parser refuses them."""
    out: list[DeliveryReport] | None = None
    for i, r in enumerate(reports):
        seconds = epoch_seconds(r.done_at, now) or 0.0
        if seconds != r.done_at:
            if out is None:
                out = list(reports)
            out[i] = msgspec.structs.replace(r, done_at=seconds)
    return reports if out is None else out


class _Sink:
    """Receipts and MO read on a gateway's own connections go where webhooks' go."""

    def __init__(self, inbound: Inbound) -> None:
        self.inbound = inbound

    async def reports(self, reports: Sequence[DeliveryReport]) -> None:
        """:meth:`Inbound.apply_reports`."""
        await self.inbound.apply_reports(reports)

    async def replies(self, replies: Sequence[MoReply]) -> None:
        """:meth:`Inbound.apply_replies` (an R / 退订 records an opt-out)."""
        self.inbound.apply_replies(replies)


def _report_events(db: sqlite3.Connection, hits: list[tuple[str, int, DeliveryReport]]) -> None:
    """The status-callback events of matched reports (in the reports' transaction, on ``db``)."""
    now = time.time()
    rows: list[tuple[str, bytes, float]] = []
    hooks: dict[str, tuple[str, bool] | None] = {}
    for campaign, row, r in hits:
        if campaign not in API_CAMPAIGNS:  # a blast's recipient: its campaign's callback, if any
            if campaign not in hooks:
                hooks[campaign] = campaign_callback(db, campaign)
            hook = hooks[campaign]
            if hook is not None:
                state, reason = report_state(r.status.value, r.code)
                rows.append(
                    event_row(
                        hook[0],
                        message_id=f"{campaign}-{row}",
                        campaign=campaign,
                        state=state,
                        reason=reason,
                        at=r.done_at or now,
                        to_e164="",  # (the ledger keeps no numbers: the sent event had it)
                        show_numbers=hook[1],
                    )
                )
            continue
        m = by_row(db, campaign, row)
        if m is None or m.callback_url is None:
            continue
        state, reason = report_state(r.status.value, r.code)
        rows.append(
            event_row(
                m.callback_url,
                message_id=m.id,
                campaign=campaign,
                state=state,
                reason=reason,
                at=r.done_at or now,
                to_e164=m.to_e164,
                show_numbers=m.show_numbers,
            )
        )
    if rows:
        db.executemany(INSERT_EVENT, rows)
