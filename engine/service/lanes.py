"""The API's lanes: per priority a stream (ledger campaign, caps, stage runners) and a lane per gateway."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from engine.coordination.contract import Coordinator
from engine.coordination.gate import SLOW_DOWN, ApiGate, shared_budgets
from engine.core import sms
from engine.core.carriers import PrefixTable, default_prefix_table
from engine.core.config import DEFAULT_MARKETING_WINDOW
from engine.core.messages import MessageBatch
from engine.core.periods import parse_period
from engine.core.sendwindow import SendWindow
from engine.core.template import DEFAULT_OPT_OUT, Template, compile_template
from engine.observability.report import RunRecorder
from engine.pipeline.runner import Stage, StageRunner
from engine.pipeline.stages import (
    Cap,
    CountParts,
    HoldQuietHours,
    Normalize,
    Render,
    RequireConsent,
    Route,
    SuppressOptouts,
)
from engine.sending.priority import PriorityLane, split_budgets
from engine.sending.retry import RetryPolicy
from engine.sending.sender import Lane, LaneItem, RouteHealth
from engine.service.api_templates import ApiTemplates
from engine.service.callbacks import CallbackSink
from engine.service.context import ServiceContext
from engine.service.gateways import ServiceGateways
from engine.service.wire import Priority
from engine.state.caps import CapState, CapWindow
from engine.state.ledger.lease import CampaignBusy
from engine.state.ledger.records import LedgerError, file_fingerprint
from engine.state.ledger.run import CampaignLedger
from engine.state.ledger.tx import transaction

__all__ = ["TEXT_TEMPLATE", "ApiLanes", "RowCounter", "Stream"]

log = logging.getLogger("pigeon.service")

TEXT_TEMPLATE = "__text__"
"""The internal template of ``text`` messages (the text is its one field)."""


class RowCounter:
    """Row numbers of an API stream, unique across restarts (blocks reserved in the store file)."""

    BLOCK = 1024

    def __init__(self, db: sqlite3.Connection, name: str) -> None:
        self.db, self.name = db, name
        with transaction(db):
            db.execute(
                "CREATE TABLE IF NOT EXISTS service_rows (name TEXT PRIMARY KEY, next INTEGER NOT NULL)"
            )
        self.next = self.end = 0

    def take(self, n: int) -> list[int]:
        """``n`` fresh row numbers."""
        if self.next + n > self.end:
            size = max(n, self.BLOCK)
            with transaction(self.db):
                row = self.db.execute("SELECT next FROM service_rows WHERE name = ?", (self.name,)).fetchone()
                start = row[0] if row else 1
                self.db.execute(
                    "INSERT OR REPLACE INTO service_rows VALUES (?, ?)", (self.name, start + size)
                )
            self.next, self.end = start, start + size
        rows = list(range(self.next, self.next + n))
        self.next += n
        return rows


@dataclass
class Stream:
    """Everything one priority of API messages goes through."""

    priority: Priority
    campaign: str
    ledger: CampaignLedger | None
    recorder: RunRecorder
    rows: RowCounter
    caps: CapState | None
    inboxes: dict[str, MemoryObjectSendStream[LaneItem]] = field(default_factory=dict)
    """Gateway → the lane's inbox."""
    runners: dict[str, tuple[Template, StageRunner]] = field(default_factory=dict)
    gate: ApiGate | None = None
    """The shared budgets and checks (opt-outs, caps) of an engine with a ``[coordinator]``."""
    callbacks: CallbackSink | None = None
    """Where the status callbacks of its messages are written (the stream's outbox sink)."""


