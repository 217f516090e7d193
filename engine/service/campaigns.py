"""Blasts the service runs: start from a campaign file, pause, resume, cancel, and progress.

Each blast runs in a worker process of its own (:mod:`engine.run.blast_worker`, the code path of
``pigeon send`` with the campaign ledger), so its CPU-bound batches never queue in front of the
service's event loop: the API, the priority lane and ``/metrics`` stay responsive beside it. The
service keeps each run's state here and talks to the worker over its stdin (pause, resume, stop,
opt-outs) and stdout (progress, the end).

With a shared ``[coordinator]`` (``redis``) the service also takes the campaign's lease in the
coordinator before it records a run, and keeps it (renewed every third of :data:`SHARED_LEASE_TTL`)
until the run ends: a second service — on this host or another — posting the same campaign gets
409 naming the holder. The blast's worker then claims, books and checks through the coordinator
as ``pigeon send --coordinator`` does (:mod:`engine.run.blast_worker`).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import msgspec
from anyio.abc import Process, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.coordination.contract import CoordinatorUnavailable, LeaseGrant
from engine.coordination.gate import shared_budgets
from engine.coordination.keeper import LeaseKeeper
from engine.coordination.select import EMBEDDED
from engine.core.config import LoadedEngine
from engine.core.errors import ConfigError, EngineError
from engine.core.messages import State, SuppressReason
from engine.core.plugin_host import PluginHost
from engine.core.service_config import ServiceConfig
from engine.observability.worker_metrics import MergedMetrics
from engine.run.blast import _served
from engine.run.blast_worker import METRICS_FILE, Progress
from engine.run.control import RunControl, RunState
from engine.run.gates import check_spend, send_test
from engine.run.plan import Plan, _open_ledger, check_segment, new_run_dir, prepare
from engine.state.gates import Approval, GateClosed, Gates, TestRecord, content_hash
from engine.state.ledger.lease import CampaignBusy
from engine.state.ledger.records import CampaignStatus, LedgerError
from engine.state.ledger.store import Ledger
from engine.state.ledger.tx import transaction

if TYPE_CHECKING:
    from engine.service.shared import SharedState

__all__ = [
    "LIST_STATES",
    "CampaignHost",
    "CampaignPage",
    "CampaignRun",
    "CampaignSummary",
    "CampaignView",
    "Campaigns",
]

log = logging.getLogger("pigeon.campaigns")

MAX_PATH = 1024
"""Longest campaign file path (relative to ``service.campaigns_dir``) the API takes."""
MAX_PART = 255
"""Longest component of it, in bytes (what Linux file systems take)."""
SHARED_LEASE_TTL = 15.0
"""Seconds a campaign's lease in a shared coordinator lives without a renewal (renewed every third
of it while the service runs the campaign): how long after a service dies another may start it."""


class CampaignHost(Protocol):
    """What :class:`Campaigns` uses of the service that runs them (:class:`~engine.service.core.Service`)."""

    @property
    def engine(self) -> LoadedEngine:
        """The engine file."""
        ...

    @property
    def host(self) -> PluginHost:
        """The plugin host."""
        ...

    @property
    def service(self) -> ServiceConfig:
        """The ``[service]`` section."""
        ...

    @property
    def ledger(self) -> Ledger | None:
        """The service's ledger connection."""
        ...

    @property
    def merged_metrics(self) -> MergedMetrics:
        """Where a finished blast's last series are kept."""
        ...

    @property
    def draining(self) -> bool:
        """The service is stopping."""
        ...

    @property
    def shared(self) -> SharedState | None:
        """The engine's shared coordinator (None: ``embedded``)."""
        ...


SCHEDULES = """CREATE TABLE IF NOT EXISTS service_schedules (
    campaign TEXT PRIMARY KEY,
    file     TEXT NOT NULL,   -- as posted, relative to service.campaigns_dir
    send_at  REAL NOT NULL
)"""
"""Campaigns posted with a ``send_at`` and not started yet: a restarted service schedules them again."""

APPROVALS = """CREATE TABLE IF NOT EXISTS service_approvals (
    campaign     TEXT PRIMARY KEY,
    file         TEXT NOT NULL,   -- as posted, relative to service.campaigns_dir
    content      TEXT NOT NULL,   -- content_hash() of what was submitted: an approval is of that
    submitted_by TEXT NOT NULL,   -- the posting API key's name (it may not approve its own)
    submitted_at REAL NOT NULL,
    send_at      REAL,            -- as posted (NULL: at once once approved)
    again        INTEGER NOT NULL,
    callback     TEXT             -- JSON [url, unmasked, key name], or NULL
)"""
"""Campaigns posted with ``review.require_approval`` and not approved yet: a restarted service
holds them ``awaiting_approval`` again (nothing of them is in the ledger until approved)."""

SCHEDULE_LEAD = 3.0
"""Seconds before ``send_at`` a scheduled campaign's worker starts (paused): a process start and
the segment's first batches happen before, and sending begins at ``send_at``."""


