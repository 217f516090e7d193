"""The send loop of one process: batches through the stages into the lanes, with ledger, caps, progress."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import suppress
from pathlib import Path

import anyio
import anyio.lowlevel

from engine.coordination.contract import Coordinator, CoordinatorContext
from engine.coordination.gate import SLOW_DOWN, CoordinatedGate, shared_budgets
from engine.coordination.optout_upload import share_store_optouts
from engine.coordination.select import EMBEDDED, open_coordinator
from engine.core.clock import Clock
from engine.core.config import convert_section
from engine.core.errors import (
    RunHalt,
)
from engine.core.messages import DeliveryReport, MessageBatch, State
from engine.core.periods import parse_period
from engine.core.sendwindow import SendWindow
from engine.core.shared_keys import LocalKeys
from engine.observability.metrics import NO_METRICS, Metrics
from engine.observability.report import RejectsWriter, RunRecorder, RunSummary, close_writers
from engine.pipeline.runner import Batch
from engine.pipeline.source import SegmentRange
from engine.pipeline.stages.same_content import content_hash
from engine.run.control import RunControl, SendResources
from engine.run.daily import DAILY_LIMIT, DailyQuota, day_start
from engine.run.plan import OpenSegment, Plan, ProgressHook, _summarize, _verdict, prepare_run
from engine.run.provider_links import LinksUnavailable, ProviderLinker
from engine.run.range_progress import RangeProgress
from engine.run.spend import SPEND_CAP, SpendMeter, cost_of
from engine.sending.gateway import Gateway, GatewayContext, ManagedLinks, Receiving
from engine.sending.late_receipts import wait_for_receipts
from engine.sending.ratelimit import SlidingWindowLimiter
from engine.sending.retry import Breaker, RetryPolicy
from engine.sending.sender import Accumulator, Halt, Lane, LaneItem, RouteHealth
from engine.sending.webhooks import MoReply, opt_outs_in
from engine.state.dedupe_claims import DedupeClaims
from engine.state.ledger.run import CampaignLedger, skip_rows
from engine.state.optout import DEFAULT_KEYWORDS
from engine.state.outbox import CampaignCallbackSink, campaign_callback
from engine.state.store.sqlite import SqliteStore

WINDOW_POLL_SECONDS = 60.0
"""How often a paused blast looks at the clock again."""


async def _wait_for_window(
    window: SendWindow, clock: Clock, notify: Callable[[str], None] | None, stop: anyio.Event | None = None
) -> None:
    """Pause the blast until the send window opens (or a stop is asked for)."""
    now = clock.time()
    if notify is not None:
        notify(f"outside sending hours {window}: paused; resuming {window.describe_opening(now)}")
    while not window.is_open(now := clock.time()):
        if stop is not None and stop.is_set():
            return
        with anyio.move_on_after(min(WINDOW_POLL_SECONDS, max(0.01, window.next_open(now) - now))):
            await (stop.wait() if stop is not None else anyio.sleep_forever())
    if notify is not None:
        notify("sending hours: resumed")


async def _wait_for_day(
    quota: DailyQuota,
    windows: Sequence[SendWindow],
    clock: Clock,
    notify: Callable[[str], None] | None,
    stop: anyio.Event | None,
    control: RunControl | None,
) -> bool:
    """Pause the blast until the next day (the daily limit is reached) and its send windows open;
    False when a stop (or a cancel) came first."""
    now = clock.time()
    day = quota.next_day(now)
    if notify is not None:
        opens = max([day, *(w.next_open(day) for w in windows)])
        resuming = quota.describe(opens, now)
        notify(f"daily limit of {quota.per_day:,} recipients reached: paused; resuming {resuming}")
    while quota.room(now := clock.time()) <= 0:
        if stop is not None and stop.is_set():
            return False
        with anyio.move_on_after(min(WINDOW_POLL_SECONDS, max(0.01, day - now))):
            await (stop.wait() if stop is not None else anyio.sleep_forever())
    for window in windows:
        if not window.is_open(clock.time()):
            await _wait_for_window(window, clock, notify, stop)
    if control is not None:
        await control.wait_running()
    return not (stop is not None and stop.is_set())


def _cap_recorder(
    plan: Plan, store: SqliteStore | None, ledger: CampaignLedger | None = None
) -> Callable[[MessageBatch, bool, str], None]:
    """Count each request's messages against the caps when they are first handed to the gateway,
    in memory for this run and in the store for the next ones — with the ledger, in the transaction
    that records the request's rows as ``submitting`` (a retry's hand-over counts nothing again)."""
    caps, kind, clock = plan.caps, plan.campaign.config.kind, plan.clock
    with_content = plan.same_content is not None
    counting = store is not None

    def handover(batch: MessageBatch, first: bool, gateway: str) -> None:
        now = clock.time()
        keys = batch.keys() if counting and first else None
        contents = list(map(content_hash, batch.texts)) if with_content and keys is not None else None
        if ledger is not None:
            ledger.handover(batch, now=now, keys=keys, contents=contents, gateway=gateway)
        elif store is not None and keys is not None:
            store.record_sends(kind, keys, now, contents)
        if caps is not None and keys is not None:  # after the store: a refused hand-over counts nothing
            caps.record(now, keys)

    return handover


class _RunSink:
    """Where a run's SMPP/CMPP binds hand the receipts and replies they read: receipts into the
    campaign's ledger, opt-out replies into the store and this run's opt-out set (``pigeon serve``
    has its own, for its blasts and API messages) — and, with a coordinator, into the campaign's
    shared opt-out set, so every worker's next claim of them is refused."""

    def __init__(
        self,
        plan: Plan,
        ledger: CampaignLedger | None,
        metrics: Metrics,
        gate: CoordinatedGate | None = None,
    ) -> None:
        self.plan, self.ledger, self.metrics, self.gate = plan, ledger, metrics, gate

    async def reports(self, reports: Sequence[DeliveryReport]) -> None:
        """Into the ledger (matched by provider id or message id, as webhooks' are)."""
        if self.ledger is not None and reports:
            self.ledger.ledger.apply_reports(reports)

    async def replies(self, replies: Sequence[MoReply]) -> None:
        """An R / 退订 reply: the number is opted out now, for this run and every later one."""
        numbers, records = opt_outs_in(replies, DEFAULT_KEYWORDS)
        if records:
            store = SqliteStore(self.plan.engine.store_path)
            try:
                self.metrics.optouts_added(store.add_optouts(records), "mo")
            finally:
                store.close()
            if self.plan.optouts is not None:
                self.plan.optouts.add(numbers)
            if self.gate is not None:
                await self.gate.add_optouts(numbers)


