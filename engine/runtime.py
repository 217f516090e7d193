"""Wiring: turn a campaign and an engine config into a checked plan, then preview it or send it."""

from __future__ import annotations

import gc
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import msgspec

from engine import sms
from engine.caps import CapState, CapWindow, parse_period
from engine.carriers import INTL, PrefixTable, default_prefix_table
from engine.clock import Clock, SystemClock
from engine.config import LoadedCampaign, LoadedEngine, convert_section, load_campaign, load_engine
from engine.control import RunControl, SendResources
from engine.errors import (
    ConfigError,
    EngineError,
    OutsideSendWindow,
    PreflightError,
    RunAbandoned,
    RunHalt,
    SegmentRejected,
    SourceError,
    TemplateError,
)
from engine.gateway import Gateway, GatewayContext, Receiving
from engine.late_receipts import wait_for_receipts
from engine.ledger import CampaignLedger, Semantics, open_for_run, skip_rows
from engine.messages import DeliveryReport, MessageBatch, State
from engine.metrics import NO_METRICS, Metrics, prepare_run
from engine.optout import DEFAULT_KEYWORDS, OptOutSet
from engine.pipeline import Batch, StageRunner
from engine.plugins import PluginHost
from engine.preflight import DEFAULT_ALLOWED_TERMS, DEFAULT_BANNED_TERMS, Finding, check_campaign, errors
from engine.ratelimit import SlidingWindowLimiter
from engine.report import RejectsWriter, RunRecorder, RunSummary, close_writers
from engine.retry import Breaker, RetryPolicy
from engine.sender import Accumulator, Halt, Lane, LaneItem, RouteHealth
from engine.sendwindow import ALL_DAY, SendWindow
from engine.shards import check_budgets, check_shards, run_shards
from engine.source import SegmentReader, SegmentSource, SourceContext
from engine.stages import Cap, CarrierResolver, HoldQuietHours, SameContent, standard_stages
from engine.stages.same_content import content_hash
from engine.store.sqlite import SqliteStore
from engine.template import Template, compile_template
from engine.verdict import SAMPLE_ROWS, Verdict, judge
from engine.webhooks import MoReply, opt_outs_in

__all__ = ["OpenSegment", "Plan", "ProgressHook", "prepare", "preview", "quiet_gc", "send"]

ProgressHook = Callable[[RunRecorder, float, "float | None", bool], None]
"""Called after each batch with the recorder, the seconds since the run started, the fraction of
the segment read (None if the source cannot tell) and False; once more at the end with True."""


