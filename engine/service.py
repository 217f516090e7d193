"""The service's lifetime and wiring: gateways, the API's lanes, records, webhooks and campaigns.

One :class:`Service` lives as long as ``pigeon serve``. It opens every configured gateway once for
the API's lanes; the blasts it starts run in worker processes (:mod:`engine.campaigns`,
:mod:`engine.blast_worker`) with the marketing part of every carrier's rate
(:mod:`engine.priority`), and ``/metrics`` adds their series to the service's
(:mod:`engine.worker_metrics`). Messages posted to the API go through the same stages as a blast
(normalize, caps, opt-outs for marketing, route, render, count_parts, quiet hours for marketing)
and into a lane per gateway and priority: the transactional (priority) lane has its own in-flight
window and the reserved part of each carrier's rate, so a running blast never holds it back by
more than a request already on the wire. Every API message is recorded in the ledger (campaign
``api-transactional`` or ``api-marketing``) and, for fast look-ups, in memory.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import hashlib
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import anyio
import msgspec
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from engine.api_templates import compile_filed, field_problem, gateway_problem, opt_out_problem
from engine.apikeys import KeyRing
from engine.caps import CapState, CapWindow
from engine.carriers import PrefixTable, default_prefix_table
from engine.clock import Clock, SystemClock
from engine.config import DEFAULT_MARKETING_WINDOW, LoadedEngine, convert_section
from engine.early_reports import RETRY_EVERY, EarlyReports
from engine.errors import ConfigError, EngineError, TemplateError
from engine.gateway import Gateway, GatewayContext, Receiving
from engine.ledger import CampaignBusy, CampaignLedger, Ledger, LedgerError, file_fingerprint, transaction
from engine.messages import DeliveryReport, MessageBatch, Reject, State, SubmitResult
from engine.metrics import CONTENT_TYPE, Metrics
from engine.optout import DEFAULT_KEYWORDS, OptOutSet
from engine.phone import mask
from engine.pipeline import Batch, Stage, StageRunner
from engine.plugins import PluginHost
from engine.priority import PriorityLane, split_budgets
from engine.provider_template import ProviderTemplate
from engine.report import RunRecorder
from engine.retry import Breaker, RetryPolicy
from engine.sender import Lane, LaneItem, RouteHealth
from engine.sendwindow import SendWindow
from engine.service_config import ServiceTemplate
from engine.stages import Cap, CountParts, HoldQuietHours, Normalize, Render, Route, SuppressOptouts
from engine.store.sqlite import SqliteStore
from engine.template import DEFAULT_OPT_OUT, Template, compile_template
from engine.webhooks import GenericParser, MoReply, WebhookParser, opt_outs_in
from engine.worker_metrics import MergedMetrics

__all__ = [
    "ApiError",
    "FieldError",
    "MessageIn",
    "MessageView",
    "MessagesIn",
    "Priority",
    "Service",
    "SubmitResponse",
    "open_service",
]

log = logging.getLogger("pigeon.service")

Priority = Literal["transactional", "marketing"]
TEXT_TEMPLATE = "__text__"
"""The internal template of ``text`` messages (the text is its one field)."""
CHECKPOINT_EVERY = 1.0
"""Seconds between two checkpoints of the store's WAL (see ``Service._checkpoints``)."""
RECENT_RECORDS = 200_000
"""API messages kept in memory for fast look-ups (older ones come from the ledger)."""

_Phone = msgspec.Meta(min_length=1, max_length=32)
_Name = msgspec.Meta(min_length=1, max_length=64)


