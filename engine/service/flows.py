"""The service's flows: events in (``POST /v1/events``), the runner firing due steps into the API's lanes."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import msgspec

from engine.core.config import DEFAULT_MARKETING_WINDOW, LoadedEngine, convert_section
from engine.core.errors import ConfigError, CoordinatorUnavailable, EngineError
from engine.core.event_source import EventSource
from engine.core.messages import SuppressReason
from engine.core.phone import mask, parse_phone
from engine.core.plugin_host import PluginHost
from engine.core.registries import Registration
from engine.core.sendwindow import SendWindow
from engine.flows.book import FlowBook
from engine.flows.config import Flow, load_flows
from engine.flows.events import EventIn, EventsResponse, decode_event
from engine.flows.runner import LATE_AFTER, FlowRunner, Outcome, SendItem
from engine.service.context import ServiceContext
from engine.service.submissions import Submissions
from engine.service.wire import ApiError
from engine.state.flowstore import FlowStore, SharedFlowStores, SqliteFlowStore
from engine.state.ledger.records import LedgerState
from engine.state.timers import TimerStore, TimerView

__all__ = [
    "CustomerSteps",
    "FlowCollector",
    "FlowPage",
    "FlowView",
    "LaneSender",
    "ServiceFlows",
    "StepView",
    "event_source_of",
    "flows_of",
]

log = logging.getLogger("pigeon.flows")
T = TypeVar("T")
_UNAVAILABLE = "flows.store_unavailable"


class FlowStepView(msgspec.Struct, kw_only=True):
    """A step of a flow as configured."""

    name: str
    wait: str
    lane: str


class FlowView(msgspec.Struct, kw_only=True):
    """A flow: what starts and cancels it, its steps, whether it is paused, its timers by state."""

    name: str
    trigger: str
    cancel_on: list[str]
    lane: str
    steps: list[FlowStepView]
    paused: bool
    timers: dict[str, int]
    """``pending``, ``firing``, ``fired``, ``cancelled``, ``expired`` → how many."""


class FlowPage(msgspec.Struct, kw_only=True):
    """``GET /v1/flows``."""

    flows: list[FlowView]


class StepView(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One of a customer's flow steps."""

    flow: str
    step: str
    order_id: str = ""
    due: float
    """When it is (or was) due, Unix seconds."""
    state: str
    message_id: str | None = None
    reason: str = ""


class CustomerSteps(msgspec.Struct, kw_only=True):
    """``GET /v1/customers/{phone}/flows``: the customer's steps, the latest due first (number masked)."""

    phone: str
    steps: list[StepView]


EVENT_IDS_KEPT = 30 * 86400.0
"""Seconds an event id is remembered (duplicates within it are taken once); older ones are
forgotten when the service starts."""
SOURCE_RETRY = 1.0
"""Seconds before an event source that failed (or ended) is read again."""
RETRY_DEFERRED = 900.0
"""Seconds after which a step the lane held outside its hours is tried again (its window open here)."""
GAUGES_EVERY = 2.0
"""Seconds between two counts of pending and late timers (for ``/metrics``)."""

_RECORDED = (
    LedgerState.SUBMITTING,
    LedgerState.SUBMITTED,
    LedgerState.DELIVERED,
    LedgerState.FAILED,
    LedgerState.SUPPRESSED,
    LedgerState.REJECTED,
    LedgerState.UNKNOWN,
)
"""Ledger states that mean a step's message is accounted for (deferred and pending ones are not)."""


def event_source_of(engine: LoadedEngine, host: PluginHost) -> tuple[Registration[Any], Any] | None:
    """The configured event source's registration and converted options (None: none configured);
    :class:`ConfigError` naming the key when the plugin is unknown or its options are wrong."""
    spec = engine.config.service.flows.source
    if spec is None:
        return None
    reg = next((r for r in host.event_sources.items() if r.name == spec.plugin), None)
    if reg is None:
        known = ", ".join(host.event_sources.names()) or "(none installed)"
        raise ConfigError(
            engine.file, "service.flows.source.plugin", f"no event source {spec.plugin!r}; installed: {known}"
        )
    options = convert_section(
        spec.options, reg.config_type, file=engine.file, path="service.flows.source.options"
    )
    return reg, options


def flows_of(engine: LoadedEngine, templates: dict[str, Any] | None = None) -> dict[str, Flow]:
    """The engine's flows (``service.flows.dir``), checked: :class:`ConfigError` saying what to change."""
    svc = engine.config.service
    path = engine.base_dir / svc.flows.dir
    return load_flows(path, templates=templates or dict(svc.templates), signature=svc.signature)