@dataclass
class Plan:
    """Everything checked and built before the first row is read."""

    campaign: LoadedCampaign
    engine: LoadedEngine
    host: PluginHost
    template: Template
    source: SegmentSource
    table: PrefixTable
    routes: dict[str, str]
    """Carrier → name of its primary gateway."""
    failover: dict[str, list[str]] = field(default_factory=dict)
    """Carrier → every gateway serving it, primary first."""
    resolvers: list[CarrierResolver] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    """Preflight findings (errors refuse a send; ``prepare(strict=True)`` raises on them)."""
    optouts: OptOutSet | None = None
    """Opted-out numbers to suppress (None when the campaign does not respect opt-outs)."""
    caps: CapState | None = None
    """Frequency caps of the campaign's kind, with the history loaded from the store."""
    same_content: SameContent | None = None
    """The same-text window of the campaign's kind, with recent sends loaded from the store."""
    clock: Clock = field(default_factory=SystemClock)

    @property
    def max_parts(self) -> int:
        """The most billed parts one message of this campaign can take (``template.max_length``):
        every rate it goes through must allow at least that many parts a second."""
        return sms.most_parts(self.template.max_length)

    @property
    def prices(self) -> dict[str, float]:
        """Price per billed part, per carrier."""
        return {c: cfg.price_per_part for c, cfg in self.engine.config.carriers.items()}

    def gateway_windows(self) -> dict[str, SendWindow]:
        """Carrier → the hours of its gateway, for gateways that have some."""
        gateways = self.engine.config.gateways
        return {
            carrier: SendWindow.parse(g.send_window, g.send_window_timezone)
            for carrier, name in self.routes.items()
            if (g := gateways[name]).send_window
        }

    def pause_windows(self) -> list[SendWindow]:
        """Windows a blast waits for: the campaign's and those of gateways for Chinese carriers."""
        own = self.campaign.config.send_window
        domestic = [w for c, w in self.gateway_windows().items() if c != INTL]
        return [*([own] if own is not None else []), *dict.fromkeys(domestic)]

    def open_segment(self, shard: tuple[int, int] | None = None) -> OpenSegment:
        """Open the segment, read its header, and bind the template to its columns.

        Fails (``TemplateError``/``SourceError``) before any data row is read. With
        ``shard=(index, count)`` the batches hold only that shard's rows (:mod:`engine.shards`).
        """
        phone = self.campaign.segment.phone_field
        reader = self.source.open([phone, *self.template.fields])
        try:
            if phone not in reader.columns:
                raise SourceError(
                    f"the segment has no column {phone!r} for phone numbers (segment.phone_field); "
                    f"its columns are: {', '.join(reader.columns)}"
                )
            try:
                bound = self.template.bind(reader.columns)
            except TemplateError as exc:
                raise TemplateError(f"{self.campaign.file}: template.text: {exc}") from None
        except BaseException:
            reader.close()
            raise
        cap = Cap(self.caps, self.clock) if self.caps is not None else None
        window = self.campaign.config.send_window
        carrier_windows = self.gateway_windows()
        quiet = None
        if window is not None or carrier_windows:
            quiet = HoldQuietHours(window or ALL_DAY, self.clock, carrier_windows)
        gateways = self.engine.config.gateways
        forbid_urls = any(not gateways[g].urls_in_fields for g in set(self.routes.values()))
        stages = standard_stages(
            bound,
            self.table,
            set(self.routes),
            self.resolvers,
            self.optouts,
            cap,
            quiet,
            forbid_urls_in_fields=forbid_urls,
            same_content=self.same_content,
            shard=shard,
        )
        return OpenSegment(reader, StageRunner(stages), list(reader.columns).index(phone), shard)


@dataclass
class OpenSegment:
    """A segment being read, with the stage runner bound to its columns."""

    reader: SegmentReader
    runner: StageRunner
    phone_col: int
    """Position of the phone column in the reader's rows."""
    shard: tuple[int, int] | None = None
    """``(index, count)`` of a sharded send: the source's rejects of other shards are left out."""

    def batches(self, size: int) -> Iterator[Batch]:
        """Read batches of about ``size`` rows and run every stage over each."""
        run, pc = self.runner.run, self.phone_col
        if self.shard is None:
            for sb in self.reader.batches(size):
                yield run(Batch(sb.nums, sb.rows, pc, sb.rejects))
            return
        index, count = self.shard
        for sb in self.reader.batches(size):
            rejects = [r for r in sb.rejects if r.row % count == index] if sb.rejects else sb.rejects
            yield run(Batch(sb.nums, sb.rows, pc, rejects))

    def close(self) -> None:
        """Close the reader."""
        self.reader.close()


@contextmanager
def quiet_gc(threshold0: int = 50_000) -> Iterator[None]:
    """Make the garbage collector cheap for the duration of a blast.

    Everything loaded at set-up (plugins, prefix table, template) is frozen out of collections, and
    young-generation collections run every ``threshold0`` allocations instead of 700, so the older
    generations are scanned far less often. The hot path creates no reference cycles, so nothing
    accumulates; the previous settings come back afterwards.
    """
    old = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(threshold0, old[1], old[2])
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


def _engine_path(campaign: LoadedCampaign, engine_path: str | Path | None) -> Path:
    if engine_path is not None:
        return Path(engine_path)
    if campaign.config.engine:
        return campaign.base_dir / campaign.config.engine
    raise ConfigError(
        campaign.file, "engine", 'no engine config: set engine = "engine.toml" or pass --engine'
    )