class MessageIn(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One message to send: ``to`` and either ``template`` + ``fields`` or ``text``.

    A template filed with Aliyun or Tencent (``[service.templates.<id>.provider]``) is sent as
    filed, its ``fields`` filling the provider's parameters; each value is checked as a campaign's
    rows are — within the provider's length limit, no link — and the message must route to a
    gateway of that provider (free text, to none that sends only filed templates): otherwise 422,
    naming the message and field, and nothing of the request is sent."""

    to: Any  # checked by hand for a clearer message than a type error
    template: str | None = None
    fields: dict[str, str] = {}
    text: str | None = None


class MessagesIn(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The body of ``POST /v1/messages``."""

    messages: list[MessageIn]
    priority: Priority = "transactional"


class MessageState(msgspec.Struct, kw_only=True):
    """One accepted message in a 202 answer."""

    index: int
    id: str
    state: str
    """``queued`` (in a lane), ``suppressed`` (opted out, capped) or ``deferred`` (quiet hours)."""
    reason: str = ""
    parts: int = 0


class SubmitResponse(msgspec.Struct, kw_only=True):
    """The 202 answer of ``POST /v1/messages``."""

    priority: str
    messages: list[MessageState]
    accepted: int
    """Messages queued for sending."""


class FieldError(msgspec.Struct, kw_only=True):
    """What is wrong with one message of a request."""

    index: int
    """Position of the message in ``messages`` (0-based)."""
    field: str
    detail: str


class ApiError(Exception):
    """An error the API answers as problem details (RFC 9457)."""

    def __init__(
        self, status: int, title: str, detail: str, *, errors: Sequence[FieldError] = (), kind: str = ""
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = list(errors)
        self.kind = kind or title.lower().replace(" ", "-")


class Delivery(msgspec.Struct, kw_only=True, gc=False):
    """The delivery report of a message."""

    status: str
    code: str = ""
    done_at: float = 0.0


class MessageView(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """``GET /v1/messages/{id}``: what is recorded about a message."""

    id: str
    state: str
    """``queued``, ``submitting``, ``submitted``/``sent``, ``failed``, ``unknown``, ``suppressed``,
    ``rejected``, ``deferred``; a delivery report moves it to ``delivered`` or keeps ``failed``."""
    campaign: str = ""
    to: str = ""
    """Masked (``138****8000``)."""
    priority: str = ""
    carrier: str = ""
    parts: int = 0
    reason: str = ""
    gateway: str = ""
    provider_id: str = ""
    accepted_at: float = 0.0
    submitted_at: float = 0.0
    answered_at: float = 0.0
    delivery: Delivery | None = None


@dataclass
class _Rec:
    view: MessageView


class ApiRecords:
    """Recent API messages in memory, told every outcome per batch (a ``RunRecorder`` sink)."""

    def __init__(self, limit: int = RECENT_RECORDS) -> None:
        self.limit = limit
        self.by_id: dict[str, MessageView] = {}
        self.by_provider: dict[str, str] = {}

    def add(self, views: Sequence[MessageView]) -> None:
        """Remember new messages (the oldest are forgotten past ``limit``)."""
        by_id = self.by_id
        for v in views:
            by_id[v.id] = v
        over = len(by_id) - self.limit
        if over > 0:
            for k in list(itertools_islice(by_id, over)):
                v = by_id.pop(k)
                self.by_provider.pop(v.provider_id, None)

    def _set(self, ids: Sequence[str], **values: Any) -> None:
        for mid in ids:
            v = self.by_id.get(mid)
            if v is not None:
                for k, val in values.items():
                    setattr(v, k, val)

    def handover(self, batch: MessageBatch, now: float) -> None:
        """A request is going to a gateway."""
        self._set(batch.ids, state="submitting", submitted_at=now)

    def dropped(self, records: Sequence[Reject]) -> None:
        """Nothing to do: suppressed and deferred API messages are recorded when accepted."""

    def results(self, gateway: str, batch: MessageBatch, results: Sequence[SubmitResult]) -> None:
        """A request's answers."""
        now = time.time()
        for mid, r in zip(batch.ids, results, strict=True):
            v = self.by_id.get(mid)
            if v is None:
                continue
            v.gateway, v.answered_at = gateway, now
            if r.outcome.value == "accepted":
                v.state = "submitted"
                if r.provider_id:
                    v.provider_id = r.provider_id
                    self.by_provider[r.provider_id] = mid
            elif r.outcome.value == "unknown":
                v.state, v.reason = "unknown", r.code or "unknown"
            else:
                v.state, v.reason = "failed", f"{r.outcome.value}:{r.code or r.outcome.value}"

    def failed(self, gateway: str, batch: MessageBatch, reason: str) -> None:
        """A whole request failed."""
        self._set(batch.ids, state="failed", reason=reason, gateway=gateway, answered_at=time.time())

    def unknown(self, gateway: str, batch: MessageBatch, reason: str) -> None:
        """A request the gateway may or may not have taken."""
        self._set(batch.ids, state="unknown", reason=reason, gateway=gateway, answered_at=time.time())

    def released(self, gateway: str, batch: MessageBatch, reason: str) -> None:
        """A request that did not go through (the gateway could not be reached, or said "again"):
        queued again until its next hand-over."""
        self._set(batch.ids, state="queued", reason=reason)

    def reports(
        self, reports: Sequence[DeliveryReport], unmatched: list[DeliveryReport] | None = None
    ) -> int:
        """Apply delivery reports to the messages in memory; how many matched (the others are
        appended to ``unmatched`` when it is given)."""
        n = 0
        for r in reports:
            mid = self.by_provider.get(r.provider_id, "") if r.provider_id else ""
            v = self.by_id.get(mid or r.message_id)
            if v is None:
                if unmatched is not None:
                    unmatched.append(r)
                continue
            n += 1
            v.delivery = Delivery(status=r.status.value, code=r.code, done_at=r.done_at)
            v.state = "delivered" if r.status.value == "delivered" else "failed"
            if v.state == "failed":
                v.reason = f"dlr:{r.code or r.status.value}"
        return n


def itertools_islice(d: Mapping[str, Any], n: int) -> list[str]:
    """The first ``n`` keys of ``d`` (insertion order)."""
    out: list[str] = []
    for k in d:
        if len(out) >= n:
            break
        out.append(k)
    return out


class _RowCounter:
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
class _Stream:
    """Everything one priority of API messages goes through."""

    priority: Priority
    campaign: str
    ledger: CampaignLedger | None
    recorder: RunRecorder
    rows: _RowCounter
    caps: CapState | None
    inboxes: dict[str, MemoryObjectSendStream[LaneItem]] = field(default_factory=dict)
    """Gateway → the lane's inbox."""
    runners: dict[str, tuple[Template, StageRunner]] = field(default_factory=dict)


@dataclass
class _Idem:
    fingerprint: str
    response: SubmitResponse
    at: float


_IDEMPOTENCY_SCHEMA = """CREATE TABLE IF NOT EXISTS api_idempotency (
    api_key     TEXT NOT NULL,       -- the API key's name
    idem_key    TEXT NOT NULL,
    fingerprint TEXT NOT NULL,       -- SHA-256 of the request body
    response    BLOB NOT NULL,       -- the 202 answer, JSON
    at          REAL NOT NULL,
    PRIMARY KEY (api_key, idem_key)
)"""
_response_enc = msgspec.json.Encoder()
_response_dec = msgspec.json.Decoder(SubmitResponse)


class Service:
    """The long-running engine behind the API. Create it with :func:`open_service`."""

    def __init__(self, engine: LoadedEngine, host: PluginHost | None = None, clock: Clock | None = None):
        self.engine = engine
        self.config = engine.config
        self.service = engine.config.service
        self.host = host or PluginHost(disabled=self.config.plugins.disabled)
        self.clock = clock or SystemClock()
        self.table: PrefixTable = default_prefix_table()
        self.keys = KeyRing(self._path(self.service.keys_file))
        self.filed: dict[str, ProviderTemplate] = {}
        """Template id → its filed provider template (``[service.templates.<id>.provider]``)."""
        self.templates = self._load_templates()
        self.draining = False
        self.started_at = time.time()
        self.records = ApiRecords()
        self.early = EarlyReports()
        """Reports that matched no message yet (come before their submit answer), tried again."""
        self._idem: dict[tuple[str, str], _Idem] = {}
        self._fields_of: dict[str, Template] = {}
        """Template id → its compiled template (for the field checks)."""
        self.routes: dict[str, str] = {}
        self.failover: dict[str, list[str]] = {}
        for name, g in self.config.gateways.items():
            for carrier in g.carriers:
                self.routes.setdefault(carrier, name)
                self.failover.setdefault(carrier, []).append(name)
        self.gateways: dict[str, Gateway] = {}
        self.breakers: dict[str, Breaker] = {}
        self.streams: dict[str, _Stream] = {}
        self.store: SqliteStore | None = None
        self.ledger: Ledger | None = None
        self.reports_ledger: Ledger | None = None
        self._reports_limiter: anyio.CapacityLimiter | None = None
        self.optouts = OptOutSet()
        self.parsers: dict[str, WebhookParser] = {}
        self.keywords = self.service.optout_keywords or sorted(DEFAULT_KEYWORDS)
        self.campaigns: Any = None  # engine.campaigns.Campaigns, set on start
        self.metrics = Metrics()
        """The process's metrics: the API's lanes count here (campaigns in their workers)."""
        self.merged_metrics = MergedMetrics(self.metrics.registry)
        """What ``/metrics`` serves: the process's series plus its blast workers'."""
        self.urgent_pending = 0
        """Transactional messages accepted and not yet handed to a gateway (blasts yield to them)."""
        self._closing = anyio.Event()
        self._inbound_scope: anyio.CancelScope | None = None
        self.counters: Counter[str] = Counter()
        """What happened since start: messages accepted, reports, replies, opt-outs… (for logs)."""

    # -- set-up --------------------------------------------------------------------------

    def _path(self, p: str) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() else self.engine.base_dir / path

    def _load_templates(self) -> dict[str, ServiceTemplate]:
        out = dict(self.service.templates)
        if self.service.templates_file:
            from engine.config import _read_toml

            path = self._path(self.service.templates_file)
            raw = _read_toml(path)
            for tid, section in raw.items():
                out[tid] = convert_section(section, ServiceTemplate, file=str(path), path=tid)
        for tid, t in out.items():
            sig = t.signature or self.service.signature
            if not sig.strip().strip("【】"):
                raise ConfigError(
                    self.engine.file,
                    f"service.templates.{tid}.signature",
                    "no signature: set it here or service.signature (carriers require one)",
                )
            filed = compile_filed(self.engine.file, tid, t)
            if filed is not None:
                self.filed[tid] = filed
            try:
                compile_template(self._body(tid, t), signature=sig, max_length=t.max_length).check_length()
            except TemplateError as exc:
                raise ConfigError(self.engine.file, f"service.templates.{tid}.text", str(exc)) from None
        return out

    def _body(self, tid: str, t: ServiceTemplate) -> str:
        """A template's text in Pigeon's syntax (a filed template's, derived from its filed text)."""
        filed = self.filed.get(tid)
        return filed.body if filed is not None else t.text

    async def _start(self, tg: TaskGroup, run_dir: Path) -> None:
        cfg = self.config
        self.store = SqliteStore(self.engine.store_path)
        self.optouts = await anyio.to_thread.run_sync(self.store.load_optouts)
        # Its writes run on the event loop: it waits for a blast worker's write lock in steps of
        # 0.1–2 ms, not SQLite's 1, 2, 5, 10 … ms sleeps.
        self.ledger = Ledger(self.engine.store_path, spin_on_busy=True)
        with transaction(self.ledger.db):  # idempotency keys: written with their messages' hand-over
            self.ledger.db.execute(_IDEMPOTENCY_SCHEMA)
            self.ledger.db.execute(
                "DELETE FROM api_idempotency WHERE at < ?", (time.time() - self.service.idempotency_ttl,)
            )
        self.reports_ledger = Ledger(self.engine.store_path)
        """Delivery reports' connection, used by one thread at a time (:meth:`apply_reports`)."""
        self._reports_limiter = anyio.CapacityLimiter(1)
        # The loop's commits never fold the WAL into the file (a checkpoint takes milliseconds while
        # a blast worker writes the same file): a thread does it every second instead.
        self.ledger.db.execute("PRAGMA wal_autocheckpoint=0")
        tg.start_soon(self._checkpoints)
        tg.start_soon(self._early_reports)
        for name in sorted(self.config.gateways):
            gcfg = cfg.gateways[name]
            if gcfg.plugin not in self.host.gateways:
                raise ConfigError(
                    self.engine.file,
                    f"gateways.{name}.plugin",
                    f"unknown gateway plugin {gcfg.plugin!r}; installed: "
                    + ", ".join(self.host.gateways.names()),
                )
            reg = self.host.gateways.get(gcfg.plugin)
            opts = convert_section(
                gcfg.options, reg.config_type, file=self.engine.file, path=f"gateways.{name}.options"
            )
            self.gateways[name] = reg.factory(
                opts, GatewayContext(name=name, base_dir=self.engine.base_dir, run_dir=run_dir)
            )
            self.breakers[name] = Breaker(gcfg.breaker_threshold, gcfg.breaker_cooldown)
        budgets = split_budgets(cfg, {n: g.carriers for n, g in cfg.gateways.items()})
        self._register_parsers()
        for gw in self.gateways.values():  # a gateway's own series (the binds of smpp/cmpp)
            collector = getattr(gw, "metrics_collector", None)
            if callable(collector):
                self.metrics.registry.register(collector())
        receiving = {n: gw for n, gw in self.gateways.items() if isinstance(gw, Receiving)}
        if receiving:
            tg.start_soon(self._serve_inbound, receiving)
        policy = RetryPolicy(cfg.retry.max_attempts, cfg.retry.base, cfg.retry.cap)
        prices: dict[str, float] = {c: cc.price_per_part for c, cc in cfg.carriers.items()}
        by_carrier = {c: [self.gateways[g] for g in names] for c, names in self.failover.items()}
        health = RouteHealth(self.clock)  # the API waits out an outage (no limit): messages stay queued
        for priority in ("transactional", "marketing"):
            stream = self._open_stream(priority, prices)
            self.streams[priority] = stream
            urgent = priority == "transactional"
            for name in sorted(set(self.routes.values())):
                tx, rx = anyio.create_memory_object_stream[LaneItem](256)
                stream.inboxes[name] = tx
                lane = (PriorityLane if urgent else Lane)(
                    self.gateways[name],
                    gateways=by_carrier,
                    limiters=budgets.transactional if urgent else budgets.marketing,
                    gateway_limiters=budgets.transactional_gateways if urgent else budgets.marketing_gateways,
                    breakers=self.breakers,
                    clock=self.clock,
                    recorder=stream.recorder,
                    on_handover=self._handover(stream),
                    policy=policy,
                    in_flight=self.service.transactional_in_flight if urgent else 1,
                    priority=priority,
                    health=health,
                )
                tg.start_soon(lane.run, rx)
        self.metrics.prepare(
            routes=self.failover,
            in_flight={g: gw.in_flight for g, gw in cfg.gateways.items()},
            stages=[s.name for s in self._runner(self.streams["marketing"], TEXT_TEMPLATE)[1].stages],
        )
        from engine.campaigns import Campaigns

        self.campaigns = Campaigns(self, tg, run_dir)
        # What was set up lives as long as the service: out of the collector's way (a full
        # collection over it took ~45 ms of the loop under load; MessageViews are not tracked).
        gc.collect()
        gc.freeze()

    def _register_parsers(self) -> None:
        registry = self.host.webhook_parsers
        for name in self.gateways:
            wcfg = self.service.webhooks.get(name)
            secret: bytes | None = None
            if wcfg is not None and wcfg.secret_env:
                import os

                value = os.environ.get(wcfg.secret_env)
                if not value:
                    raise ConfigError(
                        self.engine.file,
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
                    self.engine.file,
                    f"service.webhooks.{name}.parser",
                    f"unknown webhook parser {kind!r}; registered: {', '.join(known)}",
                )

    def _open_stream(self, priority: Priority, prices: Mapping[str, float]) -> _Stream:
        assert self.ledger is not None
        assert self.store is not None
        campaign = f"api-{priority}"
        recorder = RunRecorder(prices)
        recorder.sinks.append(self.records)
        recorder.metrics = self.metrics
        cl: CampaignLedger | None = None
        try:
            cl = self.ledger.open_campaign(
                campaign,
                kind=priority,
                fingerprint=file_fingerprint(None, "api", [campaign]),
                force=True,
                campaign_file="",
                engine_file=self.engine.file,
                owner="pigeon serve",
                lease_ttl=self.config.store.lease_ttl,
            )
            recorder.sinks.append(cl)
            if cl.lease is not None:
                cl.lease.start()
        except CampaignBusy:
            raise  # another service runs on this store: two would hand out the same rows
        except LedgerError as exc:
            log.warning("ledger unavailable for %s: %s", campaign, exc)
        lane_caps = self.config.caps.get(priority)
        caps = None
        if lane_caps and lane_caps.windows:
            windows = [CapWindow(w.limit, w.period, lane_caps.timezone) for w in lane_caps.windows]
            now = self.clock.time()
            keys, times = self.store.load_sends(priority, min(w.start(now) for w in windows))
            caps = CapState(windows, keys, times)
        return _Stream(priority, campaign, cl, recorder, _RowCounter(self.ledger.db, campaign), caps)

    def _handover(self, stream: _Stream) -> Any:
        records, clock = self.records, self.clock

        def handover(batch: MessageBatch, first: bool, gateway: str) -> None:
            now = clock.time()
            keys = batch.keys() if first else None  # a retry's hand-over counts nothing again
            if stream.ledger is not None:
                stream.ledger.handover(batch, now=now, keys=keys, gateway=gateway)
            elif self.store is not None and keys is not None:
                self.store.record_sends(stream.priority, keys, now, None)
            if stream.caps is not None and keys is not None:
                stream.caps.record(now, keys)
            # After the commit, just before the request is written: "submitted at" includes it.
            records.handover(batch, clock.time())
            if first and stream.priority == "transactional":
                self.urgent_pending = max(0, self.urgent_pending - len(batch))

        return handover

    async def _checkpoints(self) -> None:
        """``PRAGMA wal_checkpoint(PASSIVE)`` every :data:`CHECKPOINT_EVERY` seconds, in a thread,
        until the service stops (passive: it never waits for, nor blocks, a writer)."""
        db = sqlite3.connect(self.engine.store_path, check_same_thread=False, isolation_level=None, timeout=5)
        try:
            while not self._closing.is_set():
                with anyio.move_on_after(CHECKPOINT_EVERY):
                    await self._closing.wait()
                with contextlib.suppress(sqlite3.Error):
                    await anyio.to_thread.run_sync(db.execute, "PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()

    async def _serve_inbound(self, gateways: Mapping[str, Receiving]) -> None:
        """Feed what SMPP/CMPP connections bring in (receipts, MO) to the webhook path until stopped."""
        sink = _ServiceSink(self)
        async with anyio.create_task_group() as tg:
            self._inbound_scope = tg.cancel_scope
            for gw in gateways.values():
                gw.attach(sink)
                tg.start_soon(gw.serve)

    async def _stop(self) -> None:
        if self._inbound_scope is not None:
            self._inbound_scope.cancel()
        self._closing.set()
        self.draining = True
        if self.campaigns is not None:
            self.campaigns.cancel_all()
        for stream in self.streams.values():
            for tx in stream.inboxes.values():
                tx.close()

    async def _close(self) -> None:
        gc.unfreeze()  # (frozen by _start: a service run inside another program gives it back)
        for gw in self.gateways.values():
            with anyio.move_on_after(10, shield=True), contextlib.suppress(Exception):
                await gw.aclose()
        for stream in self.streams.values():
            if stream.ledger is not None:
                with contextlib.suppress(Exception):
                    stream.ledger.flush()
                if stream.ledger.lease is not None:
                    stream.ledger.lease.release()
        if self.ledger is not None:
            self.ledger.close()
        if self.reports_ledger is not None:
            self.reports_ledger.close()
        if self.store is not None:
            self.store.close()

    # -- messages ------------------------------------------------------------------------

    def _runner(self, stream: _Stream, tid: str) -> tuple[Template, StageRunner]:
        found = stream.runners.get(tid)
        if found is not None:
            return found
        marketing = stream.priority == "marketing"
        opt_out = DEFAULT_OPT_OUT if marketing else ""
        if tid == TEXT_TEMPLATE:
            template = compile_template(
                "{text}", signature=self.service.signature, opt_out_text=opt_out, max_length=500
            )
        else:
            t = self.templates[tid]
            filed = self.filed.get(tid)
            template = compile_template(
                self._body(tid, t),
                signature=t.signature or self.service.signature,
                opt_out_text=opt_out if filed is None else "",  # a filed template goes as filed
                max_length=t.max_length,
            )
            template.provider = filed
        bound = template.bind(["phone", *template.fields])
        forbid = any(not self.config.gateways[g].urls_in_fields for g in set(self.routes.values()))
        stages: list[Stage] = [Normalize()]
        if marketing:
            stages.append(SuppressOptouts(self.optouts))
        if stream.caps is not None:
            stages.append(Cap(stream.caps, self.clock))
        stages += [
            Route(self.table, set(self.routes)),
            Render(bound, forbid_urls=forbid),
            CountParts(template),
        ]
        if marketing:
            stages.append(
                HoldQuietHours(SendWindow.parse(DEFAULT_MARKETING_WINDOW, "Asia/Shanghai"), self.clock)
            )
        runner = StageRunner(stages)
        runner.metrics = self.metrics
        found = (template, runner)
        stream.runners[tid] = found
        return found

    def _validate(self, req: MessagesIn) -> list[tuple[str, list[str]]]:
        """Per message: (template id, row values in the template's field order); raises 422."""
        if not req.messages:
            raise ApiError(422, "Invalid request", "messages is empty: send at least one message")
        if len(req.messages) > self.service.max_messages:
            raise ApiError(
                413,
                "Too many messages",
                f"{len(req.messages)} messages in one request; at most {self.service.max_messages} "
                "(service.max_messages): split the request",
            )
        errors: list[FieldError] = []
        out: list[tuple[str, list[str]]] = []
        for i, m in enumerate(req.messages):
            if not isinstance(m.to, str) or not 1 <= len(m.to) <= 32:
                errors.append(FieldError(index=i, field="to", detail="expected a phone number as a string"))
                continue
            if (m.template is None) == (m.text is None):
                errors.append(
                    FieldError(index=i, field="template", detail="give either template (with fields) or text")
                )
                continue
            if m.text is not None:
                if m.fields:
                    errors.append(FieldError(index=i, field="fields", detail="fields go with a template"))
                elif not m.text.strip():
                    errors.append(FieldError(index=i, field="text", detail="the text is empty"))
                elif len(m.text) > 1000:
                    errors.append(FieldError(index=i, field="text", detail="longer than 1000 characters"))
                else:
                    out.append((TEXT_TEMPLATE, [m.to, m.text]))
                continue
            tid = m.template or ""
            t = self.templates.get(tid)
            if t is None:
                close = difflib.get_close_matches(tid, list(self.templates), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                known = ", ".join(sorted(self.templates)) or "(none configured)"
                errors.append(
                    FieldError(
                        index=i,
                        field="template",
                        detail=f"unknown template {tid[:64]!r}{hint} Known: {known}",
                    )
                )
                continue
            template = self._fields_of.get(tid)
            if template is None:
                template = self._fields_of[tid] = compile_template(
                    self._body(tid, t), signature="x", max_length=t.max_length
                )
            filed = self.filed.get(tid)
            if filed is not None:
                problem = field_problem(filed, m.fields)
                if problem is None and req.priority == "marketing":
                    why = opt_out_problem(filed)
                    problem = ("template", why) if why else None
                if problem is not None:
                    errors.append(FieldError(index=i, field=problem[0], detail=problem[1]))
                    continue
            unknown = [f for f in m.fields if f not in template.fields]
            missing = [f for f in template.required if not m.fields.get(f, "").strip()]
            if unknown:
                errors.append(
                    FieldError(
                        index=i,
                        field=f"fields.{unknown[0][:64]}",
                        detail=f"template {tid!r} has no field {unknown[0][:64]!r}; its fields: "
                        + (", ".join(template.fields) or "(none)"),
                    )
                )
            elif missing:
                errors.append(
                    FieldError(
                        index=i, field=f"fields.{missing[0]}", detail=f"template {tid!r} needs this field"
                    )
                )
            elif any(len(v) > 500 for v in m.fields.values()):
                errors.append(
                    FieldError(index=i, field="fields", detail="a field value is over 500 characters")
                )
            else:
                out.append((tid, [m.to, *(m.fields.get(f, "") for f in template.fields)]))
        if errors:
            raise ApiError(
                422,
                "Invalid messages",
                f"{len(errors)} of {len(req.messages)} message(s) cannot be sent; nothing was sent: "
                + errors[0].detail,
                errors=errors,
            )
        return out

    def _misrouted(
        self,
        out_batches: dict[str, list[MessageBatch]],
        values: Sequence[tuple[str, list[str]]],
        index_of: dict[int, int],
    ) -> list[FieldError]:
        """Messages whose gateway cannot send their template: a filed template to another
        provider's gateway, or free text to a gateway that sends only filed templates."""
        errors: list[FieldError] = []
        for carrier, mbs in out_batches.items():
            gateway = self.routes[carrier]
            sends = str(getattr(self.gateways.get(gateway), "template_provider", "") or "")
            for mb in mbs:
                for row in mb.rows:
                    i = index_of[row]
                    why = gateway_problem(self.filed.get(values[i][0]), gateway, sends)
                    if why is not None:
                        errors.append(FieldError(index=i, field="template", detail=why))
        return sorted(errors, key=lambda e: e.index)

    async def submit(
        self, req: MessagesIn, *, key: str, idempotency_key: str | None, body: bytes
    ) -> SubmitResponse:
        """Check, run the stages, record and queue one request's messages; raises :class:`ApiError`."""
        if self.draining:
            raise ApiError(503, "Shutting down", "the service is draining; send again to another instance")
        fp = hashlib.sha256(body).hexdigest()
        if idempotency_key is not None:
            seen = self._idem.get((key, idempotency_key)) or self._stored_idem(key, idempotency_key)
            if seen is not None and self.clock.time() - seen.at < self.service.idempotency_ttl:
                if seen.fingerprint != fp:
                    raise ApiError(
                        422,
                        "Idempotency key reused",
                        "this Idempotency-Key came with a different body; use a new key for a new request",
                    )
                return seen.response
        values = self._validate(req)
        stream = self.streams[req.priority]
        rows = stream.rows.take(len(values))
        index_of = {row: i for i, row in enumerate(rows)}
        groups: dict[str, list[int]] = {}
        for i, (tid, _) in enumerate(values):
            groups.setdefault(tid, []).append(i)
        out_batches: dict[str, list[MessageBatch]] = {}
        dropped: list[Reject] = []
        prefix = f"{stream.campaign}-"
        for tid, idx in groups.items():
            _, runner = self._runner(stream, tid)
            batch = runner.run(Batch([rows[i] for i in idx], [values[i][1] for i in idx], 0))
            dropped += batch.rejects
            for carrier, mb in (batch.messages(prefix) if batch.nums else {}).items():
                out_batches.setdefault(carrier, []).append(mb)
        misrouted = self._misrouted(out_batches, values, index_of)
        if misrouted:
            raise ApiError(
                422,
                "Invalid messages",
                f"{len(misrouted)} of {len(values)} message(s) cannot be sent; nothing was sent: "
                + misrouted[0].detail,
                errors=misrouted,
            )
        refused = [r for r in dropped if r.state == State.REJECTED]
        if refused:
            errors = [
                FieldError(
                    index=index_of[r.row],
                    field="to"
                    if "number" in r.reason
                    or "prefix" in r.reason
                    or r.reason
                    in ("iot_number", "not_mobile", "special_number", "satellite_number", "missing_phone")
                    else r.reason,
                    detail=f"{r.reason}: {r.detail}",
                )
                for r in sorted(refused, key=lambda r: r.row)
            ]
            raise ApiError(
                422,
                "Invalid messages",
                f"{len(errors)} of {len(values)} message(s) cannot be sent; nothing was sent: "
                + errors[0].detail,
                errors=errors,
            )
        now = self.clock.time()
        states: dict[int, MessageState] = {}
        views: list[MessageView] = []
        for carrier, mbs in out_batches.items():
            for mb in mbs:
                for mid, row, to, parts in zip(mb.ids, mb.rows, mb.tos, mb.parts, strict=True):
                    states[row] = MessageState(index=index_of[row], id=mid, state="queued", parts=parts)
                    views.append(
                        MessageView(
                            id=mid,
                            state="queued",
                            campaign=stream.campaign,
                            to=mask(to),
                            priority=req.priority,
                            carrier=carrier,
                            parts=parts,
                            accepted_at=now,
                        )
                    )
        for r in dropped:
            mid = f"{prefix}{r.row}"
            states[r.row] = MessageState(index=index_of[r.row], id=mid, state=r.state, reason=r.reason)
            views.append(
                MessageView(
                    id=mid,
                    state=r.state,
                    campaign=stream.campaign,
                    to=mask(r.phone),
                    priority=req.priority,
                    reason=r.reason,
                    accepted_at=now,
                )
            )
        self.records.add(views)
        if dropped:
            stream.recorder.dropped(dropped)
        response = SubmitResponse(
            priority=req.priority,
            messages=[states[row] for row in rows],
            accepted=sum(1 for s in states.values() if s.state == "queued"),
        )
        if idempotency_key is not None:
            self._idem[(key, idempotency_key)] = _Idem(fp, response, now)
            if len(self._idem) > 100_000:
                self._expire_idem(now)
            if stream.ledger is not None:  # durable with the hand-over of its messages
                stream.ledger.defer(
                    "INSERT OR REPLACE INTO api_idempotency VALUES (?, ?, ?, ?, ?)",
                    (key, idempotency_key, fp, _response_enc.encode(response), now),
                )
        self.counters["messages_accepted"] += response.accepted
        log.info(
            "messages accepted",
            extra={
                "event": "messages.accepted",
                "priority": req.priority,
                "messages": [
                    {"id": v.id, "to": v.to, "state": v.state, **({"reason": v.reason} if v.reason else {})}
                    for v in views[:20]
                ],
                "count": len(views),
            },
        )
        stream.recorder.queued(len(views) - len(dropped))
        if req.priority == "transactional":
            self.urgent_pending += response.accepted
        for carrier, mbs in out_batches.items():
            await stream.inboxes[self.routes[carrier]].send(MessageBatch.concat(mbs))
        return response

    def _stored_idem(self, key: str, idempotency_key: str) -> _Idem | None:
        """An idempotency key recorded before this process started (it survives a restart)."""
        if self.ledger is None:
            return None
        row = self.ledger.db.execute(
            "SELECT fingerprint, response, at FROM api_idempotency WHERE api_key = ? AND idem_key = ?",
            (key, idempotency_key),
        ).fetchone()
        if row is None:
            return None
        found = _Idem(row[0], _response_dec.decode(row[1]), float(row[2]))
        self._idem[(key, idempotency_key)] = found
        return found

    def _expire_idem(self, now: float) -> None:
        ttl = self.service.idempotency_ttl
        self._idem = {k: v for k, v in self._idem.items() if now - v.at < ttl}

    def message(self, message_id: str) -> MessageView | None:
        """What is recorded about a message: in memory for recent API messages, else the ledger."""
        v = self.records.by_id.get(message_id)
        if v is not None:
            return v
        if self.ledger is None or len(message_id) > 200:
            return None
        rec = self.ledger.message(message_id)
        if rec is None:
            return None
        return MessageView(
            id=rec.message_id,
            state=rec.delivery_status if rec.delivery_status == "delivered" else rec.state.value,
            campaign=rec.campaign,
            reason=rec.reason,
            gateway=rec.gateway,
            provider_id=rec.provider_id,
            submitted_at=rec.submitted_at,
            answered_at=rec.answered_at,
            delivery=Delivery(status=rec.delivery_status, code=rec.delivery_code, done_at=rec.delivered_at)
            if rec.delivery_status
            else None,
        )

    # -- webhooks ------------------------------------------------------------------------

    def parser(self, gateway: str) -> WebhookParser:
        """The parser of ``gateway``'s callbacks; 404 for an unknown gateway."""
        p = self.parsers.get(gateway)
        if p is None:
            raise ApiError(
                404,
                "Unknown gateway",
                f"no gateway {gateway[:64]!r}; configured: {', '.join(sorted(self.parsers))}",
            )
        return p

    async def apply_reports(self, reports: Sequence[DeliveryReport]) -> int:
        """Record delivery reports (ledger and memory); how many matched a message.

        The ledger's part runs in a thread on a connection of its own: matching by provider id may
        first bring the provider-id index up to date (:meth:`Ledger.index_providers`), which must
        not hold up the event loop."""
        matched, missed = await self._apply_reports(reports)
        if missed:  # their submit answer may not be recorded yet: tried again for a while
            self.early.park(missed, time.monotonic())
        self.counters["reports"] += len(reports)
        by_gateway: dict[str, Counter[str]] = {}
        for r in reports:
            by_gateway.setdefault(r.gateway, Counter())[r.status.value] += 1
        for gw, counts in by_gateway.items():
            self.metrics.delivery_reports(counts, gateway=gw)
        self.counters["reports_matched"] += matched
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

    async def _apply_reports(self, reports: Sequence[DeliveryReport]) -> tuple[int, list[DeliveryReport]]:
        """Apply reports to the ledger, then to the messages in memory (which see an answer before
        the ledger commits it): how many matched, and those that matched nothing in the ledger
        (without a ledger: in memory)."""
        missed: list[DeliveryReport] = []
        found = 0
        if self.reports_ledger is not None:
            found = await anyio.to_thread.run_sync(
                partial(self.reports_ledger.apply_reports, reports, missed), limiter=self._reports_limiter
            )
        matched = self.records.reports(reports, None if self.reports_ledger is not None else missed)
        return max(matched, found), missed

    async def _early_reports(self) -> None:
        """Try the parked reports again until they match or expire (:mod:`engine.early_reports`)."""
        while not self._closing.is_set():
            with anyio.move_on_after(RETRY_EVERY):
                await self._closing.wait()
            items = self.early.take(time.monotonic()) if len(self.early) else []
            if not items:
                continue
            matched, missed = await self._apply_reports([r for _, r in items])
            self.counters["reports_matched"] += matched
            left = {id(r) for r in missed}
            self.early.put_back([p for p in items if id(p[1]) in left])

    def apply_replies(self, replies: Sequence[MoReply]) -> int:
        """Record MO replies; opt-out keywords go to the store and every running blast's set now."""
        numbers, records = opt_outs_in(replies, self.keywords)
        if records:
            assert self.store is not None
            self.metrics.optouts_added(self.store.add_optouts(records), "mo")
            self.optouts.add(numbers)
            if self.campaigns is not None:
                self.campaigns.add_optouts(numbers)
        self.counters["replies"] += len(replies)
        self.counters["optouts"] += len(records)
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

    # -- metrics -------------------------------------------------------------------------

    def exposition(self) -> tuple[bytes, str]:
        """The process's own metrics (without its blast workers') and content type."""
        return self.metrics.exposition()

    async def scrape(self) -> tuple[bytes, str]:
        """The ``/metrics`` body and content type: the process's series and its blast workers'."""
        live = self.campaigns.metrics_texts() if self.campaigns is not None else []
        # in a thread: the loop keeps serving the API and the priority lane between GIL turns
        body = await anyio.to_thread.run_sync(self.merged_metrics.render, live)
        return body, CONTENT_TYPE

    # -- health --------------------------------------------------------------------------

    def readiness(self) -> dict[str, Any]:
        """Checks behind ``/readyz``: the store answers, each carrier has a gateway, not draining."""
        checks: dict[str, Any] = {"draining": self.draining}
        try:
            assert self.ledger is not None
            self.ledger.db.execute("SELECT 1").fetchone()
            checks["store"] = "ok"
        except (AssertionError, sqlite3.Error) as exc:
            checks["store"] = f"error: {exc}"
        now = self.clock.monotonic()
        down = sorted(
            c for c, names in self.failover.items() if not any(self.breakers[g].allow(now) for g in names)
        )
        checks["gateways"] = "ok" if not down else f"no gateway up for {', '.join(down)}"
        checks["ready"] = not self.draining and checks["store"] == "ok" and not down
        return checks


class _ServiceSink:
    """Receipts and MO read on a gateway's own connections go where webhooks' go."""

    def __init__(self, service: Service) -> None:
        self.service = service

    async def reports(self, reports: Sequence[DeliveryReport]) -> None:
        """:meth:`Service.apply_reports`."""
        await self.service.apply_reports(reports)

    async def replies(self, replies: Sequence[MoReply]) -> None:
        """:meth:`Service.apply_replies` (an R / 退订 records an opt-out)."""
        self.service.apply_replies(replies)


@asynccontextmanager
async def open_service(
    engine: LoadedEngine,
    *,
    host: PluginHost | None = None,
    clock: Clock | None = None,
    run_dir: Path | None = None,
) -> AsyncIterator[Service]:
    """Open the service (store, gateways, lanes) for the block; on exit drain the lanes and close.

    Leaving the block stops the running campaigns (they drain what is in flight), closes the API
    lanes' inboxes, waits up to ``service.drain_timeout`` for the lanes, then closes the gateways.
    """
    svc = Service(engine, host, clock)
    if run_dir is None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        run_dir = svc._path(svc.config.runs_dir) / "service" / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        async with anyio.create_task_group() as tg:
            try:
                await svc._start(tg, run_dir)
                yield svc
            finally:
                await svc._stop()
                tg.cancel_scope.deadline = anyio.current_time() + svc.service.drain_timeout
    except EngineError:
        raise
    finally:
        await svc._close()
