"""Blasts the service runs: start from a campaign file, pause, resume, cancel, and progress."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from anyio.abc import TaskGroup

from engine.control import RunControl, RunState
from engine.errors import EngineError
from engine.ledger import CampaignLedger, CampaignStatus, LedgerError
from engine.report import RunRecorder
from engine.runtime import Plan, _open_ledger, _send, new_run_dir, prepare

if TYPE_CHECKING:
    from engine.service import Service

__all__ = ["CampaignRun", "CampaignView", "Campaigns"]

log = logging.getLogger("pigeon.campaigns")


class CampaignView(msgspec.Struct, kw_only=True):
    """``GET /v1/campaigns/{id}``: where a blast stands."""

    id: str
    state: str
    """``running``, ``paused``, ``cancelled`` (drains, then stays), ``finished`` or ``failed``."""
    kind: str = ""
    file: str = ""
    started_at: float = 0.0
    elapsed_seconds: float = 0.0
    rows: int = 0
    """Rows read and accounted for so far."""
    fraction_read: float | None = None
    eta_seconds: float | None = None
    states: dict[str, int] = {}
    reasons: dict[str, dict[str, int]] = {}
    rate_per_carrier: dict[str, float] = {}
    """Messages accepted per second since the start, per carrier."""
    error: str = ""
    done: bool = False
    """The run is over: nothing of it is in flight any more."""


class CampaignRun:
    """One blast started by the service."""

    def __init__(self, plan: Plan, file: str, ledger: CampaignLedger | None = None) -> None:
        self.plan = plan
        self.ledger = ledger
        """The campaign's ledger for this run (every recipient's state, resumable)."""
        self.id = plan.campaign.id
        self.file = file
        self.control = RunControl()
        self.recorder = RunRecorder(plan.prices)
        self.started = time.monotonic()
        self.started_at = time.time()
        self.fraction: float | None = 0.0
        self.finished: float | None = None
        self.state = "running"
        self.error = ""

    def progress(self, recorder: RunRecorder, elapsed: float, fraction: float | None, done: bool) -> None:
        """The runtime's progress hook: remember how much of the segment was read."""
        self.fraction = fraction

    def view(self) -> CampaignView:
        """The campaign's progress now."""
        end = self.finished or time.monotonic()
        elapsed = end - self.started
        r = self.recorder
        state = self.state
        if state == "running":
            state = self.control.state.value
        eta = None
        f = self.fraction
        if state in ("running", "paused") and f is not None and 0 < f < 1:
            eta = round(elapsed * (1 - f) / f, 1)
        elif self.finished is not None:
            eta = 0.0
        rates = {c: round(s.messages / elapsed, 1) if elapsed > 0 else 0.0 for c, s in r.carriers.items()}
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
            rate_per_carrier=rates,
            error=self.error,
            done=self.finished is not None,
        )


class CampaignError(EngineError):
    """A campaign that cannot be started or controlled; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Campaigns:
    """The blasts of one service, by campaign id."""

    def __init__(self, service: Service, tg: TaskGroup, run_dir: Path) -> None:
        self.service = service
        self.tg = tg
        self.runs_dir = run_dir / "campaigns"
        self.runs: dict[str, CampaignRun] = {}
        self.root = service._path(service.service.campaigns_dir).resolve()

    def resolve(self, file: str) -> Path:
        """The campaign file ``file`` under ``service.campaigns_dir``; 4xx when outside or missing."""
        if not file or len(file) > 1024 or "\x00" in file:
            raise CampaignError(422, "file: give a campaign file path relative to service.campaigns_dir")
        path = (self.root / file).resolve()
        if not path.is_relative_to(self.root):
            raise CampaignError(
                403, f"file: {file!r} is outside the campaigns directory {self.root} (service.campaigns_dir)"
            )
        if not path.is_file():
            raise CampaignError(404, f"file: no campaign file {file!r} in {self.root}")
        return path

    async def start(self, file: str, *, again: bool = False) -> CampaignRun:
        """Check and start the campaign in ``file`` (preflight and ledger as ``pigeon send``: an
        unfinished campaign resumes; a finished one starts afresh only with ``again``)."""
        if self.service.draining:
            raise CampaignError(503, "the service is draining: no new campaigns")
        path = self.resolve(file)
        plan = await anyio.to_thread.run_sync(
            lambda: prepare(path, self.service.engine.file, host=self.service.host, strict=True)
        )
        running = self.runs.get(plan.campaign.id)
        if running is not None and running.finished is None:
            raise CampaignError(409, f"campaign {plan.campaign.id!r} is already {running.view().state}")
        try:
            ledger = await anyio.to_thread.run_sync(
                lambda: _open_ledger(plan, force=False, again=again, notify=None)
            )
        except LedgerError as exc:
            raise CampaignError(409, str(exc)) from None
        run = CampaignRun(plan, file, ledger)
        run.control.yield_to = lambda: self.service.urgent_pending > 0
        self.runs[run.id] = run
        self.tg.start_soon(self._run, run)
        log.info("campaign started", extra={"event": "campaign.started", "campaign": run.id, "file": file})
        return run

    async def _run(self, run: CampaignRun) -> None:
        try:
            run_dir = new_run_dir(run.plan, self.runs_dir)
            summary = await _send(
                run.plan,
                run_dir,
                run.progress,
                run.plan.clock,
                None,
                run.control.stop,
                self.service.metrics,
                run.ledger,
                control=run.control,
                shared=self.service.resources,
                recorder=run.recorder,
            )
            (run_dir / "summary.json").write_bytes(msgspec.json.format(msgspec.json.encode(summary)))
            run.state = "cancelled" if summary.stopped else "finished"
        except Exception as exc:  # a campaign's failure must never take the service down
            run.state = "failed"
            run.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, EngineError) else str(exc)
            log.warning(
                "campaign failed", extra={"event": "campaign.failed", "campaign": run.id, "error": run.error}
            )
        finally:
            if run.ledger is not None:
                run.ledger.ledger.close()
            run.finished = time.monotonic()
        log.info(
            "campaign ended",
            extra={
                "event": "campaign.ended",
                "campaign": run.id,
                "state": run.state,
                "states": dict(run.recorder.states),
            },
        )

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
        elif action == "resume":
            if run.control.state is RunState.CANCELLED:
                raise CampaignError(409, f"campaign {campaign_id!r} is cancelled: it cannot be resumed")
            run.control.resume()
        else:
            run.control.cancel()
            if run.ledger is not None:  # for good: `pigeon resume` will not continue it either
                run.ledger.ledger.set_status(run.id, CampaignStatus.CANCELLED)
        log.info("campaign %s", action, extra={"event": f"campaign.{action}", "campaign": campaign_id})
        return run

    def cancel_all(self) -> None:
        """Stop every running campaign (shutdown): they drain what is in flight."""
        for run in self.runs.values():
            if run.finished is None:
                run.control.cancel()

    def add_optouts(self, numbers: list[str]) -> None:
        """Numbers that just opted out: into the opt-out set of every running blast."""
        for run in self.runs.values():
            if run.finished is None and run.plan.optouts is not None:
                run.plan.optouts.add(numbers)

    def status(self) -> dict[str, Any]:
        """Every campaign's state (for logs)."""
        return {cid: r.view().state for cid, r in self.runs.items()}