def prepare(
    campaign_path: str | Path,
    engine_path: str | Path | None = None,
    *,
    host: PluginHost | None = None,
    strict: bool = True,
    clock: Clock | None = None,
) -> Plan:
    """Load and check both config files, the plugins, the template and the routes, and run the
    preflight.

    Everything that can be wrong without reading the segment's rows fails here, with a message
    that says what to change. With ``strict`` (for sending) preflight errors raise
    :class:`PreflightError`; without (for previews) they are kept on ``plan.findings``.
    """
    campaign = load_campaign(campaign_path)
    engine = load_engine(_engine_path(campaign, engine_path))
    ecfg = engine.config
    host = host or PluginHost(disabled=ecfg.plugins.disabled)

    seg = campaign.segment
    if seg.source not in host.sources:
        raise ConfigError(
            campaign.file,
            "segment.source",
            f"unknown source {seg.source!r}; installed sources: {', '.join(host.sources.names())}",
        )
    reg = host.sources.get(seg.source)
    options = convert_section(campaign.source_options, reg.config_type, file=campaign.file, path="segment")
    source = reg.factory(options, SourceContext(base_dir=campaign.base_dir))

    tcfg = campaign.config.template
    try:
        template = compile_template(
            tcfg.text,
            signature=tcfg.signature,
            opt_out_text=campaign.config.opt_out_text,
            max_length=tcfg.max_length,
        )
    except TemplateError as exc:
        raise TemplateError(f"{campaign.file}: template.text: {exc}") from None
    template.provider = campaign.provider  # a filed provider template: render carries its params

    routes: dict[str, str] = {}
    failover: dict[str, list[str]] = {}
    for name, gcfg in ecfg.gateways.items():
        if gcfg.plugin not in host.gateways:
            raise ConfigError(
                engine.file,
                f"gateways.{name}.plugin",
                f"unknown gateway plugin {gcfg.plugin!r}; installed: {', '.join(host.gateways.names())}",
            )
        convert_section(
            gcfg.options,
            host.gateways.get(gcfg.plugin).config_type,
            file=engine.file,
            path=f"gateways.{name}.options",
        )
        for carrier in gcfg.carriers:
            routes.setdefault(carrier, name)
            failover.setdefault(carrier, []).append(name)

    resolvers: list[CarrierResolver] = []
    for rname in ecfg.routing.resolvers:
        if rname not in host.resolvers:
            raise ConfigError(
                engine.file,
                "routing.resolvers",
                f"unknown carrier resolver {rname!r}; installed: "
                f"{', '.join(host.resolvers.names()) or '(none)'}",
            )
        rreg = host.resolvers.get(rname)
        ropts = convert_section(
            ecfg.routing.options.get(rname, {}),
            rreg.config_type,
            file=engine.file,
            path=f"routing.options.{rname}",
        )
        resolvers.append(rreg.factory(ropts, None))

    policy = campaign.config.policy
    findings = check_campaign(
        template,
        kind=campaign.config.kind,
        banned_terms=policy.banned_terms if policy.banned_terms is not None else DEFAULT_BANNED_TERMS,
        allowed_terms=[*DEFAULT_ALLOWED_TERMS, *policy.allowed_terms],
    )
    if strict and errors(findings):
        raise PreflightError(
            f"{campaign.file}: the campaign breaks {len(errors(findings))} rule(s); nothing was sent:\n"
            + "\n".join(f"  {f.key}: {f.message}" for f in errors(findings))
        )
    optouts: OptOutSet | None = None
    caps: CapState | None = None
    respect = policy.respect_optouts
    respect_optouts = respect if respect is not None else campaign.config.kind == "marketing"
    lane_caps = ecfg.caps.get(campaign.config.kind)
    clock = clock or SystemClock()
    same_content: SameContent | None = None
    if respect_optouts or (lane_caps and (lane_caps.windows or lane_caps.same_content)):
        store = SqliteStore(engine.store_path)
        try:
            if respect_optouts:
                optouts = store.load_optouts()
            if lane_caps and lane_caps.windows:
                windows = [CapWindow(w.limit, w.period, lane_caps.timezone) for w in lane_caps.windows]
                now = clock.time()
                keys, times = store.load_sends(campaign.config.kind, min(w.start(now) for w in windows))
                caps = CapState(windows, keys, times)
            if lane_caps and lane_caps.same_content:
                period = parse_period(lane_caps.same_content) or 0.0
                recent = store.recent_contents(campaign.config.kind, clock.time() - period)
                same_content = SameContent(recent, lane_caps.same_content)
        finally:
            store.close()
    return Plan(
        campaign=campaign,
        engine=engine,
        host=host,
        template=template,
        source=source,
        table=default_prefix_table(),
        routes=routes,
        failover=failover,
        resolvers=resolvers,
        findings=findings,
        optouts=optouts,
        caps=caps,
        clock=clock,
        same_content=same_content,
    )


