"""A campaign and an engine file made into a checked plan: its stages, gateways, segment and run directory."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from engine.core import sms
from engine.core.carriers import INTL, PrefixTable, default_prefix_table
from engine.core.clock import Clock, SystemClock
from engine.core.config import (
    EngineConfig,
    LoadedCampaign,
    LoadedEngine,
    convert_section,
    load_campaign,
    load_engine,
)
from engine.core.errors import (
    ConfigError,
    PreflightError,
    SegmentRejected,
    SourceError,
    TemplateError,
)
from engine.core.links import link_url
from engine.core.periods import parse_period
from engine.core.plugin_host import PluginHost
from engine.core.preflight import DEFAULT_ALLOWED_TERMS, DEFAULT_BANNED_TERMS, Finding, check_campaign, errors
from engine.core.sendwindow import ALL_DAY, SendWindow
from engine.core.template import Template, compile_template
from engine.core.variants import Split
from engine.observability.metrics import Metrics
from engine.observability.report import RunRecorder, RunSummary
from engine.pipeline.runner import Batch, StageRunner
from engine.pipeline.source import RangedSource, SegmentRange, SegmentReader, SegmentSource, SourceContext
from engine.pipeline.stages import (
    Cap,
    CarrierResolver,
    Holdout,
    HoldQuietHours,
    Links,
    RequireConsent,
    SameContent,
    standard_stages,
)
from engine.pipeline.stages.dedupe import SharedClaims
from engine.pipeline.verdict import SAMPLE_ROWS, Verdict, judge, sendable_rows
from engine.state.caps import CapState, CapWindow
from engine.state.gates import Gates, content_hash
from engine.state.ledger.records import Semantics
from engine.state.ledger.run import CampaignLedger
from engine.state.ledger.store import open_for_run
from engine.state.links import LinkStore, links_path
from engine.state.optout import OptOutSet
from engine.state.store.sqlite import SqliteStore

__all__ = ["OpenSegment", "Plan", "ProgressHook", "prepare"]

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
    consents: OptOutSet | None = None
    """The numbers with a consent record (None when the campaign does not require one)."""
    clock: Clock = field(default_factory=SystemClock)
    variants: list[Template] = field(default_factory=list)
    """An A/B test's templates, in the order of ``split.names`` (empty: ``template`` for all;
    else ``template`` is the first of them)."""
    split: Split | None = None
    """Who gets which variant (None without an A/B test)."""
    dedupe_claims: SharedClaims | None = None
    """Numbers claimed in a table the processes of one send share (``--shards`` on byte ranges:
    :class:`engine.state.dedupe_claims.DedupeClaims`); None: ``dedupe`` is this process's alone."""

    @property
    def fields(self) -> list[str]:
        """Every segment field the campaign's texts use, in order of first use."""
        return list(dict.fromkeys(f for t in (self.template, *self.variants) for f in t.fields))

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

    def open_segment(
        self,
        shard: tuple[int, int] | None = None,
        part: SegmentRange | None = None,
        *,
        record_links: bool = True,
    ) -> OpenSegment:
        """Open the segment, read its header, and bind the template to its columns.

        Fails (``TemplateError``/``SourceError``) before any data row is read. With
        ``shard=(index, count)`` the batches hold only that shard's rows (:mod:`engine.run.shards`);
        with ``part`` only that byte range's rows (:mod:`engine.run.worker`; a
        :class:`~engine.pipeline.source.RangedSource` only). A campaign with ``[links]`` gets its
        link as the last column (``record_links`` False: the codes are made but not stored —
        previews and checks).
        """
        phone = self.campaign.segment.phone_field
        lcfg = self.campaign.config.links
        link_field = lcfg.field if lcfg is not None else ""
        group_field = self.campaign.config.outcomes.group_field
        wanted = [phone, *(f for f in self.fields if f != link_field)]
        if lcfg is not None and group_field not in wanted:
            wanted.append(group_field)
        if part is None:
            reader = self.source.open(wanted)
        elif isinstance(self.source, RangedSource):
            reader = self.source.open_range(wanted, part)
        else:
            raise SourceError(
                f"segment source {self.campaign.segment.source!r} cannot be cut into byte ranges "
                "(csv and jsonl files can): send it from one process"
            )
        try:
            if phone not in reader.columns:
                raise SourceError(
                    f"the segment has no column {phone!r} for phone numbers (segment.phone_field); "
                    f"its columns are: {', '.join(reader.columns)}"
                )
            bind_to = [*reader.columns, link_field] if lcfg else list(reader.columns)
            try:
                bound = self.template.bind(bind_to)
            except TemplateError as exc:
                key = "template.variants[0].text" if self.variants else "template.text"
                raise TemplateError(f"{self.campaign.file}: {key}: {exc}") from None
            variants = []
            for i, t in enumerate(self.variants):
                try:
                    variants.append(t.bind(bind_to))
                except TemplateError as exc:
                    raise TemplateError(f"{self.campaign.file}: template.variants[{i}].text: {exc}") from None
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
        links = None
        if lcfg is not None:
            columns = list(reader.columns)
            links = Links(
                LinkStore(links_path(self.engine.store_path)),
                self.campaign.id,
                mode=lcfg.mode,
                target=lcfg.target,
                domain=lcfg.domain,
                length=lcfg.code_length,
                group_col=columns.index(group_field) if group_field in columns else None,
                record=record_links,
            )
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
            variants=variants,
            split=self.split,
            consent=RequireConsent(self.consents.contains) if self.consents is not None else None,
            holdout=Holdout(self.campaign.id, share)
            if (share := self.campaign.config.outcomes.holdout)
            else None,
            links=links,
            link_field=link_field,
            dedupe_claims=self.dedupe_claims,
        )
        return OpenSegment(reader, StageRunner(stages), list(reader.columns).index(phone), shard, links)


