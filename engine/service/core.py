"""The service's lifetime and wiring: gateways, the API's lanes, records, webhooks and campaigns.

One :class:`Service` lives as long as ``pigeon serve``. It opens every configured gateway once for
the API's lanes; the blasts it starts run in worker processes (:mod:`engine.service.campaigns`,
:mod:`engine.run.blast_worker`) with the marketing part of every carrier's rate
(:mod:`engine.sending.priority`), and ``/metrics`` adds their series to the service's
(:mod:`engine.observability.worker_metrics`). Messages posted to the API go through the same stages as a blast
(normalize, caps, opt-outs for marketing, route, render, count_parts, quiet hours for marketing)
and into a lane per gateway and priority: the transactional (priority) lane has its own in-flight
window and the reserved part of each carrier's rate, so a running blast never holds it back by
more than a request already on the wire. Every API message is recorded in the ledger (campaign
``api-transactional`` or ``api-marketing``) and, for fast look-ups, in memory.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from engine.core.clock import Clock, SystemClock
from engine.core.config import EngineConfig, LoadedEngine
from engine.core.errors import ConfigError, EngineError
from engine.core.event_source import EventSourceContext
from engine.core.plugin_host import PluginHost
from engine.core.service_config import ServiceConfig, ServiceTemplate
from engine.observability.metric_names import CONTENT_TYPE
from engine.observability.metrics import Metrics
from engine.observability.worker_metrics import MergedMetrics
from engine.service.api_templates import ApiTemplates
from engine.service.apikeys import WATCH_EVERY, KeyRing, KeyUsage
from engine.service.callbacks import CallbackSender
from engine.service.campaigns import Campaigns
from engine.service.context import ServiceContext
from engine.service.flows import ServiceFlows, event_source_of, flows_of
from engine.service.gateways import ServiceGateways
from engine.service.inbound import Inbound
from engine.service.lanes import TEXT_TEMPLATE, ApiLanes
from engine.service.records import ApiRecords
from engine.service.shared import SharedState, open_shared
from engine.service.submissions import Submissions
from engine.state.ledger.store import Ledger
from engine.state.store.sqlite import SqliteStore

__all__ = ["Service", "open_service"]

CHECKPOINT_EVERY = 1.0
"""Seconds between two checkpoints of the store's WAL (see ``Service._checkpoints``)."""
USAGE_EVERY = 5
"""Checkpoints between two writes of the keys' last-used times."""

log = logging.getLogger("pigeon.service")