def preview(
    plan: Plan,
    *,
    samples: int = 5,
    max_rows: int | None = None,
    rejects_path: Path | None = None,
) -> RunSummary:
    """Run every stage over the segment without sending: counts, parts, cost, rejects, samples."""
    started = time.perf_counter()
    recorder = RunRecorder(plan.prices, samples=samples)
    if rejects_path is not None:
        recorder.writers[State.REJECTED] = RejectsWriter(rejects_path)
    segment = plan.open_segment()
    try:
        with quiet_gc():
            for batch in segment.batches(plan.engine.config.batch_size):
                recorder.dropped(batch.rejects)
                if batch.nums:
                    recorder.rendered(batch.nums, batch.numbers, batch.carriers, batch.texts, batch.parts)
                if max_rows is not None and recorder.rows >= max_rows:
                    break
    finally:
        segment.close()
        close_writers(recorder)
    return _summarize(plan, recorder, "preview", time.perf_counter() - started)


def _summarize(plan: Plan, recorder: RunRecorder, mode: str, elapsed: float, run_dir: str = "") -> RunSummary:
    c = plan.campaign
    summary = recorder.summary(
        campaign=c.id,
        name=c.config.name,
        kind=c.config.kind,
        mode=mode,
        currency=plan.engine.config.currency,
        elapsed=elapsed,
        run_dir=run_dir,
        prefix_table=plan.table.version,
    )
    summary.findings = list(plan.findings)
    return summary


def new_run_dir(plan: Plan, runs_dir: str | Path | None = None, clock: Clock | None = None) -> Path:
    """A fresh directory for one run: ``<runs_dir>/<campaign id>/<UTC time>``."""
    base = Path(runs_dir or plan.engine.config.runs_dir)
    now = datetime.fromtimestamp((clock or SystemClock()).time(), UTC)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    path = base / plan.campaign.id / stamp
    n = 1
    while path.exists():
        n += 1
        path = base / plan.campaign.id / f"{stamp}-{n}"
    path.mkdir(parents=True)
    return path


def _backend_options(backend: str) -> dict[str, Any]:
    if backend != "asyncio":
        return {}
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return {}
    return {"use_uvloop": True}