@dataclass
class OpenSegment:
    """A segment being read, with the stage runner bound to its columns."""

    reader: SegmentReader
    runner: StageRunner
    phone_col: int
    """Position of the phone column in the reader's rows."""
    shard: tuple[int, int] | None = None
    """``(index, count)`` of a sharded send: the source's rejects of other shards are left out."""
    links: Links | None = None
    """The campaign's links stage (its store is closed with the segment)."""
    last_row: int = 0
    """The highest row number the reader has yielded so far (kept only without a shard)."""

    def batches(self, size: int) -> Iterator[Batch]:
        """Read batches of about ``size`` rows and run every stage over each."""
        run = self.runner.run
        for batch in self._read(size):
            yield run(batch)

    def _read(self, size: int) -> Iterator[Batch]:
        pc = self.phone_col
        if self.shard is None:
            for sb in self.reader.batches(size):
                last = sb.nums[-1] if sb.nums else 0
                if sb.rejects:
                    last = max(last, max(r.row for r in sb.rejects))
                if last > self.last_row:
                    self.last_row = last
                yield Batch(sb.nums, sb.rows, pc, sb.rejects)
            return
        index, count = self.shard
        for sb in self.reader.batches(size):
            rejects = [r for r in sb.rejects if r.row % count == index] if sb.rejects else sb.rejects
            yield Batch(sb.nums, sb.rows, pc, rejects)

    async def abatches(
        self, size: int, prepare: Callable[[Batch], Awaitable[None]] | None = None
    ) -> AsyncGenerator[Batch, None]:
        """:meth:`batches` for the send loop: with ``prepare`` (provider-made links,
        :class:`engine.run.provider_links.ProviderLinker`) each batch runs the stages before
        ``links``, then ``prepare`` is awaited, then the rest; without, as :meth:`batches`."""
        links = self.links
        if prepare is None or links is None or links.mode != "provider":
            for batch in self.batches(size):
                yield batch
            return
        run, split = self.runner.run, self.runner.stages.index(links)
        for batch in self._read(size):
            run(batch, 0, split)
            if batch.nums:
                await prepare(batch)
            yield run(batch, split)

    def close(self) -> None:
        """Close the reader (and the links file)."""
        self.reader.close()
        if self.links is not None:
            self.links.store.close()


def prepare_run(metrics: Metrics, plan: Plan, stages: Iterable[str]) -> None:
    """Pre-initialize ``metrics`` for a run of ``plan`` through ``stages`` (names, in order)."""
    gateways = plan.engine.config.gateways
    metrics.prepare(
        stages=stages,
        routes=plan.failover,
        in_flight={g: gateways[g].in_flight for names in plan.failover.values() for g in names},
        rates=carrier_rates(plan.engine.config, plan.failover),
    )


def carrier_rates(config: EngineConfig, carriers: Iterable[str]) -> dict[str, int]:
    """The configured ``rate_per_second`` of each of ``carriers`` that has one."""
    wanted = set(carriers)
    return {c: cc.rate_per_second for c, cc in config.carriers.items() if c in wanted and cc.rate_per_second}


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
    variants: list[Template] = []
    for i, vcfg in enumerate(tcfg.variants):
        try:
            variants.append(
                compile_template(
                    vcfg.text,
                    signature=tcfg.signature,
                    opt_out_text=campaign.config.opt_out_text,
                    max_length=tcfg.max_length,
                )
            )
        except TemplateError as exc:
            raise TemplateError(f"{campaign.file}: template.variants[{i}].text: {exc}") from None
    try:
        template = (
            variants[0]
            if variants
            else compile_template(
                tcfg.text,
                signature=tcfg.signature,
                opt_out_text=campaign.config.opt_out_text,
                max_length=tcfg.max_length,
            )
        )
    except TemplateError as exc:
        raise TemplateError(f"{campaign.file}: template.text: {exc}") from None
    template.provider = campaign.provider  # a filed provider template: render carries its params
    split = (
        Split(campaign.id, [v.name for v in tcfg.variants], [v.share for v in tcfg.variants])
        if variants
        else None
    )

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

    links = campaign.config.links
    if links is not None and links.mode == "provider":
        _check_provider_links(campaign, engine, host, routes)
    policy = campaign.config.policy
    findings: list[Finding] = []
    for i, t in enumerate(variants or [template]):
        found = check_campaign(
            t,
            kind=campaign.config.kind,
            banned_terms=policy.banned_terms if policy.banned_terms is not None else DEFAULT_BANNED_TERMS,
            allowed_terms=[*DEFAULT_ALLOWED_TERMS, *policy.allowed_terms],
        )
        if variants:  # the key to change is the variant's text, and a finding on the rest is said once
            found = [
                replace(f, key=f"template.variants[{i}].text") if f.key == "template.text" else f
                for f in found
                if f.key == "template.text" or not i
            ]
        findings += found
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
    consents: OptOutSet | None = None
    needs_history = bool(lane_caps and (lane_caps.windows or lane_caps.same_content))
    if respect_optouts or policy.require_consent or needs_history:
        store = SqliteStore(engine.store_path)
        try:
            if respect_optouts:
                optouts = store.load_optouts()
            if policy.require_consent:
                consents = store.load_consents()
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
        consents=consents,
        caps=caps,
        clock=clock,
        same_content=same_content,
        variants=variants,
        split=split,
    )