async def _serving(gateways: list[Receiving], scope: anyio.CancelScope) -> None:
    """Keep the ``gateways``' binds read until the run ends (``scope`` is cancelled then)."""
    with scope:
        async with anyio.create_task_group() as tg:
            for gw in gateways:
                tg.start_soon(gw.serve)


def worker_name(store_path: Path) -> str:
    """This worker's name as a coordinator's claims know it: the host and its store, so a worker
    restarted on the same store finds its own claims ``MINE`` (and its ledger decides)."""
    digest = hashlib.sha1(str(store_path.resolve()).encode()).hexdigest()[:10]
    return f"{socket.gethostname()}:{digest}"


async def upload_store_optouts(
    plan: Plan, gate: CoordinatedGate, notify: Callable[[str], None] | None
) -> None:
    """With ``[coordinator] share_store_optouts`` (the default): the store's opt-outs the
    coordinator's shared copy lacks, uploaded before anything is sent (docs/scale-out.md)."""
    if not plan.engine.config.coordinator.share_store_optouts:
        return
    done = await share_store_optouts(gate.coordinator, plan.engine.store_path)
    if done is not None and done.rows and notify is not None:
        notify(
            f"opt-outs: {done.rows:,} of this store's uploaded to the coordinator's shared copy "
            f"({done.added:,} new to it) in {done.seconds:.1f} s"
        )