def send(
    plan: Plan,
    *,
    backend: str | None = None,
    runs_dir: str | Path | None = None,
    progress: ProgressHook | None = None,
    clock: Clock | None = None,
    notify: Callable[[str], None] | None = None,
    wait: bool = True,
    metrics: Metrics | None = None,
    metrics_port: int | None = None,
    metrics_addr: str = "127.0.0.1",
    ledger: bool = True,
    force: bool = False,
    again: bool = False,
    shards: int | None = None,
) -> RunSummary:
    """Send the campaign: stages on each batch, then per-gateway lanes; returns the run summary.

    The run's directory receives ``rejects.csv`` and ``summary.json`` (and the ``file`` gateway's
    output). Runs on asyncio (with uvloop) or trio. With ``ledger`` (the default) every recipient's
    state is kept in the campaign ledger and a campaign with an unfinished run resumes
    (docs/ledger.md); ``force`` resumes despite a changed segment or template, ``again`` starts a
    finished or cancelled campaign afresh.

    ``metrics`` counts the run (default: a fresh :class:`~engine.metrics.Metrics`;
    :data:`~engine.metrics.NO_METRICS` counts nothing); with ``metrics_port`` it is served on
    ``http://metrics_addr:metrics_port/metrics`` while the run lasts.

    ``shards`` (default: the engine's ``shards``) above 1 splits the campaign by number across that
    many worker processes (:mod:`engine.shards`); each counts its own metrics (``metrics`` is then
    left untouched) and shard ``k`` serves them on ``metrics_port + k``.
    """
    backend = backend or plan.engine.config.backend
    clock = clock or plan.clock
    count = shards if shards is not None else plan.engine.config.shards
    check_shards(plan.engine.config, plan.engine.file, count)
    check_budgets(plan, count)
    closed = [w for w in plan.pause_windows() if not w.is_open(clock.time())]
    if not wait and closed:
        window = closed[0]
        raise OutsideSendWindow(
            f"outside sending hours {window}; they open {window.describe_opening(clock.time())}. "
            "Nothing was sent: run again then, or without --no-wait to wait"
        )
    check_segment(plan)  # header, template fields, encoding, the first rows: before the ledger
    metrics = metrics if metrics is not None else Metrics(backend=backend)
    prepare_run(metrics, plan, [])  # gateways and carriers at zero from the first scrape; stages at open
    cl = _open_ledger(plan, force=force, again=again, notify=notify) if ledger else None
    if cl is not None and cl.recounted:
        _reload_limits(plan)  # reconcile took back the cap counts of the messages it sends again
    try:
        # A taken port fails before anything; the shards serve their own.
        serving = metrics.serving(metrics_addr, metrics_port, notify) if count == 1 else nullcontext(None)
        run_dir = new_run_dir(plan, runs_dir, clock)
        if count > 1:
            summary = _send_sharded(
                plan,
                count,
                run_dir,
                progress=progress,
                clock=clock,
                notify=notify,
                ledger=cl,
                backend=backend,
                metrics_port=metrics_port,
                metrics_addr=metrics_addr,
            )
        else:
            with quiet_gc(), serving:
                summary = anyio.run(
                    _send_until_signalled,
                    plan,
                    run_dir,
                    progress,
                    clock,
                    notify,
                    metrics,
                    cl,
                    backend=backend,
                    backend_options=_backend_options(backend),
                )
    finally:
        if cl is not None:
            cl.close()  # the lease goes back with it
    if summary is None:
        raise RunAbandoned(
            f"abandoned on a second signal: messages in flight were not waited for; {run_dir} holds "
            "the rows recorded so far"
        )
    try:
        (run_dir / "summary.json").write_bytes(msgspec.json.format(msgspec.json.encode(summary)))
    except OSError as exc:  # a full disk: the summary is still returned (and printed)
        if notify is not None:
            notify(f"cannot write {run_dir / 'summary.json'}: {exc}")
    return summary


def check_segment(plan: Plan, rows: int = SAMPLE_ROWS) -> None:
    """Read the segment's header and its first ``rows`` rows through every stage, sending nothing
    and recording nothing: a missing column or template field, a file that is not CSV text in its
    encoding, no data rows, or too many rejected rows raise here — before a run is recorded."""
    segment = plan.open_segment()
    recorder = RunRecorder({})
    try:
        for batch in segment.batches(min(plan.engine.config.batch_size, rows)):
            recorder.dropped(batch.rejects)
            if batch.nums:
                recorder.queued(len(batch.nums))
            if recorder.rows >= rows:
                break
    finally:
        segment.close()
    verdict = judge(
        recorder.rows,
        recorder.states,
        recorder.reasons,
        max_rejected_share=plan.campaign.config.policy.max_rejected_share,
        first_rows=recorder.rows >= rows,
    )
    if verdict is not None:
        raise SegmentRejected(f"{plan.campaign.file}: {verdict.message}. Nothing was sent")


def _send_sharded(
    plan: Plan,
    count: int,
    run_dir: Path,
    *,
    progress: ProgressHook | None,
    clock: Clock,
    notify: Callable[[str], None] | None,
    ledger: CampaignLedger | None,
    backend: str,
    metrics_port: int | None,
    metrics_addr: str,
) -> RunSummary | None:
    """:func:`send` on ``count`` worker processes; None when abandoned."""
    started = time.perf_counter()
    if metrics_port is not None and notify is not None:
        last = metrics_port + count - 1
        notify(f"metrics: http://{metrics_addr}:{metrics_port}…{last}/metrics (one port per shard)")
    with quiet_gc():  # frozen before the fork: the workers share what is loaded, copy-on-write
        run = run_shards(
            plan,
            count,
            run_dir,
            progress=progress,
            clock=clock,
            notify=notify,
            ledger=ledger,
            backend=backend,
            backend_options=_backend_options(backend),
            metrics_port=metrics_port,
            metrics_addr=metrics_addr,
        )
    if run.abandoned:
        return None
    verdict = _verdict(plan, run.recorder, ledger) if run.complete else None
    if ledger is not None:
        ledger.finish(complete=run.complete and verdict is None)
    if progress is not None:
        progress(run.recorder, time.perf_counter() - started, 1.0, True)
    summary = _summarize(plan, run.recorder, "send", time.perf_counter() - started, str(run_dir))
    summary.files = run.files
    summary.stopped = run.stopped
    summary.halted, summary.message = run.halted, run.message
    if verdict is not None:
        summary.verdict, summary.message = verdict.reason, verdict.message
    return summary


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