class ApiLanes:
    """The transactional and the marketing stream, and their lanes into the service's gateways.

    The transactional (priority) lane has its own in-flight window and the reserved part of each
    carrier's rate (:mod:`engine.sending.priority`), so a running blast never holds it back by more
    than a request already on the wire.
    """

    def __init__(self, ctx: ServiceContext, gateways: ServiceGateways, templates: ApiTemplates) -> None:
        self.ctx = ctx
        self.gateways = gateways
        self.templates = templates
        self.table: PrefixTable = default_prefix_table()
        self.streams: dict[str, Stream] = {}
        self.urgent_pending = 0
        """Transactional messages accepted and not yet handed to a gateway (blasts yield to them)."""

    def start(self, tg: TaskGroup, coordinator: Coordinator | None = None, worker: str = "") -> None:
        """Open both streams (their ledger campaigns take their leases) and start every lane in ``tg``;
        with a shared ``coordinator`` (named ``worker`` there) each stream's lanes charge the shared
        budgets and check opt-outs and caps through it (:class:`~engine.coordination.gate.ApiGate`)."""
        cfg = self.ctx.config
        budgets = split_budgets(cfg, {n: g.carriers for n, g in cfg.gateways.items()})
        policy = RetryPolicy(cfg.retry.max_attempts, cfg.retry.base, cfg.retry.cap)
        prices: dict[str, float] = {c: cc.price_per_part for c, cc in cfg.carriers.items()}
        gws = self.gateways
        by_carrier = {c: [gws.gateways[g] for g in names] for c, names in gws.failover.items()}
        health = RouteHealth(self.ctx.clock)  # the API waits out an outage (no limit): messages stay queued
        for priority in ("transactional", "marketing"):
            stream = self._open_stream(priority, prices)
            self.streams[priority] = stream
            urgent = priority == "transactional"
            if coordinator is not None:
                stream.gate = self._gate(stream, coordinator, worker)
            for name in sorted(set(gws.routes.values())):
                tx, rx = anyio.create_memory_object_stream[LaneItem](256)
                stream.inboxes[name] = tx
                lane = (PriorityLane if urgent else Lane)(
                    gws.gateways[name],
                    gateways=by_carrier,
                    limiters=budgets.transactional if urgent else budgets.marketing,
                    gateway_limiters=budgets.transactional_gateways if urgent else budgets.marketing_gateways,
                    breakers=gws.breakers,
                    clock=self.ctx.clock,
                    recorder=stream.recorder,
                    on_handover=self._handover(stream),
                    policy=policy,
                    in_flight=self.ctx.service.transactional_in_flight if urgent else 1,
                    priority=priority,
                    health=health,
                    gate=stream.gate,
                )
                tg.start_soon(lane.run, rx)

    def max_parts(self) -> int:
        """The most billed parts one API message can take (``text`` messages: 500 characters; a
        template: its ``max_length``): every shared budget must hold one."""
        lengths = [500, *(t.max_length for t in self.templates.templates.values())]
        return max(sms.most_parts(n) for n in lengths)

    def _gate(self, stream: Stream, coordinator: Coordinator, worker: str) -> ApiGate:
        """The stream's gate: the engine's shared budgets (as every ``pigeon send`` / ``pigeon worker``
        on the same engine file computes them), its kind's caps and same-content window, and for
        marketing the shared opt-outs; messages it holds back are recorded in memory here."""
        ctx = self.ctx
        cfg, file = ctx.config, ctx.engine.file
        served = self.gateways.failover
        budgets = shared_budgets(
            cfg, file, self.max_parts(), lambda g: [c for c, names in served.items() if g in names]
        )
        lane_caps = cfg.caps.get(stream.priority)
        windows = (
            [CapWindow(w.limit, w.period, lane_caps.timezone) for w in lane_caps.windows] if lane_caps else []
        )
        same = parse_period(lane_caps.same_content) or 0.0 if lane_caps and lane_caps.same_content else 0.0
        urgent = stream.priority == "transactional"

        def held(ids: list[str], reason: str) -> None:
            ctx.records.suppressed(ids, reason)
            if stream.callbacks is not None:
                stream.callbacks.held_back(ids, reason)
            if urgent:
                self.urgent_pending = max(0, self.urgent_pending - len(ids))

        return ApiGate(
            coordinator,
            stream.campaign,
            optouts=stream.priority == "marketing",
            carrier_budgets=budgets.carriers,
            gateway_budgets=budgets.gateways,
            carrier_reserves=budgets.carrier_reserves,
            gateway_reserves=budgets.gateway_reserves,
            notify=lambda text: log.warning(text, extra={"event": "coordinator.state"}),
            pause=cfg.coordinator.pause,
            metrics=ctx.metrics,
            worker=worker,
            priority=stream.priority,
            caps=windows,
            same_content=same,
            wall=ctx.clock.time,
            slow=SLOW_DOWN if cfg.coordinator.slow_down else None,
            on_held=held,
        )

    def _open_stream(self, priority: Priority, prices: Mapping[str, float]) -> Stream:
        ctx = self.ctx
        assert ctx.ledger is not None
        assert ctx.store is not None
        campaign = f"api-{priority}"
        recorder = RunRecorder(prices)
        recorder.sinks.append(ctx.records)
        recorder.metrics = ctx.metrics
        cl: CampaignLedger | None = None
        sink = CallbackSink(ctx.pending_callbacks, None, ctx.ledger.db)
        recorder.sinks.append(sink)  # before the ledger: its events go in the ledger's transaction
        try:
            cl = ctx.ledger.open_campaign(
                campaign,
                kind=priority,
                fingerprint=file_fingerprint(None, "api", [campaign]),
                force=True,
                campaign_file="",
                engine_file=ctx.engine.file,
                owner="pigeon serve",
                lease_ttl=ctx.config.store.lease_ttl,
            )
            recorder.sinks.append(cl)
            sink.ledger = cl
            if cl.lease is not None:
                cl.lease.start()
        except CampaignBusy:
            raise  # another service runs on this store: two would hand out the same rows
        except LedgerError as exc:
            log.warning("ledger unavailable for %s: %s", campaign, exc)
        lane_caps = ctx.config.caps.get(priority)
        caps = None
        if lane_caps and lane_caps.windows:
            windows = [CapWindow(w.limit, w.period, lane_caps.timezone) for w in lane_caps.windows]
            now = ctx.clock.time()
            keys, times = ctx.store.load_sends(priority, min(w.start(now) for w in windows))
            caps = CapState(windows, keys, times)
        stream = Stream(priority, campaign, cl, recorder, RowCounter(ctx.ledger.db, campaign), caps)
        stream.callbacks = sink
        return stream

    def _handover(self, stream: Stream) -> Callable[[MessageBatch, bool, str], None]:
        ctx = self.ctx
        records, clock = ctx.records, ctx.clock

        def handover(batch: MessageBatch, first: bool, gateway: str) -> None:
            now = clock.time()
            keys = batch.keys() if first else None  # a retry's hand-over counts nothing again
            if stream.ledger is not None:
                stream.ledger.handover(batch, now=now, keys=keys, gateway=gateway)
            elif ctx.store is not None and keys is not None:
                ctx.store.record_sends(stream.priority, keys, now, None)
            if stream.caps is not None and keys is not None:
                stream.caps.record(now, keys)
            # After the commit, just before the request is written: "submitted at" includes it.
            records.handover(batch, clock.time())
            if first and stream.priority == "transactional":
                self.urgent_pending = max(0, self.urgent_pending - len(batch))

        return handover

    def runner(self, stream: Stream, tid: str, *, consent: bool = False) -> tuple[Template, StageRunner]:
        """The compiled template ``tid`` and the stages an API message of ``stream`` goes through
        (``consent``: with ``require_consent``, for marketing when the service or the key asks)."""
        found = stream.runners.get(f"{tid}\0consent" if consent else tid)
        if found is not None:
            return found
        ctx = self.ctx
        marketing = stream.priority == "marketing"
        opt_out = DEFAULT_OPT_OUT if marketing else ""
        if tid == TEXT_TEMPLATE:
            template = compile_template(
                "{text}", signature=ctx.service.signature, opt_out_text=opt_out, max_length=500
            )
        else:
            t = self.templates.templates[tid]
            filed = self.templates.filed.get(tid)
            template = compile_template(
                self.templates.body(tid),
                signature=t.signature or ctx.service.signature,
                opt_out_text=opt_out if filed is None else "",  # a filed template goes as filed
                max_length=t.max_length,
            )
            template.provider = filed
        bound = template.bind(["phone", *template.fields])
        routes = self.gateways.routes
        forbid = any(not ctx.config.gateways[g].urls_in_fields for g in set(routes.values()))
        stages: list[Stage] = [Normalize()]
        if marketing:
            stages.append(SuppressOptouts(ctx.optouts))
        if consent:
            assert ctx.store is not None
            stages.append(RequireConsent(ctx.store.consented))  # (a query: consents imported meanwhile count)
        if stream.caps is not None:
            stages.append(Cap(stream.caps, ctx.clock, repeats=True))  # (no dedupe on an API stream)
        stages += [Route(self.table, set(routes)), Render(bound, forbid_urls=forbid), CountParts(template)]
        if marketing:
            stages.append(
                HoldQuietHours(SendWindow.parse(DEFAULT_MARKETING_WINDOW, "Asia/Shanghai"), ctx.clock)
            )
        runner = StageRunner(stages)
        runner.metrics = ctx.metrics
        found = (template, runner)
        stream.runners[f"{tid}\0consent" if consent else tid] = found
        return found

    async def send(self, stream: Stream, batches: Mapping[str, list[MessageBatch]]) -> None:
        """Queue ``batches`` (carrier → batches) into the lanes of their carriers' primary gateways."""
        routes = self.gateways.routes
        for carrier, mbs in batches.items():
            await stream.inboxes[routes[carrier]].send(MessageBatch.concat(mbs))

    def close_inboxes(self) -> None:
        """No more messages: each lane drains what it holds and ends."""
        for stream in self.streams.values():
            for tx in stream.inboxes.values():
                tx.close()

    def close(self) -> None:
        """Flush what the streams' ledgers hold and give their leases back."""
        for stream in self.streams.values():
            if stream.ledger is not None:
                with contextlib.suppress(Exception):
                    stream.ledger.flush()
                if stream.ledger.lease is not None:
                    stream.ledger.lease.release()