def _same_content_seconds(plan: Plan) -> float:
    """The campaign kind's same-content window in seconds (0.0: none)."""
    lane = plan.engine.config.caps.get(plan.campaign.config.kind)
    if plan.same_content is None or lane is None or not lane.same_content:
        return 0.0
    return parse_period(lane.same_content) or 0.0


def open_gate(
    plan: Plan, notify: Callable[[str], None] | None, metrics: Metrics = NO_METRICS
) -> CoordinatedGate | None:
    """The lanes' gate to the engine's coordinator; None for the embedded one (one process).
    Call inside the run's event loop (the plugin may create async clients)."""
    ecfg = plan.engine.config
    ccfg = ecfg.coordinator
    if ccfg.plugin == EMBEDDED:
        return None
    budgets = shared_budgets(ecfg, plan.engine.file, plan.max_parts, lambda g: _served(plan, g))
    file = plan.engine.file
    store = plan.engine.store_path
    ctx = CoordinatorContext(worker=worker_name(store), store_path=store)
    coordinator: Coordinator = open_coordinator(
        plan.host.coordinators, ccfg.plugin, ccfg.options, ctx, file=file
    )
    return CoordinatedGate(
        coordinator,
        plan.campaign.id,
        carrier_budgets=budgets.carriers,
        gateway_budgets=budgets.gateways,
        notify=notify,
        pause=ccfg.pause,
        metrics=metrics,
        worker=ctx.worker,
        carrier_reserves=budgets.carrier_reserves,
        gateway_reserves=budgets.gateway_reserves,
        priority=plan.campaign.config.kind,
        caps=plan.caps.windows if plan.caps is not None else (),
        same_content=_same_content_seconds(plan),
        wall=plan.clock.time,
        slow=SLOW_DOWN if ccfg.slow_down else None,
    )


def _spend_meter(
    plan: Plan, ledger: CampaignLedger | None, shard: tuple[int, int] | None, metrics: Metrics
) -> SpendMeter | None:
    """The run's meter under ``policy.spend_cap`` (None without one): what earlier runs of the
    campaign handed over is in the ledger; a shard gets its share of the rest."""
    cap = plan.campaign.config.policy.spend_cap
    if cap is None:
        return None
    prices = plan.prices
    spent = cost_of(ledger.ledger.handed_parts(ledger.id), prices) if ledger is not None else 0.0
    return SpendMeter(
        cap,
        prices,
        spent=spent,
        share=1.0 / shard[1] if shard is not None else 1.0,
        currency=plan.engine.config.currency,
        metrics=metrics,
    )


def _daily_quota(
    plan: Plan, ledger: CampaignLedger | None, shard: tuple[int, int] | None
) -> DailyQuota | None:
    """The run's quota under ``policy.daily_limit`` (None without one): what earlier runs of the
    campaign handed over today is in the ledger; a shard takes its share of each day."""
    policy = plan.campaign.config.policy
    if policy.daily_limit is None:
        return None
    now = plan.clock.time()
    earlier = (
        ledger.ledger.handed_since(ledger.id, day_start(now, policy.timezone)) if ledger is not None else 0
    )
    share = 1.0 / shard[1] if shard is not None else 1.0
    return DailyQuota(policy.daily_limit, policy.timezone, now, earlier=earlier, share=share)


def _metered(
    inner: Callable[[MessageBatch, bool, str], None] | None, meter: SpendMeter, campaign: str
) -> Callable[[MessageBatch, bool, str], None]:
    """The hand-over under a spend cap: a request's first hand-over is charged before it is
    recorded; one that would cross the cap raises (a RunHalt: the run halts, nothing is recorded)."""

    def handover(batch: MessageBatch, first: bool, gateway: str) -> None:
        if not first:
            if inner is not None:
                inner(batch, first, gateway)
            return
        used = meter.used
        meter.charge(batch, campaign)
        try:
            if inner is not None:
                inner(batch, first, gateway)
        except BaseException:
            meter.used = used  # refused by the store: not handed over, not spent
            raise

    return handover