def _open_ledger(
    plan: Plan,
    *,
    force: bool,
    again: bool,
    notify: Callable[[str], None] | None,
    owner: str = "pigeon send",
    adopt: str = "",
) -> CampaignLedger:
    c = plan.campaign
    t = c.config.template
    cl = open_for_run(
        plan.engine.store_path,
        c,
        [t.text, t.signature, c.config.opt_out_text],
        semantics=Semantics(c.config.delivery) if c.config.delivery else None,
        force=force,
        again=again,
        engine_file=str(Path(plan.engine.file).resolve()),
        owner=owner,
        lease_ttl=plan.engine.config.store.lease_ttl,
        adopt=adopt,
    )
    if notify is not None and cl.restarted:
        notify(
            f"campaign {c.id!r}: its last run handed nothing to a gateway and its files changed since: "
            "starting afresh"
        )
    elif cl.resumed and notify is not None:
        done = int(cl.skip.sum()) if cl.skip is not None else 0
        notify(
            f"resuming campaign {c.id!r} ({cl.semantics.value}): {done:,} rows already handled are skipped"
            + (f"; {cl.reconciled:,} left submitting by the last run" if cl.reconciled else "")
        )
    return cl


def _reload_limits(plan: Plan) -> None:
    """Load the caps' and the same-content rule's history from the store again (as ``prepare``)."""
    lane_caps = plan.engine.config.caps.get(plan.campaign.config.kind)
    if lane_caps is None or (plan.caps is None and plan.same_content is None):
        return
    kind, now = plan.campaign.config.kind, plan.clock.time()
    store = SqliteStore(plan.engine.store_path)
    try:
        if plan.caps is not None:
            windows = plan.caps.windows
            keys, times = store.load_sends(kind, min(w.start(now) for w in windows))
            plan.caps = CapState(windows, keys, times)
        if plan.same_content is not None and lane_caps.same_content:
            period = parse_period(lane_caps.same_content) or 0.0
            recent = store.recent_contents(kind, now - period)
            plan.same_content = SameContent(recent, lane_caps.same_content)
    finally:
        store.close()


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


def _verdict(plan: Plan, recorder: RunRecorder, ledger: CampaignLedger | None) -> Verdict | None:
    """The whole run's verdict on its segment (see :func:`engine.verdict.judge`)."""
    st = recorder.states
    handled = int(ledger.skip.sum()) if ledger is not None and ledger.skip is not None else 0
    sendable = recorder.rows - st[State.REJECTED] - st[State.SUPPRESSED] + handled
    return judge(
        recorder.rows + handled,
        st,
        recorder.reasons,
        max_rejected_share=plan.campaign.config.policy.max_rejected_share,
        sendable=sendable,
    )


class _RunSink:
    """Where a run's SMPP/CMPP binds hand the receipts and replies they read: receipts into the
    campaign's ledger, opt-out replies into the store and this run's opt-out set (``pigeon serve``
    has its own, for its blasts and API messages)."""

    def __init__(self, plan: Plan, ledger: CampaignLedger | None, metrics: Metrics) -> None:
        self.plan, self.ledger, self.metrics = plan, ledger, metrics

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