class Service:
    """The long-running engine behind the API: its parts, started and stopped together.

    ============  ==================================================================
    part          job
    ============  ==================================================================
    ``ctx``       config, clock, records, metrics, counters, store and ledger (shared)
    ``gateways``  every configured gateway, its breaker, each carrier's route
    ``lanes``     per priority: a ledger campaign, caps, stage runners, lanes
    ``messages``  ``POST /v1/messages`` (checks, stages, idempotency) and look-ups
    ``inbound``   receipts and replies: webhook parsers, the gateways' own connections
    ``campaigns`` blasts in worker processes (:mod:`engine.service.campaigns`)
    ``flows``     events in, flow steps fired from the timer store (:mod:`engine.service.flows`)
    ``keys``      the API keys
    ============  ==================================================================

    Create it with :func:`open_service`.
    """

    def __init__(self, engine: LoadedEngine, host: PluginHost | None = None, clock: Clock | None = None):
        self.ctx = ServiceContext(engine, clock or SystemClock(), Metrics())
        self.engine = engine
        self.host = host or PluginHost(disabled=engine.config.plugins.disabled)
        self.keys = KeyRing(self.ctx.path(self.service.keys_file))
        self.key_usage = KeyUsage()
        """When each key was last used, flushed to the store every :data:`USAGE_EVERY` seconds."""
        self.started_at = time.time()
        self.gateways = ServiceGateways(self.ctx)
        self.lanes = ApiLanes(self.ctx, self.gateways, ApiTemplates(self.ctx))
        self.messages = Submissions(self.ctx, self.lanes)
        self.inbound = Inbound(self.ctx)
        self.callbacks: CallbackSender | None = None
        """Posts the status-callback outbox (set when the service starts, if configured)."""
        self.flow_defs = flows_of(engine, self.messages.templates)
        """The flows (``service.flows.dir``), checked before anything starts."""
        self.event_source = event_source_of(engine, self.host)
        """The configured event source's plugin and options (``[service.flows.source]``), checked."""
        self.flows: ServiceFlows | None = None
        """Events in and the flow runner, once started."""
        self.campaigns: Campaigns | None = None
        """Set when the service starts (it needs the task group its workers are watched in)."""
        self.shared: SharedState | None = None
        """The engine's shared coordinator (``[coordinator]``), once started; None: ``embedded``."""
        self.merged_metrics = MergedMetrics(self.ctx.metrics.registry)
        """What ``/metrics`` serves: the process's series plus its blast workers'."""
        self._closing = anyio.Event()
        self._keys_error = ""

    # What the campaigns and the API read (CampaignHost)

    @property
    def config(self) -> EngineConfig:
        """The engine file's config."""
        return self.ctx.config

    @property
    def service(self) -> ServiceConfig:
        """Its ``[service]`` section."""
        return self.ctx.service

    @property
    def ledger(self) -> Ledger | None:
        """The loop's ledger connection, once started."""
        return self.ctx.ledger

    @property
    def store(self) -> SqliteStore | None:
        """The store (opt-outs, consent, send history), once started."""
        return self.ctx.store

    @property
    def records(self) -> ApiRecords:
        """Recent API messages, in memory."""
        return self.ctx.records

    @property
    def metrics(self) -> Metrics:
        """The process's metrics: the API's lanes count here (campaigns in their workers)."""
        return self.ctx.metrics

    @property
    def templates(self) -> dict[str, ServiceTemplate]:
        """The API's templates by id."""
        return self.messages.templates

    @property
    def draining(self) -> bool:
        """Stopping: no new messages or campaigns are taken."""
        return self.ctx.draining

    # -- lifetime ------------------------------------------------------------------------

    async def _start(self, tg: TaskGroup, run_dir: Path) -> None:
        ctx = self.ctx
        ctx.store = SqliteStore(self.engine.store_path)
        ctx.optouts = await anyio.to_thread.run_sync(ctx.store.load_optouts)
        # Its writes run on the event loop: it waits for a blast worker's write lock in steps of
        # 0.1–2 ms, not SQLite's 1, 2, 5, 10 … ms sleeps.
        ctx.ledger = Ledger(self.engine.store_path, spin_on_busy=True)
        self.messages.open()
        self.inbound.open()
        self.callbacks = self._callback_sender()
        if self.callbacks is not None:
            ctx.callbacks_on = True
            tg.start_soon(self.callbacks.run, self._closing)
        # The loop's commits never fold the WAL into the file (a checkpoint takes milliseconds while
        # a blast worker writes the same file): a thread does it every second instead.
        ctx.ledger.db.execute("PRAGMA wal_autocheckpoint=0")
        tg.start_soon(self._checkpoints)
        tg.start_soon(self.inbound.retry_early, self._closing)
        tg.start_soon(self._watch_keys)
        self.gateways.open(self.host, run_dir)
        self.inbound.register(self.host, self.gateways.gateways)
        receiving = self.gateways.receiving()
        if receiving:
            tg.start_soon(self.inbound.serve, receiving)
        self.shared = open_shared(ctx, self.host)
        if self.shared is not None:
            await self.shared.prepare()
            self.inbound.optout_listeners.append(self.shared.heard_here)
            tg.start_soon(self.shared.run, self._closing)
        shared = self.shared
        self.lanes.start(tg, shared.coordinator if shared else None, shared.worker if shared else "")
        self.flows = ServiceFlows(
            ctx, self.messages, self.flow_defs, (shared.coordinator, shared.worker) if shared else None
        )
        if self.flow_defs:
            tg.start_soon(self.flows.run, self._closing)
        if self.event_source is not None:
            reg, options = self.event_source
            source = reg.factory(options, EventSourceContext(reg.name))
            tg.start_soon(self.flows.consume, source, self._closing)
        ctx.metrics.prepare(
            routes=self.gateways.failover,
            in_flight={g: gw.in_flight for g, gw in ctx.config.gateways.items()},
            rates={
                c: cc.rate_per_second
                for c, cc in ctx.config.carriers.items()
                if c in self.gateways.failover and cc.rate_per_second
            },
            stages=[
                s.name for s in self.lanes.runner(self.lanes.streams["marketing"], TEXT_TEMPLATE)[1].stages
            ],
        )
        self.campaigns = Campaigns(self, tg, run_dir)
        self.inbound.optout_listeners.append(self.campaigns.add_optouts)
        if self.shared is not None:
            self.shared.listeners.append(self.campaigns.add_optouts)
        tg.start_soon(self.campaigns.restore)
        # What was set up lives as long as the service: out of the collector's way (a full
        # collection over it took ~45 ms of the loop under load; MessageViews are not tracked).
        gc.collect()
        gc.freeze()

    def _callback_sender(self) -> CallbackSender | None:
        """The status-callback sender, when ``service.callbacks.secret_env`` is set (its variable
        must be: a service that would send unsigned callbacks does not start)."""
        cfg = self.service.callbacks
        if not cfg.secret_env:
            return None
        secret = os.environ.get(cfg.secret_env, "")
        if not secret:
            raise ConfigError(
                self.engine.file,
                "service.callbacks.secret_env",
                f"the environment variable {cfg.secret_env} is not set (it holds the callbacks' HMAC secret)",
            )
        return CallbackSender(self.engine.store_path, cfg, secret.encode(), self.ctx.metrics)

    async def _checkpoints(self) -> None:
        """``PRAGMA wal_checkpoint(PASSIVE)`` every :data:`CHECKPOINT_EVERY` seconds, in a thread,
        until the service stops (passive: it never waits for, nor blocks, a writer)."""
        db = sqlite3.connect(
            self.ctx.engine.store_path, check_same_thread=False, isolation_level=None, timeout=5
        )
        beats = 0
        try:
            while not self._closing.is_set():
                with anyio.move_on_after(CHECKPOINT_EVERY):
                    await self._closing.wait()
                with contextlib.suppress(sqlite3.Error):
                    await anyio.to_thread.run_sync(db.execute, "PRAGMA wal_checkpoint(PASSIVE)")
                beats += 1
                if beats % USAGE_EVERY == 0 or self._closing.is_set():
                    with contextlib.suppress(sqlite3.Error):
                        await anyio.to_thread.run_sync(self.key_usage.flush, db)
        finally:
            db.close()

    async def _watch_keys(self) -> None:
        """Reload the keys file when it changes (a ``stat`` every :data:`WATCH_EVERY` seconds)."""
        while not self._closing.is_set():
            with anyio.move_on_after(WATCH_EVERY):
                await self._closing.wait()
            self.reload_keys(only_if_changed=True)

    def reload_keys(self, *, only_if_changed: bool = False) -> bool:
        """Read the keys file again (SIGHUP; the watcher when it changed); whether it was read. A
        file that cannot be read keeps the keys as they were, and says so in the log."""
        try:
            if only_if_changed:
                if not self.keys.refresh():
                    return False
            else:
                self.keys.reload()
        except ConfigError as exc:
            if self._keys_error != str(exc):  # once per bad version of the file
                self._keys_error = str(exc)
                log.error(
                    "keys file not reloaded: %s",
                    exc,
                    extra={"event": "keys.error", "keys": len(self.keys.names())},
                )
            return False
        self._keys_error = ""
        log.info("keys reloaded", extra={"event": "keys.reloaded", "keys": len(self.keys.names())})
        return True

    async def _stop(self) -> None:
        self.inbound.stop()
        self._closing.set()
        self.ctx.draining = True
        if self.campaigns is not None:
            self.campaigns.cancel_all()
        self.lanes.close_inboxes()

    async def _close(self) -> None:
        gc.unfreeze()  # (frozen by _start: a service run inside another program gives it back)
        with contextlib.suppress(sqlite3.Error):  # the keys' last use since the last flush
            db = sqlite3.connect(self.ctx.engine.store_path, isolation_level=None, timeout=5)
            try:
                self.key_usage.flush(db)
            finally:
                db.close()
        await self.gateways.aclose()
        self.lanes.close()
        if self.shared is not None:
            with contextlib.suppress(Exception):
                await self.shared.aclose()
        if self.ctx.ledger is not None:
            self.ctx.ledger.close()
        self.inbound.close()
        if self.flows is not None:
            self.flows.close()
        if self.ctx.store is not None:
            self.ctx.store.close()

    # -- metrics -------------------------------------------------------------------------

    def exposition(self) -> tuple[bytes, str]:
        """The process's own metrics (without its blast workers') and content type."""
        return self.ctx.metrics.exposition()

    async def scrape(self) -> tuple[bytes, str]:
        """The ``/metrics`` body and content type: the process's series and its blast workers'."""
        live = self.campaigns.metrics_texts() if self.campaigns is not None else []
        # in a thread: the loop keeps serving the API and the priority lane between GIL turns
        body = await anyio.to_thread.run_sync(self.merged_metrics.render, live)
        return body, CONTENT_TYPE

    # -- health --------------------------------------------------------------------------

    def readiness(self) -> dict[str, Any]:
        """Checks behind ``/readyz``: the store answers, each carrier has a gateway, not draining."""
        checks: dict[str, Any] = {"draining": self.ctx.draining}
        try:
            assert self.ctx.ledger is not None
            self.ctx.ledger.db.execute("SELECT 1").fetchone()
            checks["store"] = "ok"
        except (AssertionError, sqlite3.Error) as exc:
            checks["store"] = f"error: {exc}"
        down = self.gateways.carriers_down(self.ctx.clock.monotonic())
        checks["gateways"] = "ok" if not down else f"no gateway up for {', '.join(down)}"
        checks["ready"] = not self.ctx.draining and checks["store"] == "ok" and not down
        return checks


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
        run_dir = svc.ctx.path(svc.config.runs_dir) / "service" / stamp
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
