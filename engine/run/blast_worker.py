"""Run one blast of ``pigeon serve`` in a process of its own, controlled over its stdin and stdout.

A blast at full speed keeps an event loop CPU-bound (stages, the ledger, the gateway client): in
the service's own loop every API request, priority-lane request and ``/metrics`` render would
wait behind its ready tasks. The service therefore starts each campaign as
``python -m engine.run.blast_worker`` (:class:`engine.service.campaigns.Campaigns`), on the same code path as
``pigeon send`` (``_send`` with the campaign ledger: every recipient recorded, resumable), with
the marketing part of every carrier's and gateway's rate (``rate × (1 − transactional_share)``,
:func:`engine.sending.priority.split_budgets`) while the service keeps the reserved part for its priority
lane. The operating system then shares the cores between the two loops (:data:`NICE`).

Protocol (one line each, UTF-8):

* stdin, from the service: ``pause``, ``resume``, ``stop`` (no more rows; drain what is in flight;
  the ledger stays resumable), ``optouts ["138…", …]`` (numbers that just opted out, into the
  blast's opt-out set). End of input means ``stop``; so do SIGTERM and SIGINT.
* stdout, to the service: JSON objects: ``{"event": "started", "pid": …}``, then
  ``{"event": "progress", …}`` at most every :data:`PROGRESS_EVERY` seconds and a last one with
  ``"done": true`` (:class:`Progress`), ``{"event": "metrics", "text": …}`` (its exposition, once a
  second), or ``{"event": "failed", "error": …}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import anyio
import msgspec

from engine.coordination.select import EMBEDDED
from engine.core.config import convert_section
from engine.core.errors import EngineError
from engine.observability.jsonlog import setup_logging
from engine.observability.metrics import Metrics
from engine.observability.report import RunRecorder
from engine.run.blast import _send, open_gate, upload_store_optouts
from engine.run.control import RunControl, SendResources
from engine.run.plan import Plan, _open_ledger, prepare
from engine.sending.gateway import Gateway, GatewayContext
from engine.sending.priority import split_budgets
from engine.sending.retry import Breaker
from engine.state.ledger.run import CampaignLedger

__all__ = ["METRICS_FILE", "NICE", "PROGRESS_EVERY", "Progress", "main"]

PROGRESS_EVERY = 0.25
"""Seconds between two progress lines."""
METRICS_EVERY = 4
"""Progress lines between two copies of the worker's exposition sent to the service (one a second:
a scrape of the service then never waits for the worker)."""
METRICS_FILE = "metrics.prom"
"""The worker's last exposition, in its run directory."""
log = logging.getLogger("pigeon.worker")

NICE = 19
"""How much lower the worker's CPU priority is than the service's (``os.nice``; ``--nice``).

The lowest: on a busy machine the API's requests and the priority lane run first, and the blast
takes what is left. Measured on 2 cores (``loadtests/service_load.py``, 1M-row blast, 200
transactional posts/s, final code of 2026-12-01, back to back): API accept → gateway request p99
19.9 / 22.3 ms at nice 0, 14.3 / 17.2 ms at nice 10, 12.2 / 17.6 ms at nice 19; the blast under
load 0.65 / 0.70, 0.62 / 0.57 and 0.69 / 0.62 of the blast alone. (Before the service's store
connection waited for the write lock in fine steps, a niced worker made things worse: the
service slept in SQLite's 1, 2, 5 … ms steps behind a descheduled worker's lock.)"""


class Progress(msgspec.Struct, kw_only=True):
    """Where the blast stands: the counts the service shows in ``GET /v1/campaigns/{id}``."""

    event: str = "progress"
    rows: int = 0
    fraction: float | None = 0.0
    states: dict[str, int] = {}
    reasons: dict[str, dict[str, int]] = {}
    carriers: dict[str, int] = {}
    """Carrier → messages accepted by a gateway."""
    done: bool = False
    stopped: bool = False
    halted: str = ""
    """A fault stopped the blast (``RunSummary.halted``): everyone not sent is pending."""
    verdict: str = ""
    message: str = ""


def snapshot(recorder: RunRecorder, fraction: float | None, *, done: bool = False) -> Progress:
    """The recorder's counts now."""
    return Progress(
        rows=recorder.rows,
        fraction=fraction,
        states=dict(recorder.states),
        reasons={k: dict(v) for k, v in recorder.reasons.items()},
        carriers={c: s.messages for c, s in recorder.carriers.items()},
        done=done,
    )