def shared_store(ctx: ServiceContext, shared: tuple[object, str] | None) -> FlowStore:
    """The ``[coordinator]``'s shared timer store (``[service.flows] store = "redis"``), as this
    host; :class:`ConfigError` if the engine has no coordinator that holds one."""
    coordinator = shared[0] if shared is not None else None
    if not isinstance(coordinator, SharedFlowStores):
        raise ConfigError(
            ctx.engine.file,
            "service.flows.store",
            '"redis" keeps the timers in the [coordinator]\'s Redis: set [coordinator] plugin = "redis" '
            '(and its url), or store = "sqlite"',
        )
    assert shared is not None
    return coordinator.flow_store(shared[1], ctx.service.flows.lease)


class LaneSender:
    """Flow steps into the API's lanes (:meth:`Submissions.send_rows`), and what the ledger knows of them."""

    def __init__(self, ctx: ServiceContext, messages: Submissions) -> None:
        self.ctx = ctx
        self.messages = messages
        self._registered: set[str] = set()
        self._lane_window = SendWindow.parse(DEFAULT_MARKETING_WINDOW, "Asia/Shanghai")

    def reserve(self, lane: str, n: int) -> list[str]:
        """``n`` fresh message ids of the lane's stream (rows reserved in the store)."""
        stream = self.messages.lanes.streams[lane]
        return [f"{stream.campaign}-{r}" for r in stream.rows.take(n)]

    async def send(self, lane: str, items: Sequence[SendItem]) -> list[Outcome]:
        """Send one lane's steps; an outcome per step."""
        templates = self.messages.templates
        values: list[tuple[str, list[str]]] = []
        rows: list[int] = []
        for it in items:
            step = it.step
            tid = step.template_id
            if tid not in self._registered and step.compiled is not None:
                templates[tid] = step.template  # the step's own text, sent as a template of the service
                self._registered.add(tid)
            tmpl = self.messages.lanes.runner(self.messages.lanes.streams[lane], tid)[0]
            values.append((tid, [it.phone, *(it.fields.get(f, "") for f in tmpl.fields)]))
            rows.append(int(it.message_id.rpartition("-")[2]))
        got = await self.messages.send_rows(lane, values, rows)  # type: ignore[arg-type]
        now = self.ctx.clock.time()
        return [
            Outcome(state, reason, self._retry_at(lane, now, reason) if state == "deferred" else 0.0)
            for state, reason in got
        ]

    def _retry_at(self, lane: str, now: float, reason: str) -> float:
        """When a step the lane held is tried again. Over its cap (``capped``): when the first of
        the lane's cap windows has moved on (the next calendar day, or a rolling period later; held
        again if another window still counts it), the runner then holding it to its flow's send
        window. Else (its quiet hours, a gateway's hours, a foreign number's night): the lane's
        window's next opening, or in 15 minutes if that one is open."""
        caps = self.messages.lanes.streams[lane].caps
        if reason == SuppressReason.CAPPED and caps is not None and caps.windows:
            return min(w.reset_after(now) for w in caps.windows)
        opens = self._lane_window.next_open(now)
        return opens if opens > now else now + RETRY_DEFERRED

    def settled(self, message_ids: Sequence[str]) -> dict[str, str]:
        """Those of ``message_ids`` past ``queued`` in the records (set after the ledger's commit)."""
        out: dict[str, str] = {}
        by_id = self.ctx.records.by_id
        for mid in message_ids:
            v = by_id.get(mid)
            if v is None:
                rec = self.ctx.ledger.message(mid) if self.ctx.ledger is not None else None
                if rec is not None and rec.state.value not in ("pending", "deferred"):
                    out[mid] = rec.state.value
            elif v.state == "suppressed" and v.reason == SuppressReason.CAPPED:
                out[mid] = "deferred"  # over a cap the shared coordinator counts: later, not dropped
            elif v.state != "queued":
                out[mid] = v.state
        return out

    def retry_at(self, message_id: str, reason: str, now: float) -> float:
        """When a step :meth:`settled` said ``deferred`` (held in its lane after it was queued: a
        shared cap) is tried again (as :meth:`send`'s deferred ones)."""
        campaign = message_id.rpartition("-")[0]
        lane = next(
            (n for n, st in self.messages.lanes.streams.items() if st.campaign == campaign), "marketing"
        )
        return self._retry_at(lane, now, reason or SuppressReason.CAPPED)

    def recorded(self, message_ids: Sequence[str]) -> dict[str, str]:
        """Those of ``message_ids`` the ledger has a record of (hand-over or end), after a restart."""
        ledger = self.ctx.ledger
        if ledger is None:
            return {}
        by_campaign: dict[str, list[tuple[str, int]]] = {}
        for mid in message_ids:
            campaign, _, row = mid.rpartition("-")
            if row.isdigit():
                by_campaign.setdefault(campaign, []).append((mid, int(row)))
        out: dict[str, str] = {}
        for campaign, pairs in by_campaign.items():
            if ledger.campaign(campaign) is None:
                continue
            rows = set(ledger.rows_in(campaign, *_RECORDED).tolist())  # one replay of the campaign
            out.update((mid, "recorded") for mid, row in pairs if row in rows)
        return out