class CampaignView(msgspec.Struct, kw_only=True):
    """``GET /v1/campaigns/{id}``: where a blast stands."""

    id: str
    state: str
    """``awaiting_approval`` (``review.require_approval``: until a second key approves it),
    ``scheduled`` (until its ``send_at``), ``queued`` (waiting for a blast to end:
    ``service.concurrent_blasts``), ``running``,
    ``paused``, ``cancelled`` (drains, then stays), ``finished``, ``halted`` (a fault stopped it:
    a gateway unreachable past ``outage.limit``…; everyone not sent is pending, ``error`` says what
    to do) or ``failed``."""
    kind: str = ""
    file: str = ""
    started_at: float = 0.0
    elapsed_seconds: float = 0.0
    rows: int = 0
    """Rows read and accounted for so far."""
    fraction_read: float | None = None
    """Share of the segment file read so far (reading runs ahead of sending); ``null`` when the
    source cannot tell, and once a cancelled or halted run has ended (``rows`` says how far it got)."""
    eta_seconds: float | None = None
    states: dict[str, int] = {}
    reasons: dict[str, dict[str, int]] = {}
    claimed_elsewhere: int = 0
    """Recipients another host or worker claimed first (a shared coordinator): sent by it, recorded
    here ``suppressed``, ``claimed_elsewhere`` — neither failed nor missing (also in ``reasons``)."""
    rate_per_carrier: dict[str, float] = {}
    """Messages accepted per second since the start, per carrier."""
    error: str = ""
    done: bool = False
    """The run is over: nothing of it is in flight any more."""
    send_at: float | None = None
    """When a scheduled campaign starts (Unix seconds)."""
    submitted_by: str = ""
    """The API key that posted it."""
    approved_by: str = ""
    """The API key that approved it (``review.require_approval``)."""


class CampaignSummary(msgspec.Struct, kw_only=True):
    """One campaign in ``GET /v1/campaigns``."""

    id: str
    kind: str
    state: str
    """As in ``GET /v1/campaigns/{id}`` for a campaign this service started; else the ledger's
    ``running`` (unfinished: resumable), ``finished`` or ``cancelled``."""
    created_at: float
    """When the ledger recorded it; for one awaiting approval that never ran, when it was posted."""
    updated_at: float
    runs: int
    """Runs that worked on it (a send, each resume)."""
    file: str = ""
    """The campaign file, as posted (campaigns this service started)."""


class CampaignPage(msgspec.Struct, kw_only=True):
    """``GET /v1/campaigns``: one page of campaigns, newest first."""

    campaigns: list[CampaignSummary]
    next_cursor: str | None = None
    """Pass it as ``cursor`` for the next page; null on the last."""


LIST_STATES = (
    "awaiting_approval",
    "scheduled",
    "queued",
    "running",
    "paused",
    "cancelled",
    "finished",
    "halted",
    "failed",
)
"""The states ``GET /v1/campaigns?state=`` filters on."""


class CampaignRun:
    """One blast started by the service."""

    def __init__(self, plan: Plan, file: str, path: Path | None = None) -> None:
        self.plan = plan
        self.path = path or Path(file)
        """The campaign file the worker loads."""
        self.id = plan.campaign.id
        self.file = file
        self.control = RunControl()
        """The run's state as the service sees it (the worker is told every change)."""
        self.counts = Progress()
        """The worker's last progress line."""
        self.metrics_text = ""
        """The worker's exposition as it last sent it (at most a second old)."""
        self.cancelled = False
        """Cancelled through the API: the ledger is marked cancelled when the worker ends."""
        self.commands: MemoryObjectSendStream[bytes]
        self._commands: MemoryObjectReceiveStream[bytes]
        self.commands, self._commands = anyio.create_memory_object_stream[bytes](1024)
        self.started = time.monotonic()
        self.started_at = time.time()
        self.finished: float | None = None
        self.state = "queued"
        """``queued`` until its worker starts, then ``running`` (paused / cancelled: see :attr:`control`)."""
        self.error = ""
        self.lease = ""
        """The token of the campaign's lease, taken by the service and adopted by the worker."""
        self.send_at: float | None = None
        """When a scheduled run starts (``POST /v1/campaigns`` with ``send_at``)."""
        self.again = False
        self.wake = anyio.Event()
        """Set when a scheduled run is cancelled (its wait ends at once)."""
        self.paused_start = False
        """Its worker starts paused (scheduled: ready before ``send_at``, resumed at it)."""
        self.submitted_by = ""
        """The API key that posted it."""
        self.approved_by = ""
        """The API key that approved it."""
        self.content = ""
        """The hash of the content submitted (an approval is of that content)."""
        self.callback: tuple[str, bool, str] | None = None
        """Its callback, kept while it awaits approval."""
        self.shared_lease: LeaseGrant | None = None
        """Its lease in the shared coordinator, while the service holds it."""
        self.keeping = anyio.CancelScope()
        """The renewals of :attr:`shared_lease` (cancelled when the run ends)."""

    def tell(self, command: str) -> None:
        """Send ``command`` (a line of :mod:`engine.run.blast_worker`'s protocol) to the worker."""
        if self.finished is None:
            try:
                self.commands.send_nowait(command.encode() + b"\n")
            except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
                log.warning("campaign worker not listening", extra={"campaign": self.id})

    def view(self) -> CampaignView:
        """The campaign's progress now."""
        end = self.finished or time.monotonic()
        elapsed = end - self.started
        r = self.counts
        state = self.state
        if state == "running" or (
            state in ("queued", "scheduled", "awaiting_approval") and self.control.state is RunState.CANCELLED
        ):
            state = self.control.state.value
        eta = None
        f = r.fraction
        if state in ("running", "paused") and f is not None and 0 < f < 1:
            eta = round(elapsed * (1 - f) / f, 1)
        elif self.finished is not None:
            eta = 0.0
        rates = {c: round(n / elapsed, 1) if elapsed > 0 else 0.0 for c, n in r.carriers.items()}
        return CampaignView(
            id=self.id,
            state=state,
            kind=self.plan.campaign.config.kind,
            file=self.file,
            started_at=self.started_at,
            elapsed_seconds=round(elapsed, 3),
            rows=r.rows,
            fraction_read=round(f, 4) if f is not None else None,
            eta_seconds=eta,
            states=dict(r.states),
            reasons={k: dict(v) for k, v in r.reasons.items()},
            claimed_elsewhere=r.reasons.get(State.SUPPRESSED, {}).get(SuppressReason.CLAIMED_ELSEWHERE, 0),
            rate_per_carrier=rates,
            error=self.error,
            done=self.finished is not None,
            send_at=self.send_at,
            submitted_by=self.submitted_by,
            approved_by=self.approved_by,
        )