class ToService:
    """The worker's stdout, to the service. When the service is gone (killed: the pipe is broken)
    the worker goes on by itself: every line after that is dropped (stdout is pointed at
    ``/dev/null``, so nothing fails at exit either), it says so once in its JSON log, and
    :attr:`on_gone` is called (``stop``: it stops reading and drains what is in flight)."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.gone = False
        self.on_gone: list[Callable[[], None]] = []

    def emit(self, obj: Any) -> None:
        """Write one JSON line (nothing once the service is gone)."""
        if self.gone:
            return
        try:
            self.out.write(msgspec.json.encode(obj) + b"\n")
            self.out.flush()
        except (OSError, ValueError):  # BrokenPipeError; a closed stdout
            self._lost()

    def _lost(self) -> None:
        self.gone = True
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.out.fileno())
            os.close(devnull)
        log.warning(
            "the service is gone: the blast stops reading and drains what is in flight",
            extra={"event": "campaign.orphaned", "pid": os.getpid()},
        )
        for callback in self.on_gone:
            callback()


def _emit(out: ToService, obj: Any) -> None:
    out.emit(obj)


def open_resources(plan: Plan, run_dir: Path, blasts: int = 1) -> SendResources:
    """The blast's gateways and breakers, and its part of every rate: the marketing part divided
    among the ``blasts`` that may run at once."""
    cfg = plan.engine.config
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
    budgets = split_budgets(cfg, {n: cfg.gateways[n].carriers for n in gateways}, blasts=blasts)
    return SendResources(
        gateways=gateways,
        limiters=budgets.marketing,
        gateway_limiters=budgets.marketing_gateways,
        breakers={
            n: Breaker(cfg.gateways[n].breaker_threshold, cfg.gateways[n].breaker_cooldown) for n in gateways
        },
    )


async def _commands(plan: Plan, control: RunControl) -> None:
    """Apply the service's commands from stdin until it closes (then stop)."""
    fd = sys.stdin.fileno()
    os.set_blocking(fd, False)
    pending = b""
    try:
        while True:
            await anyio.wait_readable(fd)
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            if not data:
                return
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                word, _, arg = line.decode("utf-8", "replace").strip().partition(" ")
                if word == "pause":
                    control.pause()
                elif word == "resume":
                    control.resume()
                elif word == "stop":
                    control.cancel()
                elif word == "optouts" and plan.optouts is not None:
                    plan.optouts.add([str(n) for n in json.loads(arg)])
    finally:
        control.cancel()


async def _signals(control: RunControl) -> None:
    # SIGHUP too: a terminal that closes hangs up the service's process group, this worker with it
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for _ in signals:
            control.cancel()


def _notice(campaign: str) -> Callable[[str], None]:
    """The coordinator gate's notices (paused, resumed, slowed) into the JSON log."""

    def notice(text: str) -> None:
        log.warning(text, extra={"event": "coordinator.notice", "campaign": campaign})

    return notice