async def _serving(gateways: list[Receiving], scope: anyio.CancelScope) -> None:
    """Keep the ``gateways``' binds read until the run ends (``scope`` is cancelled then)."""
    with scope:
        async with anyio.create_task_group() as tg:
            for gw in gateways:
                tg.start_soon(gw.serve)


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
) -> RunSummary:
    """Send ``plan``; ``control`` pauses and resumes it between batches, ``shared`` lends it the
    gateways and budgets of a long-running service (not opened or closed here), ``recorder`` lets
    the caller watch the counts while it runs. ``shard=(index, count)`` sends only that shard's
    rows, and ``on_finish`` is then told whether the shard handled all of them, instead of the
    ledger marking the campaign finished (:mod:`engine.shards`: the parent does, once every shard
    is done)."""
    started = time.perf_counter()
    ecfg = plan.engine.config
    recorder = recorder or RunRecorder(plan.prices)
    if ledger is not None:
        recorder.sinks.append(ledger)
    segment = plan.open_segment(shard)  # template and header checks: before any gateway opens
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
    health = RouteHealth(
        clock,
        limit=ecfg.outage.limit,
        halt=halt,
        notify=notify,
        waiting=recorder.waiting,
        campaign=plan.campaign.id,
    )
    try:
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
                sink = _RunSink(plan, ledger, metrics)
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
                )
                tg.start_soon(lane.run, rx)
            try:
                windows = plan.pause_windows()
                batches = segment.batches(ecfg.batch_size)
                while (stop is None or not stop.is_set()) and not halt:
                    if control is not None:
                        await control.wait_running()
                    for window in windows:
                        if not window.is_open(plan.clock.time()):
                            await _wait_for_window(window, plan.clock, notify, stop)  # before reading on
                    if (stop is not None and stop.is_set()) or halt:
                        break
                    batch = next(batches, None)
                    if batch is None:
                        exhausted = True
                        break
                    if ledger is not None:
                        if ledger.skip is not None:
                            skip_rows(batch, ledger.skip)  # already handled by an earlier run
                        if ledger.should_stop():  # cancelled meanwhile (looked up once a second)
                            break
                    recorder.dropped(batch.rejects)
                    if batch.nums:
                        recorder.queued(len(batch))
                        for carrier, msgs in batch.messages(prefix).items():
                            metrics.queued(kind, carrier, len(msgs))
                            for full in packers[carrier].add(msgs):
                                await outbox[carrier].send(full)
                    if progress is not None:
                        progress(
                            recorder, time.perf_counter() - started, segment.reader.fraction_read(), False
                        )
                    await anyio.lowlevel.checkpoint()
                for carrier, packer in packers.items():
                    for rest in packer.flush():
                        await outbox[carrier].send(rest)
            finally:
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
        close_writers(recorder)
        if store is not None:
            store.close()
        for gw in gateways.values() if shared is None else ():
            with anyio.move_on_after(10, shield=True), suppress(Exception):
                await gw.aclose()
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


async def _send_until_signalled(
    plan: Plan,
    run_dir: Path,
    progress: ProgressHook | None,
    clock: Clock,
    notify: Callable[[str], None] | None,
    metrics: Metrics = NO_METRICS,
    ledger: CampaignLedger | None = None,
    shard: tuple[int, int] | None = None,
    on_finish: Callable[[bool], None] | None = None,
) -> RunSummary | None:
    """Run :func:`_send`; a first Ctrl-C / SIGTERM stops reading and drains what is in flight, a
    second one abandons it (the row files still close). None when abandoned."""
    stop = anyio.Event()
    result: list[RunSummary] = []

    async def watch(scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                if stop.is_set():
                    if notify is not None:
                        notify("second signal: abandoning what is in flight")
                    scope.cancel()
                    return
                stop.set()
                if notify is not None:
                    notify("stopping: no new rows; sending what is already in flight (again to abandon)")

    errors: list[EngineError] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch, tg.cancel_scope)
        try:
            result.append(
                await _send(
                    plan,
                    run_dir,
                    progress,
                    clock,
                    notify,
                    stop,
                    metrics,
                    ledger,
                    shard=shard,
                    on_finish=on_finish,
                )
            )
        except EngineError as exc:  # say it plainly, not wrapped in an exception group
            errors.append(exc)
        except BaseExceptionGroup as group:  # a lane's store write failed (disk full…): say that
            found = group.subgroup(lambda e: isinstance(e, EngineError))
            if found is None:
                raise
            errors.append(_first(found))
        finally:
            tg.cancel_scope.cancel()
    if errors:
        raise errors[0]
    return result[0] if result else None


def _first(group: BaseExceptionGroup[Any]) -> EngineError:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, EngineError)
    return exc
