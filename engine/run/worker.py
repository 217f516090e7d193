"""``pigeon worker``: send a coordinated campaign range by range, the ranges taken from the shared queue.

Any number of ``pigeon worker CAMPAIGN --coordinator redis://…`` processes, on any hosts, each with
its own store (its own ledger), share one campaign. The first one publishes the segment's byte
ranges (:meth:`~engine.pipeline.source.RangedSource.ranges`: the file is read once to count rows;
no worker reads more than its ranges afterwards) as entries of the campaign's queue; each worker
then takes a range at a time (a Redis Stream consumer group), sends it through the lanes — every
request claimed and booked on the shared budgets (:mod:`engine.coordination.gate`) — renews it every
third of ``lease`` while it sends, and acks it when all its rows are settled in its ledger. A range
whose worker stops renewing it (killed, cut off) for ``lease`` seconds is taken by another, which
takes over the dead worker's claims: the rows it had claimed are recorded ``unknown`` (it may have
sent them) — or, when every gateway is idempotent, sent again under the same message ids, which
the provider drops if it had them. A worker that finds no range left and every range acked
finishes its ledger's campaign and exits.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import msgspec

from engine.coordination.contract import RangeQueue, TakenRange
from engine.coordination.gate import CoordinatedGate
from engine.core.clock import Clock
from engine.core.config import convert_section
from engine.core.errors import ConfigError, CoordinatorUnavailable, RunAbandoned, SourceError
from engine.observability.metrics import Metrics
from engine.observability.report import RunRecorder, RunSummary
from engine.pipeline.source import RangedSource, SegmentRange
from engine.run.blast import _RunSink, _send, _serving, open_gate, upload_store_optouts, worker_name
from engine.run.control import SendResources
from engine.run.plan import Plan, ProgressHook, _open_ledger, _summarize, check_segment, new_run_dir
from engine.run.range_progress import RangeProgress
from engine.run.send import _backend_options, check_coordinator, coordinator_from_url
from engine.run.shards import check_budgets
from engine.run.signals import quiet_gc
from engine.sending.gateway import Gateway, GatewayContext, Receiving
from engine.sending.ratelimit import SlidingWindowLimiter
from engine.sending.retry import Breaker
from engine.state.ledger.run import CampaignLedger

__all__ = ["RANGE_BYTES", "work"]

RANGE_BYTES = 256 * 1024
"""Bytes per range by default: about 5,000 rows of a typical segment — a few seconds of sending,
two Stream operations per range."""
SAY_EVERY = 2.0
"""Seconds between two merged progress lines."""
PROGRESS_EVERY = 1.0
"""Seconds between two records of where a range being sent would resume (at most a third of the lease)."""

log = logging.getLogger("pigeon.worker")


def work(
    plan: Plan,
    *,
    coordinator: str | None = None,
    backend: str | None = None,
    runs_dir: str | Path | None = None,
    progress: ProgressHook | None = None,
    clock: Clock | None = None,
    notify: Callable[[str], None] | None = None,
    metrics: Metrics | None = None,
    metrics_port: int | None = None,
    metrics_addr: str = "127.0.0.1",
    range_bytes: int = RANGE_BYTES,
    lease: float = 15.0,
    send: bool = True,
    force: bool = False,
    again: bool = False,
    say_progress: bool = True,
) -> RunSummary:
    """Work on ``plan``'s campaign until every range is acked (see the module docstring); with
    ``send`` False, publish the ranges and show the merged progress only (``say_progress``: a
    merged progress line every few seconds through ``notify``)."""
    ecfg = plan.engine.config
    if coordinator is not None:
        plan.engine = msgspec.structs.replace(
            plan.engine,
            config=msgspec.structs.replace(
                ecfg, coordinator=coordinator_from_url(coordinator, ecfg.coordinator)
            ),
        )
    backend = backend or plan.engine.config.backend
    clock = clock or plan.clock
    if plan.engine.config.coordinator.plugin == "embedded":
        raise ConfigError(
            plan.engine.file,
            "coordinator.plugin",
            "pigeon worker shares a campaign through a coordinator: give --coordinator redis://host:port/db",
        )
    if not isinstance(plan.source, RangedSource):
        raise SourceError(
            f"segment source {plan.campaign.segment.source!r} cannot be cut into byte ranges "
            "(csv and jsonl files can): send it with pigeon send"
        )
    if not range_bytes >= 4096:
        raise ConfigError("--range-kb", "", "a range must be at least 4 KiB")
    check_coordinator(plan, backend, 1)
    check_budgets(plan, 1)
    check_segment(plan)
    metrics = metrics if metrics is not None else Metrics(backend=backend)
    cl = _open_ledger(plan, force=force, again=again, notify=notify, owner="pigeon worker") if send else None
    try:
        run_dir = new_run_dir(plan, runs_dir, clock)
        with quiet_gc(), metrics.serving(metrics_addr, metrics_port, notify):
            summary = anyio.run(
                _work,
                _Job(
                    plan,
                    run_dir,
                    cl,
                    clock,
                    notify,
                    progress,
                    metrics,
                    range_bytes,
                    lease,
                    send,
                    say_progress,
                ),
                backend=backend,
                backend_options=_backend_options(backend),
            )
    finally:
        if cl is not None:
            cl.close()
    if summary is None:
        raise RunAbandoned(f"abandoned on a second signal; {run_dir} holds the rows recorded so far")
    try:
        (run_dir / "summary.json").write_bytes(msgspec.json.format(msgspec.json.encode(summary)))
    except OSError as exc:
        if notify is not None:
            notify(f"cannot write {run_dir / 'summary.json'}: {exc}")
    return summary


class _Job:
    """What one worker run needs (passed into the event loop as one argument)."""

    def __init__(
        self,
        plan: Plan,
        run_dir: Path,
        ledger: CampaignLedger | None,
        clock: Clock,
        notify: Callable[[str], None] | None,
        progress: ProgressHook | None,
        metrics: Metrics,
        range_bytes: int,
        lease: float,
        send: bool,
        say_progress: bool,
    ) -> None:
        self.plan, self.run_dir, self.ledger, self.clock = plan, run_dir, ledger, clock
        self.notify, self.progress, self.metrics = notify, progress, metrics
        self.range_bytes, self.lease, self.send = range_bytes, lease, send
        self.say_progress = say_progress
        self.stop = anyio.Event()
        self.recorder = RunRecorder(plan.prices)
        self.ranges_done = 0
        self.total = 0
        self.abandoned = False


async def _retrying(job: _Job, gate: CoordinatedGate, what: Callable[[], Any]) -> Any:
    """``await what()`` until the coordinator answers (pausing as the lanes do), or the stop."""
    while True:
        try:
            result = await what()
        except CoordinatorUnavailable as exc:
            gate.metrics.coordinator_call(gate.worker, "range", False)
            gate.unavailable(exc, 0)
            with anyio.move_on_after(gate.pause):
                await job.stop.wait()
            if job.stop.is_set():
                raise
            continue
        gate.metrics.coordinator_call(gate.worker, "range", True)
        gate.available()
        return result


async def _work(job: _Job) -> RunSummary | None:
    plan, notify = job.plan, job.notify
    started = time.perf_counter()
    gate = open_gate(plan, notify, job.metrics)
    assert gate is not None  # (work() refused the embedded coordinator)
    await upload_store_optouts(plan, gate, notify)
    queue = gate.coordinator
    if not isinstance(queue, RangeQueue):
        await queue.aclose()
        raise ConfigError(
            plan.engine.file, "coordinator.plugin", f"coordinator {queue.name!r} does not hand out ranges"
        )
    campaign = plan.campaign.id
    me = worker_name(plan.engine.store_path)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_signals, job, tg.cancel_scope)
            tg.start_soon(_say_progress, job, gate, queue)
            try:
                await _publish(job, gate, queue)
                if job.send:
                    await _take_ranges(job, gate, queue, me)
                else:
                    await _wait_until_done(job, gate, queue)
            finally:
                tg.cancel_scope.cancel()
        complete = job.total > 0 and not job.abandoned and await _all_done(job, gate, queue)
    finally:
        with anyio.move_on_after(5, shield=True):
            with suppress(CoordinatorUnavailable):
                await queue.heartbeat(campaign, _stats(job, started))
            await queue.aclose()
    if job.abandoned:  # a second signal: what was in flight was not waited for
        return None
    if job.ledger is not None:
        job.ledger.finish(complete=complete)
    summary = _summarize(plan, job.recorder, "worker", time.perf_counter() - started, str(job.run_dir))
    summary.stopped = job.stop.is_set()
    summary.message = f"{job.ranges_done} ranges sent by this worker ({me}); " + (
        "every range of the campaign is done" if complete else "ranges remain: run a worker again"
    )
    return summary


async def _signals(job: _Job, scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if job.stop.is_set():
                if job.notify is not None:
                    job.notify("second signal: abandoning what is in flight")
                job.abandoned = True
                scope.cancel()
                return
            job.stop.set()
            if job.notify is not None:
                job.notify("stopping: this range's rows in flight are sent; its rest goes to another worker")


async def _publish(job: _Job, gate: CoordinatedGate, queue: RangeQueue) -> None:
    plan = job.plan
    source = plan.source
    assert isinstance(source, RangedSource)
    campaign = plan.campaign.id
    state = await _retrying(job, gate, lambda: queue.queue_state(campaign))
    if state.get("published"):
        job.total = int(state["meta"]["ranges"])
        return
    parts = await anyio.to_thread.run_sync(source.ranges, job.range_bytes)
    meta = {"ranges": len(parts), "rows": sum(p.rows for p in parts)}
    n = await _retrying(job, gate, lambda: queue.publish_ranges(campaign, parts, msgspec.json.encode(meta)))
    if n == 0:  # another worker published meanwhile: its cut counts
        state = await _retrying(job, gate, lambda: queue.queue_state(campaign))
        job.total = int(state["meta"]["ranges"])
    else:
        job.total = n
        if job.notify is not None:
            job.notify(
                f"campaign {campaign!r}: published {n:,} ranges ({meta['rows']:,} rows) for the workers"
            )


async def _all_done(job: _Job, gate: CoordinatedGate, queue: RangeQueue) -> bool:
    try:
        state = await queue.queue_state(job.plan.campaign.id)
    except CoordinatorUnavailable:
        return False
    return bool(state.get("published")) and int(state["ranges_done"]) >= job.total


async def _wait_until_done(job: _Job, gate: CoordinatedGate, queue: RangeQueue) -> None:
    while not job.stop.is_set() and not await _all_done(job, gate, queue):
        with anyio.move_on_after(0.5):
            await job.stop.wait()


def _resources(plan: Plan, run_dir: Path) -> SendResources:
    """The worker's gateways, budgets and breakers, opened once and lent to every range's run
    (a range is seconds of sending: a gateway's pool per range would cost more than its rows)."""
    cfg, floor = plan.engine.config, plan.max_parts
    gateways: dict[str, Gateway] = {}
    for name in sorted({g for names in plan.failover.values() for g in names}):
        gcfg = cfg.gateways[name]
        reg = plan.host.gateways.get(gcfg.plugin)
        opts = convert_section(
            gcfg.options, reg.config_type, file=plan.engine.file, path=f"gateways.{name}.options"
        )
        gateways[name] = reg.factory(
            opts, GatewayContext(name=name, base_dir=plan.engine.base_dir, run_dir=run_dir)
        )
    return SendResources(
        gateways=gateways,
        limiters={
            c: SlidingWindowLimiter(cc.rate_per_second, min_rate=floor)
            for c, cc in cfg.carriers.items()
            if cc.rate_per_second
        },
        gateway_limiters={
            n: SlidingWindowLimiter(rate, min_rate=floor)
            for n in gateways
            if (rate := cfg.gateways[n].rate_per_second)
        },
        breakers={
            n: Breaker(cfg.gateways[n].breaker_threshold, cfg.gateways[n].breaker_cooldown) for n in gateways
        },
    )


async def _take_ranges(job: _Job, gate: CoordinatedGate, queue: RangeQueue, me: str) -> None:
    resources = _resources(job.plan, job.run_dir)
    inbound: list[Receiving] = [g for g in resources.gateways.values() if isinstance(g, Receiving)]
    reading = anyio.CancelScope()
    try:
        async with anyio.create_task_group() as tg:
            if inbound:  # receipts and replies read on the binds while the worker runs (SMPP, CMPP)
                sink = _RunSink(job.plan, job.ledger, job.metrics, gate)
                for receiver in inbound:
                    receiver.attach(sink)
                tg.start_soon(_serving, inbound, reading)
            try:
                await _ranges(job, gate, queue, me, resources)
            finally:
                reading.cancel()
    finally:
        for gw in resources.gateways.values():
            with anyio.move_on_after(10, shield=True), suppress(Exception):
                await gw.aclose()


async def _ranges(
    job: _Job, gate: CoordinatedGate, queue: RangeQueue, me: str, resources: SendResources
) -> None:
    plan, campaign = job.plan, job.plan.campaign.id
    while not job.stop.is_set():
        taken: TakenRange | None = await _retrying(
            job, gate, lambda: queue.take_range(campaign, idle=job.lease)
        )
        if taken is None:
            if await _all_done(job, gate, queue):
                return
            with anyio.move_on_after(0.5):  # others hold the rest: wait for them, or for their lease
                await job.stop.wait()
            continue
        gate.adopt = taken.previous if taken.previous not in ("", me) else ""
        job.metrics.range_event(me, "reclaimed" if gate.adopt else "taken")
        part = _resumed(job, taken)
        if gate.adopt and job.notify is not None:
            job.notify(
                f"range {taken.part.index} reclaimed from {gate.adopt} (no renewal for {job.lease:g} s)"
                + _resuming(taken.part, part)
            )
        elif taken.previous == me and part is not taken.part and job.notify is not None:
            job.notify(f"range {taken.part.index} held before a restart" + _resuming(taken.part, part))
        if part is not taken.part:
            log.info(
                "range %d resumed at row %d (byte %d)",
                part.index,
                part.first_row,
                part.start,
                extra={
                    "event": "range.resumed",
                    "range": part.index,
                    "row": part.first_row,
                    "byte": part.start,
                    "skipped_rows": taken.part.rows - part.rows,
                    "previous": taken.previous,
                },
            )
        finished: list[bool] = []
        sinks = list(job.recorder.sinks)
        tracker = RangeProgress(part)
        if part.rows == 0:  # every row was settled by the worker that held it: only the ack is left
            finished.append(True)
        else:
            async with anyio.create_task_group() as keep:
                keep.start_soon(_keep, job, queue, taken, part, tracker)
                summary = await _send(
                    plan,
                    job.run_dir / f"range-{taken.part.index:05d}",
                    job.progress,
                    job.clock,
                    job.notify,
                    job.stop,
                    job.metrics,
                    job.ledger,
                    shared=resources,
                    recorder=job.recorder,
                    on_finish=finished.append,
                    part=part,
                    gate=gate,
                    progress_rows=tracker,
                )
                keep.cancel_scope.cancel()
            job.recorder.sinks[:] = sinks  # (_send adds the ledger and the tracker for each range)
            if summary.halted:
                if job.notify is not None:
                    job.notify(f"stopped: {summary.message}")
                job.stop.set()
                return
        if not (finished and finished[-1]):
            return  # stopped mid-range: it goes to another worker after the lease
        await _retrying(job, gate, partial(queue.range_done, campaign, taken, taken.part.rows))
        job.ranges_done += 1
        job.metrics.range_event(me, "done")


def _resumed(job: _Job, taken: TakenRange) -> SegmentRange:
    """The part of ``taken`` still to read: from its recorded resume row on (rows before it are
    settled in the ledger of the worker that held it), or all of it."""
    part, row, at = taken.part, taken.resume_row, taken.resume_at
    if row <= part.first_row:
        return part
    last = part.first_row + part.rows
    if not (row <= last and part.start < at <= part.end):
        log.warning(
            "range %d: recorded resume row %d (byte %d) is not within it; read from its start",
            part.index,
            row,
            at,
            extra={"event": "range.resume_refused"},
        )
        return part
    return msgspec.structs.replace(part, start=at, first_row=row, rows=last - row)


def _resuming(whole: SegmentRange, part: SegmentRange) -> str:
    if part is whole:
        return ": no confirmed row recorded, read from its start"
    return (
        f": resuming at row {part.first_row} (byte {part.start}), "
        f"{whole.rows - part.rows:,} of its {whole.rows:,} rows settled before"
    )


async def _keep(
    job: _Job, queue: RangeQueue, taken: TakenRange, part: SegmentRange, tracker: RangeProgress
) -> None:
    """While the range is sent: every :data:`PROGRESS_EVERY` s (at most a third of the lease),
    record where it would resume — the row after its last settled one, once the ledger committed
    it (batched: one call a second at most, never per message) — renewing the range in the same
    call; without progress, renew it every third of the lease."""
    source = job.plan.source
    assert isinstance(source, RangedSource)
    campaign, lease = job.plan.campaign.id, job.lease
    every = min(PROGRESS_EVERY, lease / 3)
    cursor = part  # the rest of the range from the last row located
    published = part.first_row
    renewed = time.monotonic()
    while True:
        await anyio.sleep(every)
        row = tracker.confirmed() + 1
        if row > cursor.first_row and job.ledger is not None:
            job.ledger.flush()  # what the tracker counted as settled is durable from here on
            if job.ledger.write_error is None:
                try:
                    cursor = await anyio.to_thread.run_sync(source.rest_of, cursor, row)
                except (OSError, ValueError, SourceError) as exc:
                    log.warning("range %d: no resume row recorded: %s", part.index, exc)
        progress = (part.index, cursor.first_row, cursor.start) if cursor.first_row > published else None
        if progress is None and time.monotonic() - renewed < lease / 3:
            continue
        try:
            await queue.renew_range(campaign, taken.entry, progress=progress)
        except CoordinatorUnavailable:
            continue
        renewed = time.monotonic()
        if progress is not None:
            published = progress[1]


def _stats(job: _Job, started: float) -> dict[str, float]:
    elapsed = max(1e-9, time.perf_counter() - started)
    sent = float(job.recorder.states.get("sent", 0))
    return {
        "sent": sent,
        "rows": float(job.recorder.rows),
        "ranges": float(job.ranges_done),
        "rate": sent / elapsed,
    }


async def _say_progress(job: _Job, gate: CoordinatedGate, queue: RangeQueue) -> None:
    """Every few seconds: this worker's figures to the queue, the merged progress to the operator."""
    started = time.perf_counter()
    campaign = job.plan.campaign.id
    while True:
        await anyio.sleep(SAY_EVERY)
        try:
            if job.send:
                await queue.heartbeat(campaign, _stats(job, started))
            state = await queue.queue_state(campaign)
        except CoordinatorUnavailable:
            continue
        if job.notify is None or not job.say_progress or not state.get("published"):
            continue
        workers = state.get("workers", {})
        live = [
            w for w, s in workers.items() if time.time() - float(s.get("at", 0)) < 3 * SAY_EVERY + job.lease
        ]
        rate = sum(float(s.get("rate", 0)) for w, s in workers.items() if w in live)
        sent = sum(int(s.get("sent", 0)) for s in workers.values())
        job.notify(
            f"campaign {campaign!r}: {state['ranges_done']}/{job.total} ranges done, "
            f"{sum(state['held_by'].values())} being sent; {len(live)} workers live, "
            f"{sent:,} sent, {rate:,.0f}/s"
        )