async def run_worker(
    plan: Plan,
    ledger: CampaignLedger | None,
    run_dir: Path,
    out: ToService,
    blasts: int = 1,
    paused: bool = False,
) -> Progress:
    """Send ``plan`` under the service's control; the last progress (``done``). ``paused``: ready
    but holding until the service says ``resume`` (a campaign scheduled with ``send_at``)."""
    metrics = Metrics()
    control = RunControl()
    if paused:
        control.pause()
    out.on_gone.append(control.cancel)
    recorder = RunRecorder(plan.prices)
    fraction: list[float | None] = [0.0]

    def progress(rec: RunRecorder, elapsed: float, f: float | None, final: bool) -> None:
        fraction[0] = f

    resources = open_resources(plan, run_dir, blasts)
    gate = None
    try:
        # a shared coordinator: claims, shared budgets, caps and opt-outs per request (None: embedded)
        gate = open_gate(plan, _notice(plan.campaign.id), metrics)
        if gate is not None:  # opt-outs the service's store got since its start (list imports): shared first
            await upload_store_optouts(plan, gate, None)  # (logged by the upload itself)
        # No HTTP server of its own: its series reach the service's /metrics (which needs an API key)
        # through stdout, so nothing of the blast is served without a key.
        _emit(out, {"event": "started", "pid": os.getpid()})
        async with anyio.create_task_group() as tg:
            tg.start_soon(_commands, plan, control)
            tg.start_soon(_signals, control)

            async def report() -> None:
                beat = 0
                while True:
                    await anyio.sleep(PROGRESS_EVERY)
                    _emit(out, snapshot(recorder, fraction[0]))
                    beat += 1
                    if beat % METRICS_EVERY == 0:
                        text = metrics.exposition()[0].decode()
                        _emit(out, {"event": "metrics", "text": text})

            tg.start_soon(report)
            summary = await _send(
                plan,
                run_dir,
                progress,
                plan.clock,
                None,
                control.stop,
                metrics,
                ledger=ledger,
                control=control,
                shared=resources,
                recorder=recorder,
                gate=gate,
            )
            tg.cancel_scope.cancel()
        # its last counts, for the service's /metrics once this process is gone
        (run_dir / METRICS_FILE).write_bytes(metrics.exposition()[0])
    finally:
        for gw in resources.gateways.values():
            with anyio.move_on_after(10, shield=True), contextlib.suppress(Exception):
                await gw.aclose()
        if gate is not None:
            with anyio.move_on_after(5, shield=True), contextlib.suppress(Exception):
                await gate.coordinator.aclose()
    (run_dir / "summary.json").write_bytes(msgspec.json.format(msgspec.json.encode(summary)))
    # All of it read when it ran to the end; a cancelled or halted run stopped somewhere the file's
    # position (read ahead of what was sent) does not tell: unknown, not 1.0 (`rows` says how far).
    last = snapshot(recorder, None if summary.stopped or summary.halted else 1.0, done=True)
    last.stopped = summary.stopped
    last.halted, last.verdict, last.message = summary.halted, summary.verdict, summary.message
    return last


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.run.blast_worker --engine E --campaign C --run-dir D``: 0 when the blast ended
    (finished or stopped), 1 when it failed (the reason on stdout)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--engine", required=True, type=Path)
    p.add_argument("--campaign", required=True, type=Path)
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument("--nice", type=int, default=NICE)
    p.add_argument("--blasts", type=int, default=1, help="blasts that may run at once (their budget share)")
    p.add_argument("--lease", default="", help="the token of the campaign's lease the service took for it")
    p.add_argument("--paused", action="store_true", help="start paused: send nothing before `resume`")
    args = p.parse_args(argv)
    out = ToService(sys.stdout.buffer)
    with contextlib.suppress(OSError):
        os.nice(args.nice)
    ledger: CampaignLedger | None = None
    try:
        plan = prepare(args.campaign, args.engine, strict=True)
        setup_logging(plan.engine.config.service.log_level)  # JSON lines, like the service's own
        _only_json_on_stderr()
        # The service opened (or restarted, with ``again``) the campaign's run: this resumes it.
        ledger = _open_ledger(
            plan, force=False, again=False, notify=None, owner="pigeon serve (blast worker)", adopt=args.lease
        )
        backend = plan.engine.config.backend
        if plan.engine.config.coordinator.plugin != EMBEDDED:
            backend = "asyncio"  # a shared coordinator's client is asyncio's (the service runs on it)
        opts: dict[str, Any] = {}
        if backend == "asyncio":
            with contextlib.suppress(ImportError):
                import uvloop  # noqa: F401

                opts = {"use_uvloop": True}
        last = anyio.run(
            run_worker,
            plan,
            ledger,
            args.run_dir,
            out,
            args.blasts,
            args.paused,
            backend=backend,
            backend_options=opts,
        )
    except Exception as exc:  # told to the service, which shows it in the campaign's view
        error = str(exc) if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, BaseExceptionGroup):
            error = "; ".join(f"{type(e).__name__}: {e}" for e in exc.exceptions)
        _emit(out, {"event": "failed", "error": error, "at": time.time()})
        return 1
    finally:
        if ledger is not None:
            ledger.close()  # the lease goes back with it
    _emit(out, last)
    return 0


def _only_json_on_stderr() -> None:
    """What Python itself would print on stderr (another library's log, a warning, an exception
    in a thread or a finalizer) goes through the JSON log too: the service's stderr, which this
    process shares, stays JSON lines only."""
    pigeon = logging.getLogger("pigeon")
    root = logging.getLogger()
    root.handlers[:] = list(pigeon.handlers)
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)

    def unraisable(u: Any) -> None:
        log.error(
            "ignored exception",
            exc_info=u.exc_value,
            extra={"event": "worker.unraisable", "where": repr(u.object)[:200]},
        )

    def in_thread(a: threading.ExceptHookArgs) -> None:
        log.error(
            "exception in a thread",
            exc_info=a.exc_value,
            extra={"event": "worker.thread_error", "in_thread": a.thread.name if a.thread else ""},
        )

    sys.unraisablehook = unraisable
    threading.excepthook = in_thread


if __name__ == "__main__":
    raise SystemExit(main())