async def _pending_rest(
    batches: AsyncIterator[Batch], recorder: RunRecorder, ledger: CampaignLedger | None, prefix: str
) -> None:
    """The spend cap stopped the run: read the rest of the segment through the stages and count
    every row in its state — dropped ones with their reasons, the others ``pending`` (reason
    ``spend_cap``, never handed over: a resume with a higher cap sends them)."""
    async for batch in batches:
        if ledger is not None and ledger.skip is not None:
            skip_rows(batch, ledger.skip)
        recorder.dropped(batch.rejects)
        if batch.nums:
            recorder.queued(len(batch))
            for msgs in batch.messages(prefix).values():
                recorder.pending(msgs, SPEND_CAP)
        await anyio.lowlevel.checkpoint()


def _served(plan: Plan, gateway: str) -> list[str]:
    """The carriers whose route goes through ``gateway`` (for its account's reserve share)."""
    return [c for c, names in plan.failover.items() if gateway in names]


RECENT_SECONDS = 3.0
"""How far back a starting run looks for requests of earlier runs (a killed one's may still be on
their way): a window, plus the time a request may take to arrive."""


def _count_recent(
    ledger: CampaignLedger,
    clock: Clock,
    limiters: dict[str, SlidingWindowLimiter],
    gateway_limiters: dict[str, SlidingWindowLimiter],
    shard: tuple[int, int] | None,
) -> None:
    """Charge the budgets with what runs on this store handed over in the last seconds (a run just
    killed and resumed, or one that just ended): they may reach the provider in this run's first
    second. Charged until a window from now (when they have arrived, at the latest)."""
    by_carrier, by_gateway = ledger.ledger.recent_parts(clock.time() - RECENT_SECONDS)
    share = shard[1] if shard is not None else 1
    now = clock.monotonic()
    for budgets, used in ((limiters, by_carrier), (gateway_limiters, by_gateway)):
        for name, parts in used.items():
            lim = budgets.get(name)
            if lim is not None:
                lim.charge(-(-parts // share), now)


def _linker(
    plan: Plan, segment: OpenSegment, gateways: dict[str, Gateway], notify: Callable[[str], None] | None
) -> ProviderLinker | None:
    """The maker of provider links for a campaign with ``[links] mode = "provider"`` (else None)."""
    links = segment.links
    if links is None or links.mode != "provider" or not links.record:
        return None
    managed = {
        name: gw for name in set(plan.routes.values()) if isinstance(gw := gateways[name], ManagedLinks)
    }
    return ProviderLinker(links, managed, plan.routes, notify=notify)


PROGRESS_TICK = 1.0
"""Seconds between two progress calls while no batch moves (a paused route, a full lane)."""


async def _send(
    plan: Plan,
    run_dir: Path,
    progress: ProgressHook | None,
    clock: Clock,
    notify: Callable[[str], None] | None = None,
    stop: anyio.Event | None = None,
    metrics: Metrics = NO_METRICS,
    ledger: CampaignLedger | None = None,
    *,
    control: RunControl | None = None,
    shared: SendResources | None = None,
    recorder: RunRecorder | None = None,
    shard: tuple[int, int] | None = None,
    on_finish: Callable[[bool], None] | None = None,
    part: SegmentRange | None = None,
    gate: CoordinatedGate | None = None,
    progress_rows: RangeProgress | None = None,
) -> RunSummary:
    """Send ``plan``; ``control`` pauses and resumes it between batches, ``shared`` lends it the
    gateways and budgets of a long-running service (not opened or closed here), ``recorder`` lets
    the caller watch the counts while it runs. ``shard=(index, count)`` sends only that shard's
    rows, and ``on_finish`` is then told whether the shard handled all of them, instead of the
    ledger marking the campaign finished (:mod:`engine.run.shards`: the parent does, once every shard
    is done). ``part`` sends only that byte range of the segment and ``gate`` lends it the
    worker's coordinator (not closed here), ``progress_rows`` follows which of its rows are
    settled (told every outcome after the ledger): :mod:`engine.run.worker`."""
    started = time.perf_counter()
    ecfg = plan.engine.config
    recorder = recorder or RunRecorder(plan.prices)
    if ledger is not None:
        hook = campaign_callback(ledger.db, ledger.id)  # started by the service with a callback URL
        if hook is not None:  # (before the ledger: its events go into the ledger's transactions)
            recorder.sinks.append(CampaignCallbackSink(hook[0], hook[1], ledger.id, ledger))
        recorder.sinks.append(ledger)
    if progress_rows is not None:
        recorder.sinks.append(progress_rows)
    claims: DedupeClaims | None = None
    one = plan.dedupe_claims is None and shard is None and part is None
    if (
        one
        and ledger is not None
        and ledger.resumed
        and DedupeClaims.exists(plan.engine.store_path, plan.campaign.id)
    ):
        # a resume of a send on byte-range shards: the rows that won their numbers keep them
        keys = LocalKeys()
        DedupeClaims.fill(keys, plan.engine.store_path, plan.campaign.id)
        claims = DedupeClaims(keys, plan.campaign.id, plan.engine.store_path)
        claims.skip = ledger.skip
        plan = dataclasses.replace(plan, dedupe_claims=claims)
    # (a shard of a send on byte ranges reads its part: no hash filter; template and header
    # checks: before any gateway opens)
    segment = plan.open_segment(None if part is not None else shard, part)
    kind = plan.campaign.config.kind
    recorder.metrics = segment.runner.metrics = metrics
    prepare_run(metrics, plan, [s.name for s in segment.runner.stages])
    for state, name in (
        (State.REJECTED, "rejects.csv"),
        (State.SUPPRESSED, "suppressed.csv"),
        (State.DEFERRED, "deferred.csv"),
    ):
        recorder.writers[state] = RejectsWriter(run_dir / name)
    gateways: dict[str, Gateway] = {}
    counting = plan.caps is not None or plan.same_content is not None
    store = SqliteStore(plan.engine.store_path) if counting else None
    halt = Halt()
    own_gate = gate is None
    health = RouteHealth(
        clock,
        limit=ecfg.outage.limit,
        halt=halt,
        notify=notify,
        waiting=recorder.waiting,
        campaign=plan.campaign.id,
    )
    try:
        if gate is None and shared is None:
            gate = open_gate(plan, notify, metrics)
            if gate is not None:
                await upload_store_optouts(plan, gate, notify)
        for name in sorted({g for names in plan.failover.values() for g in names}):
            if shared is not None:
                gateways[name] = shared.gateways[name]
                continue
            gcfg = ecfg.gateways[name]
            reg = plan.host.gateways.get(gcfg.plugin)
            opts = convert_section(
                gcfg.options,
                reg.config_type,
                file=plan.engine.file,
                path=f"gateways.{name}.options",
            )
            gateways[name] = reg.factory(
                opts, GatewayContext(name=name, base_dir=plan.engine.base_dir, run_dir=run_dir)
            )
        if gate is not None:  # a dead worker's claims are sent again only where the provider dedupes
            gate.resend_adopted = all(gw.idempotent for gw in gateways.values())
        floor = plan.max_parts
        limiters: dict[str, SlidingWindowLimiter] = {
            c: SlidingWindowLimiter(cc.rate_per_second, min_rate=floor)
            for c, cc in ecfg.carriers.items()
            if cc.rate_per_second
        }
        lanes = {name: anyio.create_memory_object_stream[LaneItem](4) for name in set(plan.routes.values())}
        breakers = {
            name: Breaker(ecfg.gateways[name].breaker_threshold, ecfg.gateways[name].breaker_cooldown)
            for name in gateways
        }
        policy = RetryPolicy(ecfg.retry.max_attempts, ecfg.retry.base, ecfg.retry.cap)
        gateway_limiters = {
            name: SlidingWindowLimiter(rate, min_rate=floor)
            for name in gateways
            if (rate := ecfg.gateways[name].rate_per_second)
        }
        if shared is not None:
            limiters, gateway_limiters = dict(shared.limiters), dict(shared.gateway_limiters)
            breakers = dict(shared.breakers)
        elif ledger is not None:
            _count_recent(ledger, clock, limiters, gateway_limiters, shard)
        prefix = f"{plan.campaign.id}-"
        outbox = {c: lanes[g][0] for c, g in plan.routes.items()}
        packers = {c: Accumulator(gateways[g].max_batch) for c, g in plan.routes.items()}
        if ledger is not None:
            ledger.group_commit = True  # an answer commits with the next hand-over (Lane.on_idle)
        handover = _cap_recorder(plan, store, ledger) if store is not None or ledger else None
        meter = _spend_meter(plan, ledger, shard, metrics)
        quota = _daily_quota(plan, ledger, shard)
        if meter is not None:
            handover = _metered(handover, meter, plan.campaign.id)
        exhausted = False

        async def tick() -> None:  # a line even while no batch moves (a paused route, a full lane)
            while progress is not None:
                await anyio.sleep(PROGRESS_TICK)
                progress(recorder, time.perf_counter() - started, segment.reader.fraction_read(), False)

        async with anyio.create_task_group() as tg:
            ticker = anyio.CancelScope()

            async def ticking() -> None:
                with ticker:
                    await tick()

            tg.start_soon(ticking)
            inbound: list[Receiving] = []
            if shared is None:  # receipts and replies read on the binds during the run (SMPP, CMPP)
                inbound = [g for g in gateways.values() if isinstance(g, Receiving)]
            reading = anyio.CancelScope()
            if inbound:
                sink = _RunSink(plan, ledger, metrics, gate)
                for receiver in inbound:
                    receiver.attach(sink)
                    collector = getattr(receiver, "metrics_collector", None)
                    registry = getattr(metrics, "registry", None)
                    if callable(collector) and registry is not None and metrics is not NO_METRICS:
                        with suppress(ValueError):  # (already registered: a metrics object reused)
                            registry.register(collector())
                tg.start_soon(_serving, inbound, reading)
            for name, (_, rx) in lanes.items():
                lane = Lane(
                    gateways[name],
                    gateways={c: [gateways[g] for g in names] for c, names in plan.failover.items()},
                    limiters=limiters,
                    gateway_limiters=gateway_limiters,
                    breakers=breakers,
                    clock=clock,
                    recorder=recorder,
                    on_handover=handover,
                    policy=policy,
                    in_flight=ecfg.gateways[name].in_flight,
                    priority=kind,
                    on_idle=ledger.flush if ledger is not None else None,
                    health=health,
                    gate=gate,
                )
                tg.start_soon(lane.run, rx)
            linker = _linker(plan, segment, gateways, notify)
            batches = segment.abatches(ecfg.batch_size, linker.prepare if linker is not None else None)
            try:
                windows = plan.pause_windows()
                while (stop is None or not stop.is_set()) and not halt:
                    if control is not None:
                        await control.wait_running()
                    for window in windows:
                        if not window.is_open(plan.clock.time()):
                            await _wait_for_window(window, plan.clock, notify, stop)  # before reading on
                    if (stop is not None and stop.is_set()) or halt:
                        break
                    try:
                        batch = await anext(batches, None)
                    except LinksUnavailable as exc:  # nothing of the batch was sent: a resume reads it again
                        halt(exc.reason, str(exc))
                        break
                    if batch is None:
                        exhausted = True
                        break
                    if ledger is not None:
                        if ledger.skip is not None:
                            skip_rows(batch, ledger.skip)  # already handled by an earlier run
                        if ledger.should_stop():  # cancelled meanwhile (looked up once a second)
                            break
                    recorder.dropped(batch.rejects)
                    if progress_rows is not None:  # (before any of its rows can be answered)
                        progress_rows.read(batch.nums, segment.last_row)
                    if batch.nums:
                        recorder.queued(len(batch))
                        held = batch.messages(prefix)
                        while held:  # (more than once only when a daily limit holds some back)
                            ready, held = quota.take(held, plan.clock.time()) if quota else (held, {})
                            for carrier, msgs in ready.items():
                                metrics.queued(kind, carrier, len(msgs))
                                for full in packers[carrier].add(msgs):
                                    await outbox[carrier].send(full)
                            if held and quota is not None:  # today's share goes now, the rest tomorrow
                                for carrier, packer in packers.items():
                                    for rest in packer.flush():
                                        await outbox[carrier].send(rest)
                                if not await _wait_for_day(quota, windows, plan.clock, notify, stop, control):
                                    for msgs in held.values():  # stopped meanwhile: a resume sends them
                                        recorder.pending(msgs, DAILY_LIMIT)
                                    break
                    if progress is not None:
                        progress(
                            recorder, time.perf_counter() - started, segment.reader.fraction_read(), False
                        )
                    await anyio.lowlevel.checkpoint()
                for carrier, packer in packers.items():
                    for rest in packer.flush():
                        if halt.reason == SPEND_CAP:  # never handed over: pending, as the lanes' are
                            recorder.pending(rest, SPEND_CAP)
                            metrics.queued(kind, carrier, -len(rest))
                        else:
                            await outbox[carrier].send(rest)
                if halt.reason == SPEND_CAP and not (stop is not None and stop.is_set()):
                    await _pending_rest(batches, recorder, ledger, prefix)
            finally:
                await batches.aclose()
                for tx, _ in lanes.values():
                    tx.close()
                ticker.cancel()
                reading.cancel()
        stopped = stop is not None and stop.is_set()
        without_receipt: dict[str, int] = {}
        if inbound and not stopped and not halt:  # receipts still due: up to each receipt_wait
            without_receipt = await wait_for_receipts(inbound, notify)
        complete = not stopped and not halt and exhausted and not recorder.states[State.DEFERRED]
        if complete and ledger is not None and ledger.should_stop():
            complete = False  # cancelled meanwhile
        verdict = _verdict(plan, recorder, ledger) if complete and shard is None else None
        if on_finish is not None:
            if ledger is not None:
                ledger.flush()
            on_finish(complete)
        elif ledger is not None:
            try:
                ledger.finish(complete=complete and verdict is None)
            except RunHalt as exc:  # the store refuses even the last flush: say so in the summary
                halt(exc.reason, str(exc))
    finally:
        segment.close()
        if claims is not None:
            claims.close()
        close_writers(recorder)
        if store is not None:
            store.close()
        for gw in gateways.values() if shared is None else ():
            with anyio.move_on_after(10, shield=True), suppress(Exception):
                await gw.aclose()
        if gate is not None and own_gate:
            with anyio.move_on_after(5, shield=True), suppress(Exception):
                await gate.coordinator.aclose()
    if progress is not None:
        progress(recorder, time.perf_counter() - started, 1.0, True)
    summary = _summarize(plan, recorder, "send", time.perf_counter() - started, str(run_dir))
    summary.stopped = stop is not None and stop.is_set()
    for name, left in without_receipt.items():
        if name in summary.gateways:
            summary.gateways[name].without_receipt = left
    summary.halted, summary.message = halt.reason, halt.message
    if verdict is not None:
        summary.verdict, summary.message = verdict.reason, verdict.message
    return summary