def _check_provider_links(
    campaign: LoadedCampaign, engine: LoadedEngine, host: PluginHost, routes: dict[str, str]
) -> None:
    """``[links] mode = "provider"``: every carrier's primary gateway must make per-phone links
    (``ManagedLinks``), else no recipient routed to another could carry one: refused before sending."""
    gateways = engine.config.gateways
    managed = {
        n
        for n in set(routes.values())
        if getattr(host.gateways.get(gateways[n].plugin).factory, "managed_links", False)
    }
    if not managed:
        raise ConfigError(
            campaign.file,
            "links.mode",
            "provider-managed per-phone links need a gateway whose provider makes them (the "
            "ManagedLinks contract, docs/outcomes.md; the aliyun gateway's CreateSmartShortUrl) and "
            'none of this engine\'s gateways offers it: use mode = "group" (a filed link per group) '
            'or "recipient" (codes on your own filed short domain)',
        )
    others = sorted(f"{c} → {g}" for c, g in routes.items() if g not in managed)
    if others:
        raise ConfigError(
            campaign.file,
            "links.mode",
            "provider-managed per-phone links are made by each carrier's primary gateway, and these "
            f"carriers' cannot make them: {', '.join(others)}; route them to a gateway that can "
            f"({', '.join(sorted(managed))}), or use a separate engine file for this campaign",
        )
    if not campaign.config.links or not campaign.config.links.target.startswith(("http://", "https://")):
        raise ConfigError(campaign.file, "links.target", "expected the landing page's http(s):// URL")


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
    links = c.config.links
    if links is not None and links.mode != "provider":
        example = link_url(links.domain, "x" * links.code_length)
        summary.links = {"mode": links.mode, "example": example, "characters": len(example)}
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


def check_segment(plan: Plan, rows: int = SAMPLE_ROWS) -> None:
    """Read the segment's header and its first ``rows`` rows through every stage, sending nothing
    and recording nothing: a missing column or template field, a file that is not CSV text in its
    encoding, no data rows, or too many rejected rows raise here — before a run is recorded."""
    segment = plan.open_segment(record_links=False)
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


def _open_ledger(
    plan: Plan,
    *,
    force: bool,
    again: bool,
    notify: Callable[[str], None] | None,
    owner: str = "pigeon send",
    adopt: str = "",
    approved_by: str = "",
) -> CampaignLedger:
    c = plan.campaign
    t = c.config.template
    review = c.config.review
    gated = review.needs_test or review.require_approval
    if gated:  # a test send and an approval of the current content, before the ledger records a run
        with Gates(plan.engine.store_path) as gates:
            gates.check(c.id, c.config, approved_by=approved_by)
    cl = open_for_run(
        plan.engine.store_path,
        c,
        # (an A/B test's names, shares and texts too: a resume with other ones is refused)
        [
            t.text,
            t.signature,
            c.config.opt_out_text,
            *(f"{v.name}\x1e{v.share!r}\x1e{v.text}" for v in t.variants),
        ],
        semantics=Semantics(c.config.delivery) if c.config.delivery else None,
        force=force,
        again=again,
        engine_file=str(Path(plan.engine.file).resolve()),
        owner=owner,
        lease_ttl=plan.engine.config.store.lease_ttl,
        adopt=adopt,
    )
    if gated and review.require_approval:  # the approval is this run's now (a resume needs no other)
        with Gates(plan.engine.store_path) as gates:
            generation = gates.running(c.id)
            if generation is not None:
                gates.bind(c.id, content_hash(c.config), generation)
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


def _verdict(plan: Plan, recorder: RunRecorder, ledger: CampaignLedger | None) -> Verdict | None:
    """The whole run's verdict on its segment (see :func:`engine.pipeline.verdict.judge`)."""
    st = recorder.states
    handled = int(ledger.skip.sum()) if ledger is not None and ledger.skip is not None else 0
    sendable = sendable_rows(recorder.rows, st, recorder.reasons, handled)
    return judge(
        recorder.rows + handled,
        st,
        recorder.reasons,
        max_rejected_share=plan.campaign.config.policy.max_rejected_share,
        sendable=sendable,
    )