class ServiceFlows:
    """The flows of a running service: the book (events → timers), the runner, and their metrics."""

    def __init__(
        self,
        ctx: ServiceContext,
        messages: Submissions,
        flows: dict[str, Flow],
        shared: tuple[object, str] | None = None,
    ) -> None:
        self.ctx = ctx
        self.flows = flows
        assert ctx.ledger is not None
        cfg = ctx.service.flows
        self.store: FlowStore = (
            shared_store(ctx, shared)
            if cfg.store == "redis"
            else SqliteFlowStore(
                TimerStore(ctx.ledger.db)  # the loop's connection: claims commit beside hand-overs
            )
        )
        self.book = FlowBook(flows, self.store)
        self.runner = FlowRunner(
            flows,
            self.store,
            LaneSender(ctx, messages),
            ctx.clock,
            batch=cfg.batch,
            max_per_second=cfg.max_per_second,
        )
        self._wake = anyio.Event()
        self.gauges = (0, 0)
        """(pending, late) timers as last counted."""
        self._count_db: sqlite3.Connection | None = None
        ctx.metrics.registry.register(FlowCollector(self))

    async def ingest(self, events: Sequence[EventIn]) -> EventsResponse:
        """``POST /v1/events``: take a batch of events (idempotent by id)."""
        if self.ctx.draining:
            raise ApiError(
                503, "Shutting down", "the service is draining; send the events again to another instance"
            )
        limit = self.ctx.service.flows.max_events
        if not events:
            raise ApiError(422, "Invalid request", "events is empty: send at least one event")
        if len(events) > limit:
            raise ApiError(
                413,
                "Too many events",
                f"{len(events)} events in one request; at most {limit} (service.flows.max_events): "
                "split the request",
            )
        try:
            resp = await self.book.ingest_async(events, self.ctx.clock.time())
        except CoordinatorUnavailable as exc:  # nothing taken (or all of it): the sender tries again
            log.warning("events not taken: %s", exc, extra={"event": "flows.store_unavailable"})
            raise ApiError(
                503,
                "Timer store unavailable",
                "the flows' timer store does not answer; send the events again",
            ) from exc
        if resp.scheduled:
            self._wake.set()
        return resp

    async def run(self, closing: anyio.Event) -> None:
        """Fire due steps until ``closing`` is set: recover what a crash left first."""
        poll = self.ctx.service.flows.poll
        lease = self.ctx.service.flows.lease
        while not closing.is_set():  # a shared store that does not answer: firing waits for it
            try:
                await self.store.heartbeat()
                await self.store.forget_events(self.ctx.clock.time() - EVENT_IDS_KEPT)
                await self.runner.recover()
                break
            except CoordinatorUnavailable as exc:
                log.warning(
                    "flow timers wait for their store: %s", exc, extra={"event": "flows.store_unavailable"}
                )
                with anyio.move_on_after(max(poll, 1.0)):
                    await closing.wait()
        counted = beat = 0.0
        while not closing.is_set():
            try:
                mono = self.ctx.clock.monotonic()
                if mono - beat >= lease / 3:  # a shared store: this host alive, dead hosts' timers adopted
                    await self.store.heartbeat()
                    await self._adopt()
                    beat = mono
                if mono - counted >= GAUGES_EVERY:
                    counted = mono
                    await self.refresh_gauges()
                await self.runner.confirm()
                n = await self.runner.fire_due()
            except CoordinatorUnavailable as exc:  # firing pauses; what is in flight stays this host's
                if closing.is_set():
                    break
                log.warning("flow timers paused: %s", exc, extra={"event": "flows.store_unavailable"})
                n = 0
                await anyio.sleep(max(poll, 1.0))
            except Exception:  # a bug or a store error: logged, tried again after a pause
                if closing.is_set():  # the lanes closed under a batch: it stays firing, resent on start
                    break
                log.exception("flow runner step failed", extra={"event": "flows.error"})
                n = 0
                await anyio.sleep(poll)
            if n:
                await anyio.lowlevel.checkpoint()
                continue
            try:
                hint = await self.runner.wait_hint()
            except CoordinatorUnavailable:
                hint = poll
            wait = min(poll, hint)
            if wait > 0:
                with anyio.move_on_after(wait):
                    await self._wake.wait()
                self._wake = anyio.Event()
        with contextlib.suppress(CoordinatorUnavailable):
            await self.runner.confirm()

    async def _adopt(self) -> None:
        """Take over the firing timers of hosts that stopped (a shared store); logged."""
        again, unknown = await self.store.adopt(self.ctx.clock.time())
        if again or unknown:
            self.runner.counts.adopted += again + unknown
            log.warning(
                "flow timers of a stopped host adopted: %d pending again, %d recorded unknown "
                "(they may have gone: never resent blind)",
                again,
                unknown,
                extra={"event": "flows.adopted", "pending": again, "unknown": unknown},
            )

    async def consume(self, source: EventSource, closing: anyio.Event) -> None:
        """Take the event source's deliveries until ``closing``: each batch into the book (in
        chunks of ``max_events``), then acknowledged. A source that fails is tried again after
        a pause; an entry that is not an event is counted rejected (and logged without its data)."""
        limit = self.ctx.service.flows.max_events
        async with anyio.create_task_group() as tg:

            async def stop() -> None:
                await closing.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(stop)
            while True:
                try:
                    async for d in source.deliveries():
                        events: list[EventIn] = []
                        bad = 0
                        for raw in d.payloads:
                            ev = decode_event(raw)
                            if ev is None:
                                bad += 1
                            else:
                                events.append(ev)
                        for i in range(0, len(events), limit):
                            resp = await self._ingest_retrying(events[i : i + limit], closing)
                            if resp.scheduled:
                                self._wake.set()
                        if bad:
                            self.book.counts.events["rejected"] += bad
                            log.warning(
                                "entries that are not events",
                                extra={"event": "flows.source_rejected", "count": bad},
                            )
                        await d.ack()
                except EngineError as exc:
                    log.error("event source failed: %s", exc, extra={"event": "flows.source_error"})
                with anyio.move_on_after(SOURCE_RETRY):
                    await closing.wait()
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await source.aclose()

    async def _ingest_retrying(self, events: Sequence[EventIn], closing: anyio.Event) -> EventsResponse:
        """A source's batch into the book, tried again while a shared store does not answer (the
        batch is acknowledged only once it is in)."""
        while True:
            try:
                return await self.book.ingest_async(events, self.ctx.clock.time())
            except CoordinatorUnavailable as exc:
                if closing.is_set():
                    raise EngineError(f"events not taken: {exc}") from exc
                log.warning(
                    "events wait for the timer store: %s", exc, extra={"event": "flows.store_unavailable"}
                )
                await anyio.sleep(SOURCE_RETRY)

    # -- control and look-ups ---------------------------------------------------------------

    async def listing(self) -> FlowPage:
        """Every flow: trigger, steps, paused, timers by state."""
        counts, paused = await self._call(self.store.counts), set(await self._call(self.store.paused))
        return FlowPage(
            flows=[
                FlowView(
                    name=f.name,
                    trigger=f.trigger,
                    cancel_on=sorted(f.cancel_on),
                    lane=f.config.lane,
                    steps=[
                        FlowStepView(name=s.name, wait=f.config.steps[s.index].wait, lane=s.lane)
                        for s in f.steps
                    ],
                    paused=f.name in paused,
                    timers=counts.get(f.name, {}),
                )
                for f in self.flows.values()
            ]
        )

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except CoordinatorUnavailable as exc:
            raise ApiError(503, "Timer store unavailable", "the flows' timer store does not answer") from exc

    async def control(self, name: str, action: str) -> FlowView:
        """Pause or resume flow ``name``."""
        if name not in self.flows:
            raise ApiError(
                404, "Not found", f"no flow {name[:64]!r}; flows: {', '.join(sorted(self.flows)) or '(none)'}"
            )
        if action == "pause":
            await self._call(lambda: self.store.pause(name, self.ctx.clock.time()))
        elif action == "resume":
            await self._call(lambda: self.store.resume(name))
            self._wake.set()
        else:
            raise ApiError(404, "Not found", f"no action {action[:32]!r}: use pause or resume")
        return next(f for f in (await self.listing()).flows if f.name == name)

    async def customer(self, phone: str) -> CustomerSteps:
        """The customer's steps (masked number, latest due first)."""
        parsed = parse_phone(phone)
        if parsed.reason is not None or not parsed.e164:
            raise ApiError(422, "Invalid request", "phone: not a phone number (13800138000, +86…, E.164)")
        return CustomerSteps(
            phone=mask(parsed.e164),
            steps=[
                _step_view(self.flows, t)
                for t in await self._call(lambda: self.store.of_customer(parsed.e164))
            ],
        )

    async def refresh_gauges(self) -> None:
        """Count pending and late timers (``/metrics`` reads the result): in a thread, on a
        connection of its own — an index count over millions of rows takes tens of milliseconds."""
        now = self.ctx.clock.time()
        if not isinstance(self.store, SqliteFlowStore):  # a shared store counts in the server
            with contextlib.suppress(CoordinatorUnavailable):
                self.gauges = (await self.store.pending_count(), await self.store.late_count(now))
            return

        def count() -> tuple[int, int]:
            if self._count_db is None:
                self._count_db = sqlite3.connect(
                    self.ctx.engine.store_path, check_same_thread=False, isolation_level=None, timeout=5
                )
            db = self._count_db
            pending = db.execute("SELECT count(*) FROM flow_timers WHERE state = 0").fetchone()[0]
            late = db.execute(
                "SELECT count(*) FROM flow_timers WHERE state = 0 AND due <= ?", (now,)
            ).fetchone()[0]
            return int(pending), int(late)

        with contextlib.suppress(sqlite3.Error):
            self.gauges = await anyio.to_thread.run_sync(count)

    def close(self) -> None:
        """Close the counting connection."""
        if self._count_db is not None:
            self._count_db.close()


