"""Load test: flow events in, timers out — events/s taken, timers/s fired, memory and disk per pending timer.

In one fresh store file (SQLite, WAL, as ``pigeon serve`` opens it), in one process:

* **events in**: ``--events`` ``order_created`` events through :class:`~engine.flows.book.FlowBook`
  (what ``POST /v1/events`` and ``pigeon events import`` run) in batches of 1000, with the example
  flows of ``config/flows/`` (each order schedules the unpaid reminder's two steps);
* **pending**: ``--timers`` more pending timers written with ``executemany`` (1% due now, the rest
  over the next 30 days) — the rate, the store's bytes per timer and the process's resident memory
  before and after (the timers live on disk: memory must not follow their number);
* **fetch**: the runner's query for the next due batch (500, earliest first) on the timer table with
  its partial index, beside the **baseline** — the same rows in a plain table scanned by due time
  (``SELECT … WHERE state = 0 AND due <= ? ORDER BY due LIMIT 500``, no index) — median of 20;
* **fired**: the due timers fired by :class:`~engine.flows.runner.FlowRunner` (fetch, claim with a
  message id, hand to a sender that answers at once, settle) with no catch-up cap: timers/s through
  the store. The lanes and the gateway come on top (``service_load.py`` measures those).

Figures from a shared 2-core machine are indicative; compare the two columns of one run.

    python -m loadtests.flow_timers --json loadtests/results-flow-timers.json
    python -m loadtests.flow_timers --timers 10000000      # the issue's 10M (about 1 GB of disk)
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from engine.core.clock import SystemClock
from engine.flows.book import FlowBook
from engine.flows.config import load_flows
from engine.flows.events import EventIn
from engine.flows.runner import FlowRunner, Outcome, SendItem
from engine.state.timers import TimerStore
from loadtests._report import emit
from loadtests._segment import ROOT


def _rss_mb() -> float:
    """Resident memory now (Linux /proc), in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _Instant:
    """A sender that takes every step at once (the store's side alone is measured)."""

    def __init__(self) -> None:
        self.n = 0

    def reserve(self, lane: str, n: int) -> list[str]:
        self.n += n
        return [f"api-{lane}-{self.n - n + i}" for i in range(n)]

    async def send(self, lane: str, items: Sequence[SendItem]) -> list[Outcome]:
        return [Outcome("submitted") for _ in items]

    def settled(self, message_ids: Sequence[str]) -> dict[str, str]:
        return {}

    def recorded(self, message_ids: Sequence[str]) -> dict[str, str]:
        return {}


def run(events: int, timers: int, workdir: Path) -> dict[str, Any]:
    """Every phase; the report."""
    path = workdir / "pigeon.db"
    store = TimerStore(path)
    flows = load_flows(ROOT / "config" / "flows")
    book = FlowBook(flows, store)
    now = time.time()
    report: dict[str, Any] = {"events": events, "timers": timers, "machine": "shared, 2 cores"}

    # events in
    t0 = time.perf_counter()
    scheduled = 0
    for start in range(0, events, 1000):
        batch = [
            EventIn(
                id=f"e{i}", type="order_created", phone=f"138{i % 100_000_000:08d}", order_id=f"o{i}", at=now
            )
            for i in range(start, min(events, start + 1000))
        ]
        scheduled += book.ingest(batch, now).scheduled
    dt = time.perf_counter() - t0
    report["events_in"] = {
        "seconds": round(dt, 2),
        "events_per_s": round(events / dt),
        "timers_scheduled": scheduled,
    }

    # pending timers: rate, disk, memory
    rss0 = _rss_mb()
    rows = (
        (
            f"+86139{i % 100_000_000:08d}",
            f"p{i}",
            now - 60 + i * 1e-4 if i % 100 == 0 else now + 3600 + i % 2_592_000,
        )
        for i in range(timers)
    )
    t0 = time.perf_counter()
    with store.batch():
        store.db.executemany(
            "INSERT INTO flow_timers (flow, step, customer, subject, due) VALUES ('shipped', 0, ?, ?, ?)",
            rows,
        )
    dt = time.perf_counter() - t0
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size
    report["pending"] = {
        "write_seconds": round(dt, 2),
        "timers_per_s": round(timers / dt),
        "store_bytes_per_timer": round(size / (timers + scheduled), 1),
        "rss_mib_before": round(rss0, 1),
        "rss_mib_after": round(_rss_mb(), 1),
    }

    # baseline: the same rows in a plain table, no index
    before = path.stat().st_size
    store.db.execute(
        "CREATE TABLE plain_timers AS SELECT id, flow, step, customer, subject, due, state FROM flow_timers"
    )
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    plain_bytes = path.stat().st_size - before

    def median_ms(fn: Any) -> float:
        times = []
        for _ in range(20):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return round(statistics.median(times) * 1000, 3)

    db = store.db
    api = median_ms(lambda: store.due(now, 500))
    indexed = median_ms(
        lambda: db.execute(
            "SELECT id, flow, step, customer, subject, due FROM flow_timers WHERE state = 0 AND due <= ? "
            "ORDER BY due, id LIMIT 500",
            (now,),
        ).fetchall()
    )
    plain = median_ms(
        lambda: db.execute(
            "SELECT id, flow, step, customer, subject, due FROM plain_timers WHERE state = 0 AND due <= ? "
            "ORDER BY due, id LIMIT 500",
            (now,),
        ).fetchall()
    )
    report["fetch_due_batch_ms"] = {
        "timer_store": indexed,
        "timer_store_as_objects": api,
        "baseline_plain_table_scan": plain,
        "ratio": round(plain / indexed, 1) if indexed else None,
        "plain_table_bytes_per_timer": round(max(plain_bytes, 0) / (timers + scheduled), 1),
    }
    db.execute("DROP TABLE plain_timers")

    # fired: the due ones through the runner, no cap
    due_now = store.late_count(now)
    runner = FlowRunner(flows, store, _Instant(), SystemClock(), batch=500, max_per_second=1e9)  # type: ignore[arg-type]
    runner.clock = type(
        "Fixed", (), {"time": staticmethod(lambda: now), "monotonic": staticmethod(time.monotonic)}
    )()

    async def fire() -> int:
        n = 0
        while True:
            got = await runner.fire_due()
            if not got:
                return n
            n += got

    t0 = time.perf_counter()
    fired = anyio.run(fire)
    dt = time.perf_counter() - t0
    report["fired"] = {
        "due": due_now,
        "fired": fired,
        "seconds": round(dt, 2),
        "timers_per_s": round(fired / dt) if dt else None,
        "rss_mib_after": round(_rss_mb(), 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    assert fired == due_now
    assert store.late_count(now) == 0
    store.close()
    return report


def main(argv: list[str] | None = None) -> int:
    """Run it; print (and save) the report."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000, help="order_created events in (default 100,000)")
    ap.add_argument("--timers", type=int, default=1_000_000, help="more pending timers (default 1,000,000)")
    ap.add_argument("--json", type=Path, help="save the report here too")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pigeon-flow-timers-") as tmp:
        emit(run(args.events, args.timers, Path(tmp)), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
