"""Load test: the flows' timer store in Redis beside the embedded SQLite one, in the same run.

For each store (SQLite: a fresh store file, WAL, as ``pigeon serve`` opens it; Redis: the
coordinator's store under a fresh key prefix, ``--redis``, deleted after):

* **events in**: ``--events`` ``order_created`` events through :class:`~engine.flows.book.FlowBook`
  in batches of 1000 (one transaction / one script call each), the example flows of
  ``config/flows/`` (each order schedules the unpaid reminder's two steps);
* **bytes per pending timer**: the store file's size (SQLite) or Redis's ``used_memory`` growth
  (Redis: the timer hashes, the pending sorted sets, the per-order and per-customer indexes, the
  event ids) divided by the timers pending;
* **fired**: the due half (the first reminders) fired by :class:`~engine.flows.runner.FlowRunner`
  (take, claim with a message id, hand to a sender that answers at once, settle) with no catch-up
  cap — one runner; for Redis also two runners as two hosts on the one store, concurrently (each
  timer taken once: asserted).

The lanes and the gateway come on top (``service_load.py`` measures those). A shared 2-core
machine: compare the columns of one run.

    python -m loadtests.flow_timers_redis --json loadtests/results-flow-timers-redis.json
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import redis

from engine.coordination.contract import CoordinatorContext
from engine.core.clock import Clock
from engine.flows.book import FlowBook
from engine.flows.config import load_flows
from engine.flows.events import EventIn
from engine.flows.runner import FlowRunner, Outcome, SendItem
from engine.state.flowstore import FlowStore, SqliteFlowStore
from engine.state.timers import TimerStore
from loadtests._report import emit
from loadtests._segment import ROOT
from plugins.store_redis.config import RedisConfig
from plugins.store_redis.coordinator import RedisCoordinator


class _Instant:
    """A sender that takes every step at once (the store's side alone is measured)."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.n = 0

    def reserve(self, lane: str, n: int) -> list[str]:
        self.n += n
        return [f"api-{lane}-{self.host}{self.n - n + i}" for i in range(n)]

    async def send(self, lane: str, items: Sequence[SendItem]) -> list[Outcome]:
        return [Outcome("submitted") for _ in items]

    def settled(self, message_ids: Sequence[str]) -> dict[str, str]:
        return {}

    def recorded(self, message_ids: Sequence[str]) -> dict[str, str]:
        return {}

    def retry_at(self, message_id: str, reason: str, now: float) -> float:
        return 0.0


class _Fixed:
    """A clock stopped at ``now`` (monotonic runs: the catch-up budget)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return time.monotonic()


async def _events(store: FlowStore, n: int, at: float) -> tuple[float, int]:
    """``n`` orders created at ``at`` through the book; (seconds, steps scheduled)."""
    book = FlowBook(load_flows(ROOT / "config" / "flows"), store)
    t0 = time.perf_counter()
    scheduled = 0
    for start in range(0, n, 1000):
        batch = [
            EventIn(id=f"e{i}", type="order_created", phone=f"138{i:08d}", order_id=f"o{i}", at=at)
            for i in range(start, min(n, start + 1000))
        ]
        scheduled += (await book.ingest_async(batch, at)).scheduled
    return time.perf_counter() - t0, scheduled


async def _fire(stores: Sequence[FlowStore], now: float) -> tuple[float, list[int]]:
    """Fire what is due at ``now`` with one runner per store, concurrently; (seconds, fired each)."""
    flows = load_flows(ROOT / "config" / "flows")
    fired = [0] * len(stores)

    async def one(i: int, store: FlowStore) -> None:
        clock: Clock = _Fixed(now)  # type: ignore[assignment]
        runner = FlowRunner(flows, store, _Instant(f"h{i}-"), clock, batch=500, max_per_second=1e9)
        while True:
            got = await runner.fire_due()
            if not got:
                return
            fired[i] += got

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i, s in enumerate(stores):
            tg.start_soon(one, i, s)
    return time.perf_counter() - t0, fired


async def _sqlite(events: int, workdir: Path, at: float) -> dict[str, Any]:
    path = workdir / "pigeon.db"
    store = SqliteFlowStore(TimerStore(path))
    try:
        secs, scheduled = await _events(store, events, at)
        store.sync.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pending = await store.pending_count()
        size = path.stat().st_size
        fsecs, fired = await _fire([store], at + 3600)
        assert await store.late_count(at + 3600) == 0
        return {
            "events_per_s": round(events / secs),
            "timers_scheduled": scheduled,
            "bytes_per_pending_timer": round(size / pending),
            "fired": sum(fired),
            "fired_per_s": round(sum(fired) / fsecs),
        }
    finally:
        await store.aclose()


async def _redis(events: int, url: str, at: float) -> dict[str, Any]:
    prefix = f"pigeon-load-{secrets.token_hex(4)}"
    sync = redis.Redis.from_url(url)
    coords = [RedisCoordinator(RedisConfig(url=url, prefix=prefix), CoordinatorContext()) for _ in range(2)]
    try:
        mem0 = int(sync.info("memory")["used_memory"])
        a, b = coords[0].flow_store("h1", 30.0), coords[1].flow_store("h2", 30.0)
        secs, scheduled = await _events(a, events, at)
        pending = await a.pending_count()
        mem1 = int(sync.info("memory")["used_memory"])
        half = events // 2  # orders again (other ids): their first steps fired by two hosts at once
        fsecs, fired = await _fire([a], at + 3600)
        book = FlowBook(load_flows(ROOT / "config" / "flows"), b)
        for start in range(0, half, 1000):
            batch = [
                EventIn(id=f"x{i}", type="order_created", phone=f"139{i:08d}", order_id=f"x{i}", at=at)
                for i in range(start, min(half, start + 1000))
            ]
            await book.ingest_async(batch, at)
        f2secs, fired2 = await _fire([a, b], at + 3600)
        assert sum(fired2) == half, fired2  # each timer taken once by one of the two
        return {
            "url": url.rsplit("@", 1)[-1],
            "events_per_s": round(events / secs),
            "timers_scheduled": scheduled,
            "bytes_per_pending_timer": round((mem1 - mem0) / pending),
            "fired": sum(fired),
            "fired_per_s": round(sum(fired) / fsecs),
            "two_hosts": {"fired": fired2, "fired_per_s": round(sum(fired2) / f2secs)},
        }
    finally:
        for c in coords:
            await c.aclose()
        keys = list(sync.scan_iter(match=f"{prefix}:*", count=5000))
        for i in range(0, len(keys), 5000):
            sync.delete(*keys[i : i + 5000])
        sync.close()


def run(events: int, url: str) -> dict[str, Any]:
    """Both stores, the same scenario; the report."""
    at = time.time()

    async def main() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="pigeon-flow-timers-") as tmp:
            sqlite = await _sqlite(events, Path(tmp), at)
        red = await _redis(events, url, at)
        return {
            "events": events,
            "machine": "shared, 2 cores; Redis on loopback",
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "sqlite": sqlite,
            "redis": red,
            "fired_ratio_sqlite_over_redis": round(sqlite["fired_per_s"] / red["fired_per_s"], 2),
        }

    return anyio.run(main, backend="asyncio")


def main(argv: list[str] | None = None) -> int:
    """Run it; print (and save) the report."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000, help="order_created events in (default 100,000)")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/11", help="the Redis (a fresh key prefix)")
    ap.add_argument("--json", type=Path, help="save the report here too")
    args = ap.parse_args(argv)
    emit(run(args.events, args.redis), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