class FlowCollector:
    """``pigeon_flow_*`` series for ``/metrics``: events in, timers pending/late/fired, steps by outcome."""

    def __init__(self, flows: ServiceFlows) -> None:
        self.flows = flows

    def describe(self) -> list[Any]:
        """No description up front (the families come from :meth:`collect`)."""
        return []

    def collect(self) -> Iterator[Any]:
        """The current values (gauges as of the runner's last count)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        f = self.flows
        ev = CounterMetricFamily(
            "pigeon_flow_events",
            "Events taken by POST /v1/events and imports, by outcome.",
            labels=["outcome"],
        )
        for outcome, n in f.book.counts.events.items():
            ev.add_metric([outcome], n)
        yield ev
        pending, late = f.gauges
        yield GaugeMetricFamily(
            "pigeon_flow_timers_pending", "Flow steps waiting for their time (all flows).", value=pending
        )
        yield GaugeMetricFamily(
            "pigeon_flow_timers_late", "Pending flow steps already past their time.", value=late
        )
        c = f.runner.counts
        yield CounterMetricFamily(
            "pigeon_flow_timers_fired", "Flow timers claimed and handed to the lanes.", value=c.fired
        )
        yield CounterMetricFamily(
            "pigeon_flow_timers_fired_late",
            f"Flow timers fired more than {LATE_AFTER:g} s after their time.",
            value=c.late,
        )
        steps = CounterMetricFamily("pigeon_flow_steps", "Flow steps by outcome.", labels=["outcome"])
        steps.add_metric(["sent"], c.sent)
        steps.add_metric(["cancelled"], f.book.counts.cancelled)
        steps.add_metric(["expired"], c.expired + f.book.counts.expired)
        steps.add_metric(["deferred"], c.deferred)
        steps.add_metric(["dropped"], sum(c.dropped.values()))
        yield steps


def _step_view(flows: dict[str, Flow], t: TimerView) -> StepView:
    flow = flows.get(t.flow)
    name = flow.steps[t.step].name if flow is not None and t.step < len(flow.steps) else f"step{t.step + 1}"
    return StepView(
        flow=t.flow,
        step=name,
        order_id=t.subject,
        due=t.due,
        state=t.state,
        message_id=t.message,
        reason=t.reason,
    )