class CampaignError(EngineError):
    """A campaign that cannot be started or controlled; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str, title: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        """The problem's title ("": the status's usual one)."""


class CampaignFailed(EngineError):
    """A campaign's worker process failed (its error, or how it ended)."""


class Campaigns:
    """The blasts of one service, by campaign id."""

    def __init__(self, service: CampaignHost, tg: TaskGroup, run_dir: Path) -> None:
        self.service = service
        self.tg = tg
        self.runs_dir = run_dir / "campaigns"
        self.runs: dict[str, CampaignRun] = {}
        root = Path(service.service.campaigns_dir).expanduser()
        self.root = (root if root.is_absolute() else service.engine.base_dir / root).resolve()
        self.slots = anyio.Semaphore(service.service.concurrent_blasts)
        """One per blast that may run at once; the others wait ``queued``, first started first."""

    def resolve(self, file: str) -> Path:
        """The campaign file ``file`` under ``service.campaigns_dir``; 4xx when outside or missing.

        The answers name ``file`` as given and ``service.campaigns_dir``, never the server's
        absolute paths; a name no file system takes (a component over 255 bytes, a NUL) is a 422.
        """
        bad = CampaignError(
            422,
            "file: give a campaign file path relative to service.campaigns_dir "
            f"(at most {MAX_PATH} characters, each part at most {MAX_PART} bytes, no NUL)",
        )
        if not file or len(file) > MAX_PATH or "\x00" in file:
            raise bad
        try:
            if any(len(part.encode("utf-8", "surrogatepass")) > MAX_PART for part in file.split("/")):
                raise bad
            path = (self.root / file).resolve()
            if not path.is_relative_to(self.root):
                raise CampaignError(403, f"file: {file[:200]!r} is outside service.campaigns_dir")
            if not path.is_file():
                raise CampaignError(404, f"file: no campaign file {file[:200]!r} in service.campaigns_dir")
        except (OSError, ValueError):  # too long a path, a loop of links, an unencodable name
            raise bad from None
        return path

    def public(self, text: str) -> str:
        """``text`` (an error about a campaign) for an API caller: the server's directories left out,
        the CLI's options put in the API's words."""
        for root, name in ((str(self.root), "<campaigns_dir>"), (str(self.service.engine.base_dir), ".")):
            text = text.replace(root + "/", "").replace(root, name)
        return (
            text.replace("or pass --again", 'or post it with "again": true')
            .replace("pass --force to", "`pigeon send --force` can")
            .replace("--force", "`pigeon send --force`")
            .replace("Run `pigeon send CAMPAIGN_FILE --test` (or post it with", "Post it with")
            .replace("pass --approved-by NAME", "`pigeon send --approved-by NAME`")
        )

    async def start(
        self,
        file: str,
        *,
        again: bool = False,
        callback: tuple[str, bool, str] | None = None,
        send_at: float | None = None,
        key: str = "",
    ) -> CampaignRun:
        """Check and start the campaign in ``file`` (preflight and ledger as ``pigeon send``: an
        unfinished campaign resumes; a finished one starts afresh only with ``again``).
        ``callback``: (URL, numbers unmasked, key name) its recipients' state changes are posted
        to, kept for the campaign (a later start without one keeps it, unless ``again``). With
        ``send_at`` in the future: checked now, ``scheduled`` until then (:meth:`_scheduled`).
        ``key``: the API key posting it; a campaign with ``review.require_approval`` waits
        ``awaiting_approval`` for another key's :meth:`approve` (nothing recorded until then)."""
        if self.service.draining:
            raise CampaignError(503, "the service is draining: no new campaigns")
        now = time.time()
        if send_at is not None and not (now - 366 * 86400 < send_at <= now + 366 * 86400):
            raise CampaignError(422, "send_at: Unix seconds, at most 366 days ahead")
        path = self.resolve(file)
        plan = await self._prepare(path)
        running = self.runs.get(plan.campaign.id)
        if running is not None and running.finished is None:
            raise CampaignError(409, f"campaign {plan.campaign.id!r} is already {running.view().state}")
        await self._check(plan)
        if plan.campaign.config.review.require_approval and not self._approved(plan):
            # Nothing recorded yet: the run is opened when a second key approves it.
            run = CampaignRun(plan, file, path)
            run.state, run.send_at, run.again, run.callback = "awaiting_approval", send_at, again, callback
            run.submitted_by, run.content = key, content_hash(plan.campaign.config)
            self.runs[run.id] = run
            self._keep_approval(run, waiting=True)
            log.info(
                "campaign awaiting approval",
                extra={"event": "campaign.submitted", "campaign": run.id, "file": file, "key": key},
            )
            return run
        run = await self._launch(plan, file, path, again=again, callback=callback, send_at=send_at)
        run.submitted_by = key
        return run

    def _approved(self, plan: Plan) -> bool:
        """Whether the campaign's current content has an approval a run may start (or resume) with:
        its unfinished run's (a resume, a restored schedule) or one not used yet."""
        c = plan.campaign
        with Gates(self.service.engine.store_path) as gates:
            return gates.approval(c.id, content_hash(c.config), gates.running(c.id)) is not None

    async def _prepare(self, path: Path) -> Plan:
        """The campaign's plan: its own config and preflight (422 saying what to change)."""
        try:
            return await anyio.to_thread.run_sync(
                lambda: prepare(path, self.service.engine.file, host=self.service.host, strict=True)
            )
        except EngineError as exc:
            raise CampaignError(422, self.public(str(exc))) from None

    async def _check(self, plan: Plan) -> None:
        """Before the ledger records a run: the segment's header, template fields and first rows, the
        test gate (409 until a passed test send of the current content) and the spend cap (422)."""
        try:  # the header, the template's fields and the first rows: before the ledger records a run
            await anyio.to_thread.run_sync(lambda: check_segment(plan))
        except EngineError as exc:
            raise CampaignError(422, self.public(str(exc))) from None
        if plan.campaign.config.review.needs_test:
            try:
                with Gates(self.service.engine.store_path) as gates:
                    gates.check(plan.campaign.id, plan.campaign.config, approval=False)
            except GateClosed as exc:
                raise CampaignError(409, self.public(str(exc))) from None
        try:
            await anyio.to_thread.run_sync(lambda: check_spend(plan))
        except EngineError as exc:
            raise CampaignError(422, self.public(str(exc))) from None
        self._check_shared_budgets(plan)

    def _check_shared_budgets(self, plan: Plan) -> None:
        """With a shared coordinator: the shared budgets the blast's worker will book, computed as
        every process computes them (422 naming the rate when one cannot hold the campaign's
        largest message, before anything is recorded)."""
        ecfg = self.service.engine.config
        if ecfg.coordinator.plugin == EMBEDDED:
            return
        try:
            shared_budgets(ecfg, self.service.engine.file, plan.max_parts, lambda g: _served(plan, g))
        except ConfigError as exc:
            raise CampaignError(
                422, self.public(f"the shared budgets cannot send this campaign: {exc}")
            ) from None

    async def _take_shared(self, campaign_id: str) -> LeaseGrant | None:
        """The campaign's lease in the shared coordinator (None: none configured). 409 naming the
        holder while another service has it; 503 while the coordinator does not answer."""
        shared = self.service.shared
        if shared is None:
            return None
        try:
            return await shared.coordinator.take_lease(
                campaign_id, f"pigeon serve {shared.worker}", SHARED_LEASE_TTL
            )
        except CampaignBusy as exc:
            raise CampaignError(409, self.public(str(exc))) from None
        except CoordinatorUnavailable as exc:
            raise CampaignError(
                503,
                f"campaign {campaign_id!r} not started: the shared coordinator does not answer ({exc}); "
                "try again",
                "Coordinator unavailable",
            ) from None

    def _keep_shared(self, run: CampaignRun, grant: LeaseGrant | None) -> None:
        """Renew ``grant`` until the run ends; a lease lost meanwhile (another may hold it now)
        stops the blast: it drains what is in flight and stays resumable."""
        if grant is None or self.service.shared is None:
            return
        run.shared_lease = grant

        def lost(why: str) -> None:
            log.warning(
                "campaign's shared lease lost: the blast stops",
                extra={"event": "campaign.lease_lost", "campaign": run.id, "error": why},
            )
            if run.finished is None:
                run.error = f"its lease in the shared coordinator was lost ({why}): stopped"
                run.control.cancel()
                run.tell("stop")

        keeper = LeaseKeeper(self.service.shared.coordinator, grant, on_lost=lost)

        async def keep() -> None:
            with run.keeping:
                await keeper.run()

        self.tg.start_soon(keep)

    async def _release_shared(self, run: CampaignRun | None, grant: LeaseGrant | None = None) -> None:
        """Give the run's (or ``grant``'s) shared lease back, at once (not after its ttl)."""
        if run is not None:
            grant, run.shared_lease = run.shared_lease, None
            run.keeping.cancel()
        shared = self.service.shared
        if grant is None or shared is None:
            return
        with anyio.move_on_after(5, shield=True):
            try:
                await shared.coordinator.release_lease(grant)
            except Exception as exc:  # it expires after its ttl anyway
                log.warning(
                    "shared lease not released: it expires after %g s",
                    grant.ttl,
                    extra={
                        "event": "campaign.lease_unreleased",
                        "campaign": grant.campaign,
                        "error": str(exc),
                    },
                )

    async def test(self, file: str, key: str) -> TestRecord:
        """The test send of the campaign in ``file`` to its seed numbers (nothing of the campaign
        starts); 422 when it cannot be made."""
        path = self.resolve(file)
        plan = await self._prepare(path)
        try:
            return await send_test(plan, by=key, runs_dir=self.runs_dir)
        except EngineError as exc:
            raise CampaignError(422, self.public(str(exc))) from None

    async def approve(self, campaign_id: str, key: str) -> CampaignRun:
        """A second key approves a campaign awaiting approval: it starts (or is scheduled) now.
        403 for the key that submitted it; 409 when it is not awaiting approval, or its content
        changed since it was submitted."""
        run = self.get(campaign_id)
        if run.state != "awaiting_approval" or run.finished is not None:
            raise CampaignError(409, f"campaign {campaign_id!r} is {run.view().state}: nothing to approve")
        if key == run.submitted_by:
            raise CampaignError(
                403,
                f"the API key {key!r} submitted campaign {campaign_id!r}: another key with the `approve` "
                "scope must approve it",
            )
        plan = await self._prepare(run.path)
        content = content_hash(plan.campaign.config)
        if content != run.content:
            raise CampaignError(
                409,
                f"campaign {campaign_id!r} changed since it was submitted (template, variants, segment "
                "or link): cancel it and post it again, so that what is approved is what is sent",
            )
        await self._check(plan)
        approval = Approval(
            campaign=run.id, content=content, at=time.time(), by=key, submitted_by=run.submitted_by
        )
        with Gates(self.service.engine.store_path) as gates:
            gates.approve(approval)
        started = await self._launch(
            plan, run.file, run.path, again=run.again, callback=run.callback, send_at=run.send_at
        )
        started.submitted_by, started.approved_by = run.submitted_by, key
        self._keep_approval(run, waiting=False)  # started (or scheduled: its schedule is kept)
        run.commands.close()  # the waiting run's place is the started one's now; no worker reads it
        run._commands.close()
        log.info(
            "campaign approved",
            extra={"event": "campaign.approved", "campaign": run.id, "key": key, "by": run.submitted_by},
        )
        return started

    async def _launch(
        self,
        plan: Plan,
        file: str,
        path: Path,
        *,
        again: bool,
        callback: tuple[str, bool, str] | None,
        send_at: float | None,
    ) -> CampaignRun:
        """Open the campaign's ledger and start it, or schedule it (``send_at`` in the future)."""
        now = time.time()
        if send_at is not None and send_at <= now + SCHEDULE_LEAD:
            send_at = None if send_at <= now else send_at
        later = send_at is not None and send_at > now + SCHEDULE_LEAD
        # a scheduled one takes the shared lease when it starts, as the store's
        grant = None if later else await self._take_shared(plan.campaign.id)
        try:
            ledger = await anyio.to_thread.run_sync(
                lambda: _open_ledger(plan, force=False, again=again, notify=None, owner="pigeon serve")
            )
        except (GateClosed, LedgerError) as exc:
            await self._release_shared(None, grant)
            raise CampaignError(409, self.public(str(exc))) from None
        except BaseException:
            await self._release_shared(None, grant)
            raise
        self._set_callback(plan.campaign.id, callback, again=again)
        if send_at is not None and send_at > now + SCHEDULE_LEAD:
            # Recorded now (GET /v1/campaigns lists it); the lease is taken again when it starts.
            if ledger.lease is not None:
                ledger.lease.release()
            ledger.ledger.close()
            run = CampaignRun(plan, file, path)
            run.state, run.send_at = "scheduled", send_at
            self.runs[run.id] = run
            self._keep_schedule(run.id, file, send_at)
            self.tg.start_soon(self._scheduled, run)
            log.info(
                "campaign scheduled",
                extra={"event": "campaign.scheduled", "campaign": run.id, "file": file, "send_at": send_at},
            )
            return run
        # The worker resumes the run just opened (or restarted with ``again``) and adopts its lease.
        lease = ledger.lease.hand_off() if ledger.lease is not None else ""
        ledger.ledger.close()
        run = CampaignRun(plan, file, path)
        run.lease = lease
        self._keep_shared(run, grant)
        if send_at is not None:  # within the lead: its worker starts paused, resumed at send_at
            run.send_at, run.paused_start = send_at, True
            self.tg.start_soon(self._resume_at, run)
        self.runs[run.id] = run
        try:  # a free slot: running from this answer on; else queued (first started, first run)
            self.slots.acquire_nowait()
            run.state = "running"
        except anyio.WouldBlock:
            pass
        self.tg.start_soon(self._run, run)
        log.info("campaign started", extra={"event": "campaign.started", "campaign": run.id, "file": file})
        return run

    def _set_callback(self, campaign: str, callback: tuple[str, bool, str] | None, *, again: bool) -> None:
        """Record (or, started afresh without one, forget) the campaign's callback URL, before its
        worker starts: the worker's sink reads it when the run opens."""
        db = self.service.ledger.db if self.service.ledger is not None else None
        if db is None or (callback is None and not again):
            return
        with transaction(db):
            if callback is None:
                db.execute("DELETE FROM campaign_callbacks WHERE campaign = ?", (campaign,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO campaign_callbacks VALUES (?, ?, ?, ?)",
                    (campaign, callback[0], int(callback[1]), callback[2]),
                )

    async def _scheduled(self, run: CampaignRun) -> None:
        """Wait until :data:`SCHEDULE_LEAD` seconds before ``send_at``; then take the campaign's
        lease and start its worker paused, and resume it at ``send_at`` (so sending begins on
        time, not a process start later). A cancel ends the wait."""
        assert run.send_at is not None
        with anyio.move_on_after(max(0.0, run.send_at - SCHEDULE_LEAD - time.time())):
            await run.wake.wait()
        if run.control.state is RunState.CANCELLED:
            if run.cancelled:  # through the API: for good (a shutdown keeps it for the next start)
                self._keep_schedule(run.id, "", None)
            self._end_queued(run)
            return
        self._keep_schedule(run.id, "", None)
        grant: LeaseGrant | None = None
        try:
            grant = await self._take_shared(run.id)
            ledger = await anyio.to_thread.run_sync(
                lambda: _open_ledger(run.plan, force=False, again=False, notify=None, owner="pigeon serve")
            )
        except (
            Exception
        ) as exc:  # the file changed, another process holds it…: the run fails, the service stays
            await self._release_shared(None, grant)
            run.state = "failed"
            run.error = (
                self.public(str(exc)) if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"
            )
            run.finished = time.monotonic()
            run.commands.close()
            log.warning(
                "campaign failed", extra={"event": "campaign.failed", "campaign": run.id, "error": run.error}
            )
            return
        run.lease = ledger.lease.hand_off() if ledger.lease is not None else ""
        ledger.ledger.close()
        self._keep_shared(run, grant)
        run.paused_start = True
        run.state = "queued"
        try:
            self.slots.acquire_nowait()
            run.state = "running"
            run.started, run.started_at = time.monotonic(), time.time()
        except anyio.WouldBlock:
            pass
        self.tg.start_soon(self._resume_at, run)
        await self._run(run)

    async def _resume_at(self, run: CampaignRun) -> None:
        """Tell a run whose worker started paused to go at ``send_at`` (unless paused meanwhile)."""
        assert run.send_at is not None
        await anyio.sleep(max(0.0, run.send_at - time.time()))
        if run.finished is None and run.control.state is RunState.RUNNING:
            run.tell("resume")

    def _keep_schedule(self, campaign_id: str, file: str, send_at: float | None) -> None:
        """Record (``send_at``) or forget (None) a campaign's schedule in the store."""
        ledger = self.service.ledger
        if ledger is None:
            return
        with transaction(ledger.db):
            ledger.db.execute(SCHEDULES)
            if send_at is None:
                ledger.db.execute("DELETE FROM service_schedules WHERE campaign = ?", (campaign_id,))
            else:
                ledger.db.execute(
                    "INSERT OR REPLACE INTO service_schedules VALUES (?, ?, ?)", (campaign_id, file, send_at)
                )

    async def restore_schedules(self) -> None:
        """Schedule again what an earlier run of the service was holding (a past ``send_at``
        starts at once: the campaign's own send window still applies). One that can no longer
        start (its file gone or broken) is logged and forgotten."""
        ledger = self.service.ledger
        if ledger is None:
            return
        with transaction(ledger.db):
            ledger.db.execute(SCHEDULES)
        rows = ledger.db.execute("SELECT campaign, file, send_at FROM service_schedules").fetchall()
        for campaign_id, file, send_at in rows:
            try:
                await self.start(file, send_at=send_at)
            except CampaignError as exc:
                log.warning(
                    "scheduled campaign not restored: %s",
                    exc,
                    extra={"event": "campaign.schedule_lost", "campaign": campaign_id},
                )
                self._keep_schedule(campaign_id, "", None)
            else:
                if send_at <= time.time() + SCHEDULE_LEAD:
                    self._keep_schedule(campaign_id, "", None)
                log.info(
                    "campaign schedule restored",
                    extra={
                        "event": "campaign.schedule_restored",
                        "campaign": campaign_id,
                        "send_at": send_at,
                    },
                )

    def _keep_approval(self, run: CampaignRun, *, waiting: bool) -> None:
        """Record (``waiting``) or forget a campaign awaiting approval in the store."""
        ledger = self.service.ledger
        if ledger is None:
            return
        if not waiting:
            self._forget_approval(run.id)
            return
        with transaction(ledger.db):
            ledger.db.execute(APPROVALS)
            ledger.db.execute(
                "INSERT OR REPLACE INTO service_approvals VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.id,
                    run.file,
                    run.content,
                    run.submitted_by,
                    run.started_at,
                    run.send_at,
                    int(run.again),
                    json.dumps(list(run.callback)) if run.callback is not None else None,
                ),
            )

    async def restore_approvals(self) -> None:
        """Hold again, ``awaiting_approval``, what an earlier run of the service was holding: with
        the content hash, submitting key, ``send_at``, ``again`` and callback it was posted with
        (so an approval is still of what was submitted, and never by the submitting key). One
        whose file can no longer be read is logged and forgotten; one already started (a
        restored schedule) is forgotten; one posted again meanwhile is that new submission."""
        ledger = self.service.ledger
        if ledger is None:
            return
        with transaction(ledger.db):
            ledger.db.execute(APPROVALS)
        rows = ledger.db.execute(
            "SELECT campaign, file, content, submitted_by, submitted_at, send_at, again, callback "
            "FROM service_approvals ORDER BY submitted_at"
        ).fetchall()
        for campaign_id, file, content, submitted_by, submitted_at, send_at, again, callback in rows:
            held = self.runs.get(campaign_id)
            if held is not None and held.finished is None:
                if held.state != "awaiting_approval":  # started meanwhile: nothing awaits approval
                    self._forget_approval(campaign_id)
                continue  # (posted again as the service started: that submission's row is kept)
            try:
                path = self.resolve(file)
                plan = await self._prepare(path)
                if plan.campaign.id != campaign_id:
                    raise CampaignError(409, f"file: {file!r} is campaign {plan.campaign.id!r} now")
            except CampaignError as exc:
                log.warning(
                    "campaign awaiting approval not restored: %s",
                    exc,
                    extra={"event": "campaign.approval_lost", "campaign": campaign_id},
                )
                self._forget_approval(campaign_id)
                continue
            run = CampaignRun(plan, file, path)
            run.state, run.send_at, run.again = "awaiting_approval", send_at, bool(again)
            run.submitted_by, run.content, run.started_at = submitted_by, content, submitted_at
            if callback is not None:
                url, unmasked, key = json.loads(callback)
                run.callback = (str(url), bool(unmasked), str(key))
            self.runs[run.id] = run
            log.info(
                "campaign awaiting approval restored",
                extra={"event": "campaign.approval_restored", "campaign": run.id, "key": submitted_by},
            )

    def _forget_approval(self, campaign_id: str) -> None:
        """Forget a campaign's submission awaiting approval (approved, cancelled, or lost)."""
        ledger = self.service.ledger
        if ledger is not None:
            with transaction(ledger.db):
                ledger.db.execute(APPROVALS)
                ledger.db.execute("DELETE FROM service_approvals WHERE campaign = ?", (campaign_id,))

    async def restore(self) -> None:
        """What an earlier run of the service was holding: its schedules, then the campaigns
        awaiting approval (a campaign both — approved as the service stopped — is scheduled)."""
        await self.restore_schedules()
        await self.restore_approvals()

    def command(self, run: CampaignRun, run_dir: Path) -> list[str]:
        """The worker's command line."""
        return [
            sys.executable,
            "-m",
            "engine.run.blast_worker",
            "--engine",
            str(Path(self.service.engine.file).resolve()),
            "--campaign",
            str(run.path),
            "--run-dir",
            str(run_dir),
            "--blasts",
            str(self.service.service.concurrent_blasts),
            *(["--lease", run.lease] if run.lease else []),
            *(["--paused"] if run.paused_start and time.time() < (run.send_at or 0) else []),
        ]

    async def _run(self, run: CampaignRun) -> None:
        if run.state == "queued":  # until a running blast ends (concurrent_blasts are running)
            await self.slots.acquire()
        try:
            if run.control.state is RunState.CANCELLED:  # while it waited (or the service stops)
                self._end_queued(run)
                return
            if run.state == "queued":
                run.state = "running"
                run.started, run.started_at = time.monotonic(), time.time()
            await self._work(run)
        finally:
            self.slots.release()

    def _end_queued(self, run: CampaignRun) -> None:
        """A queued run cancelled before its worker started: nothing of it was sent."""
        if run.finished is not None:
            return
        recorded = run.state != "awaiting_approval"  # (nothing of it is in the ledger until approved)
        run.state = "cancelled"
        if run.cancelled and recorded and self.service.ledger is not None:  # through the API: for good
            self.service.ledger.set_status(run.id, CampaignStatus.CANCELLED)
        if run.cancelled and not recorded:  # through the API: the submission is withdrawn for good
            self._keep_approval(run, waiting=False)
        run.finished = time.monotonic()
        run.commands.close()
        run._commands.close()  # no worker will read them
        if run.shared_lease is not None:
            self.tg.start_soon(self._release_shared, run)
        log.info(
            "campaign ended",
            extra={"event": "campaign.ended", "campaign": run.id, "state": "cancelled", "states": {}},
        )

    async def _work(self, run: CampaignRun) -> None:
        try:
            run_dir = new_run_dir(run.plan, self.runs_dir)
            async with await anyio.open_process(
                self.command(run, run_dir), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None
            ) as proc:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._forward, run, proc)
                    failed = await self._follow(run, proc)
                    tg.cancel_scope.cancel()
                code = await proc.wait()
            last = run_dir / METRICS_FILE
            if last.is_file():
                self.service.merged_metrics.retire(last.read_text(encoding="utf-8"))
            if failed is not None:
                raise CampaignFailed(failed)
            if code != 0 or not run.counts.done:
                raise CampaignFailed(f"the campaign's worker process ended with exit code {code}")
            if run.counts.halted or run.counts.verdict:
                run.state = "halted" if run.counts.halted else "failed"
                run.error = run.counts.message
            else:
                run.state = "cancelled" if run.counts.stopped else "finished"
        except Exception as exc:  # a campaign's failure must never take the service down
            run.state = "failed"
            run.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, EngineError) else str(exc)
            log.warning(
                "campaign failed", extra={"event": "campaign.failed", "campaign": run.id, "error": run.error}
            )
        finally:
            if run.cancelled and self.service.ledger is not None:
                # for good, once the worker is done with the ledger: `pigeon resume` will not continue it
                self.service.ledger.set_status(run.id, CampaignStatus.CANCELLED)
            run.finished = time.monotonic()
            run.metrics_text = ""
            run.commands.close()
            await self._release_shared(run)
        log.info(
            "campaign ended",
            extra={
                "event": "campaign.ended",
                "campaign": run.id,
                "state": run.state,
                "states": dict(run.counts.states),
            },
        )

    async def _forward(self, run: CampaignRun, proc: Process) -> None:
        """The run's commands to the worker's stdin; closing it tells the worker to stop."""
        assert proc.stdin is not None
        async with proc.stdin, run._commands:
            async for line in run._commands:
                try:
                    await proc.stdin.send(line)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return

    async def _follow(self, run: CampaignRun, proc: Process) -> str | None:
        """Read the worker's lines until it ends; its error when it says it failed."""
        assert proc.stdout is not None
        lines = BufferedByteReceiveStream(proc.stdout)
        while True:
            try:
                line = await lines.receive_until(b"\n", 1 << 24)
            except (anyio.EndOfStream, anyio.IncompleteRead):
                return None
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.get("event")
            if kind == "progress":
                run.counts = msgspec.convert(event, Progress)
            elif kind == "metrics":
                run.metrics_text = str(event.get("text", ""))
            elif kind == "started":
                log.info(
                    "campaign worker started",
                    extra={"event": "campaign.worker", "campaign": run.id, "pid": event.get("pid")},
                )
            elif kind == "failed":
                return str(event.get("error", "the campaign's worker failed"))

    def get(self, campaign_id: str) -> CampaignRun:
        """The run of ``campaign_id``; 404 when the service never started it."""
        run = self.runs.get(campaign_id)
        if run is None:
            raise CampaignError(404, f"no campaign {campaign_id[:64]!r} was started by this service")
        return run

    def control(self, campaign_id: str, action: str) -> CampaignRun:
        """``pause``, ``resume`` or ``cancel`` a running campaign; 409 when it is over."""
        run = self.get(campaign_id)
        if run.finished is not None:
            raise CampaignError(409, f"campaign {campaign_id!r} is already {run.state}: nothing to {action}")
        if action == "pause":
            if run.control.state is RunState.CANCELLED:
                raise CampaignError(409, f"campaign {campaign_id!r} is cancelled: it cannot be paused")
            run.control.pause()
            run.tell("pause")
        elif action == "resume":
            if run.control.state is RunState.CANCELLED:
                raise CampaignError(409, f"campaign {campaign_id!r} is cancelled: it cannot be resumed")
            run.control.resume()
            run.tell("resume")
        else:
            run.control.cancel()
            run.cancelled = True
            if run.state in ("queued", "scheduled", "awaiting_approval"):
                self._end_queued(run)
                run.wake.set()
            else:
                run.tell("stop")
        log.info("campaign %s", action, extra={"event": f"campaign.{action}", "campaign": campaign_id})
        return run

    def listing(
        self, *, state: str | None, kind: str | None, after: tuple[float, str] | None, limit: int
    ) -> tuple[list[CampaignSummary], tuple[float, str] | None]:
        """Campaigns in the ledger (not the API's own streams, nor archived runs) and those awaiting
        approval (not in the ledger until approved), newest first, from the one after ``after``
        (its ``created_at`` and id); and where to continue, if more."""
        ledger = self.service.ledger
        records = ledger.campaigns() if ledger is not None else []
        rows = [
            (r.created_at, r.id, r.kind, r.updated_at, r.runs, r.status.value)
            for r in records
            if not r.id.startswith("api-") and "~" not in r.id
        ]
        known = {r.id for r in records}
        # awaiting approval and never run: not in the ledger yet; listed from when it was posted
        rows += [
            (r.started_at, r.id, r.plan.campaign.config.kind, r.started_at, 0, r.state)
            for r in self.runs.values()
            if r.id not in known and r.state == "awaiting_approval" and r.finished is None
        ]
        rows.sort(key=lambda r: (-r[0], r[1]))
        out: list[CampaignSummary] = []
        for created_at, cid, ckind, updated_at, runs, status in rows:
            if after is not None and (-created_at, cid) <= (-after[0], after[1]):
                continue
            run = self.runs.get(cid)
            now = run.view().state if run is not None else status
            if (state is not None and now != state) or (kind is not None and ckind != kind):
                continue
            if len(out) == limit:
                last = out[-1]
                return out, (last.created_at, last.id)
            out.append(
                CampaignSummary(
                    id=cid,
                    kind=ckind,
                    state=now,
                    created_at=created_at,
                    updated_at=updated_at,
                    runs=runs,
                    file=run.file if run is not None else "",
                )
            )
        return out, None

    def cancel_all(self) -> None:
        """Stop every running campaign (shutdown): they drain what is in flight."""
        for run in self.runs.values():
            if run.finished is None:
                run.control.cancel()
                run.tell("stop")
                run.wake.set()  # a scheduled one stops waiting (its campaign stays resumable)
                if run.state == "awaiting_approval":  # no worker reads its commands; it is kept
                    run.commands.close()  # in the store for the next start (restore_approvals)
                    run._commands.close()

    def add_optouts(self, numbers: list[str]) -> None:
        """Numbers that just opted out: into the opt-out set of every running blast."""
        for run in self.runs.values():
            if run.finished is None and run.plan.optouts is not None:
                run.tell("optouts " + json.dumps(numbers))

    def metrics_texts(self) -> list[str]:
        """The last exposition of every running worker."""
        return [r.metrics_text for r in self.runs.values() if r.finished is None and r.metrics_text]

    def status(self) -> dict[str, Any]:
        """Every campaign's state (for logs)."""
        return {cid: r.view().state for cid, r in self.runs.items()}
