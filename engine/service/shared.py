"""The service's link to a shared coordinator: opens it, shares the opt-outs it hears, records the workers'.

With a ``[coordinator]`` other than ``embedded`` in the engine file (the section ``pigeon send`` and
``pigeon worker`` read), ``pigeon serve`` takes part in what its workers share (docs/scale-out.md,
"The service with a coordinator"):

* its API lanes charge the shared budgets and check opt-outs and caps
  (:class:`~engine.coordination.gate.ApiGate`, opened by :meth:`~engine.service.lanes.ApiLanes.start`
  with the coordinator opened here);
* an opt-out its webhooks (or its gateways' binds) hear is added to the shared opt-out set — every
  worker's next claim refuses the number — by :meth:`SharedState.run`, retried until Redis answers;
* an opt-out a worker heard on its bind (the coordinator's feed) is added to the service's own set
  and store, so API marketing messages and the blasts it starts later leave the number out too.

The redis coordinator's client is asyncio's: the service refuses to start on trio with it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio
import sniffio

from engine.coordination.contract import Coordinator, CoordinatorContext, OptOutFeed, SharedOptOuts
from engine.coordination.optout_upload import OptOutUpload, share_store_optouts
from engine.coordination.select import EMBEDDED, open_coordinator
from engine.core.errors import ConfigError, CoordinatorUnavailable
from engine.core.messages import INTL_KEY_OFFSET, number_key
from engine.core.phone import mask
from engine.core.plugin_host import PluginHost
from engine.run.blast import worker_name
from engine.service.context import ServiceContext
from engine.state.ledger.tx import transaction
from engine.state.store import OptOutRecord

__all__ = ["API_OPTOUTS", "SharedState", "key_number", "open_shared"]

log = logging.getLogger("pigeon.service")

API_OPTOUTS = "api-marketing"
"""The campaign whose opt-out set the service adds what it hears to (its marketing stream's); the
shared set every campaign's claims check gets them too."""
RETRY_EVERY = 0.5
"""Seconds between two tries of a coordinator that did not answer (opt-outs to share, the feed)."""
FEED_WAIT = 1.0
"""Seconds one read of the opt-outs feed waits for an entry."""
FEED = "optouts"
"""The feed's name in the store's table of positions."""
_POSITION = "coordinator_feeds"
"""The store's table of where the service stopped reading a coordinator's feed."""


def key_number(key: str) -> tuple[str, str]:
    """A claim's recipient key back as (the number an opt-out set holds, its E.164)."""
    k = int(key)
    if k >= INTL_KEY_OFFSET:
        e164 = f"+{k - INTL_KEY_OFFSET}"
        return e164, e164
    return str(k), f"+86{k}"


def open_shared(ctx: ServiceContext, host: PluginHost) -> SharedState | None:
    """The engine's coordinator for the service (None: ``embedded``, nothing shared). Call in the
    event loop. ConfigError on trio (a shared coordinator's client is asyncio's, as ``pigeon send``
    says)."""
    ccfg = ctx.config.coordinator
    if ccfg.plugin == EMBEDDED:
        return None
    if sniffio.current_async_library() != "asyncio":  # as pigeon send refuses it (its client: asyncio's)
        raise ConfigError(
            ctx.engine.file,
            "coordinator.plugin",
            f"coordinator {ccfg.plugin!r} runs on asyncio only (its client is asyncio's): "
            "serve with --backend asyncio",
        )
    store = ctx.engine.store_path
    cctx = CoordinatorContext(worker=worker_name(store), store_path=store)
    coordinator = open_coordinator(host.coordinators, ccfg.plugin, ccfg.options, cctx, file=ctx.engine.file)
    return SharedState(ctx, coordinator, cctx.worker)


class SharedState:
    """The coordinator the API lanes use, and the two flows of opt-outs (see the module docstring)."""

    def __init__(self, ctx: ServiceContext, coordinator: Coordinator, worker: str) -> None:
        self.ctx = ctx
        self.coordinator = coordinator
        self.worker = worker
        """The service's name in the coordinator (its host and store)."""
        self._out_tx, self._out_rx = anyio.create_memory_object_stream[list[str]](10_000)
        self.shared = 0
        """Opt-outs heard here and added to the shared set."""
        self.heard = 0
        """Opt-outs the workers heard, added to this service's set and store."""
        self._after = ""
        self.uploaded: OptOutUpload | None = None
        """What :meth:`prepare` uploaded of the store's opt-outs (None: nothing asked, or no answer)."""
        self.listeners: list[Callable[[list[str]], None]] = []
        """Also told the numbers a worker heard (the service's running blasts)."""

    def heard_here(self, numbers: list[str]) -> None:
        """An inbound listener: numbers that opted out by a reply here, to share (never blocks)."""
        try:
            self._out_tx.send_nowait(list(numbers))
        except anyio.WouldBlock:  # 10,000 batches behind: the store has them (the record)
            log.warning("opt-outs not shared: the queue to the coordinator is full")

    async def run(self, closing: anyio.Event) -> None:
        """Share what is heard here and follow the workers' feed until ``closing`` is set."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._share)
            if isinstance(self.coordinator, OptOutFeed):
                tg.start_soon(self._follow, self.coordinator)
            await closing.wait()
            await self._drain_shares()
            tg.cancel_scope.cancel()

    async def _drain_shares(self) -> None:
        with anyio.move_on_after(2):  # what is queued when the service stops, while Redis answers
            while True:
                try:
                    numbers = self._out_rx.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    return
                await self._add(numbers, retry=False)

    async def _share(self) -> None:
        async for numbers in self._out_rx:
            await self._add(numbers, retry=True)

    async def _add(self, numbers: list[str], *, retry: bool) -> None:
        coordinator = self.coordinator
        if not isinstance(coordinator, SharedOptOuts) or not numbers:
            return
        keys = [str(number_key(n)) for n in numbers]
        while True:
            try:
                await coordinator.add_optouts(API_OPTOUTS, keys)
            except CoordinatorUnavailable as exc:
                log.warning(
                    "opt-outs not shared yet (%s): trying again",
                    exc,
                    extra={
                        "event": "coordinator.optouts_unshared",
                        "numbers": [mask(n) for n in numbers[:20]],
                    },
                )
                if not retry:
                    return
                await anyio.sleep(RETRY_EVERY)
                continue
            self.shared += len(keys)
            return

    async def prepare(self) -> None:
        """Before the service takes requests: where to read the feed from (the store's position,
        else the feed's end now — so nothing shared after the start is missed). A coordinator that
        does not answer leaves it to :meth:`run`. With ``share_store_optouts`` (the default) the
        store's opt-outs the coordinator's shared copy lacks are uploaded first."""
        if self.ctx.config.coordinator.share_store_optouts:
            self.uploaded = await share_store_optouts(self.coordinator, self.ctx.engine.store_path)
        if not isinstance(self.coordinator, OptOutFeed):
            return
        self._after = self._position()
        if not self._after:
            try:
                self._after = await self.coordinator.feed_end()
            except CoordinatorUnavailable:
                return
            self._save_position(self._after)

    async def _follow(self, feed: OptOutFeed) -> None:
        after = self._after or self._position()
        while True:
            try:
                if not after:  # the first start on this store: from now on
                    after = await feed.feed_end()
                    self._save_position(after)
                read, keys = await feed.read_optouts(after, FEED_WAIT)
            except CoordinatorUnavailable:
                await anyio.sleep(RETRY_EVERY)
                continue
            if keys:
                self._record(keys)
            if read != after:
                after = read
                self._save_position(after)

    def _position(self) -> str:
        """Where this store's service stopped reading the feed ("" the first time): a restarted
        service records what the workers shared while it was down (what the feed still holds)."""
        db = self.ctx.ledger.db if self.ctx.ledger is not None else None
        if db is None:
            return ""
        with transaction(db):
            db.execute(f"CREATE TABLE IF NOT EXISTS {_POSITION} (name TEXT PRIMARY KEY, last TEXT NOT NULL)")
        row = db.execute(f"SELECT last FROM {_POSITION} WHERE name = ?", (FEED,)).fetchone()
        return str(row[0]) if row else ""

    def _save_position(self, last: str) -> None:
        db = self.ctx.ledger.db if self.ctx.ledger is not None else None
        if db is not None:
            with transaction(db):
                db.execute(f"INSERT OR REPLACE INTO {_POSITION} VALUES (?, ?)", (FEED, last))

    def _record(self, keys: list[str]) -> None:
        """Opt-outs a worker heard: into this service's set and store (source ``mo``), and its blasts'."""
        ctx = self.ctx
        pairs = [key_number(k) for k in keys]
        numbers = [n for n, _ in pairs]
        now = time.time()
        records = [
            OptOutRecord(number=e164, source="mo", reason="heard by a worker", created_at=now)
            for _, e164 in pairs
        ]
        ctx.optouts.add(numbers)
        if ctx.store is not None:
            ctx.metrics.optouts_added(ctx.store.add_optouts(records), "mo")
        self.heard += len(numbers)
        ctx.counters["optouts_shared_in"] += len(numbers)
        for listener in self.listeners:
            listener(numbers)
        log.info(
            "opt-outs heard by workers",
            extra={
                "event": "coordinator.optouts_in",
                "count": len(numbers),
                "numbers": [mask(n) for n in numbers[:20]],
            },
        )

    async def aclose(self) -> None:
        """Close the opt-outs' queue and the coordinator's connections."""
        self._out_tx.close()
        self._out_rx.close()
        await self.coordinator.aclose()
