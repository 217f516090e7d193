"""Load test: a store's opt-outs uploaded into the Redis coordinator's shared copy at start.

For each size, a store of that many random Chinese mobile opt-outs is filled, then on a
redis-server of the test's own (loopback, no persistence, emptied between setups):

* **bucketed** (what ``pigeon send/worker/serve`` do at start): ``share_store_optouts`` — the
  first start (every row), a second start with nothing new, a third after 1,000 more rows; the
  Redis memory the copy takes (``used_memory`` after minus before);
* **plain set** (the baseline, same run: what the earlier ``optouts-shared`` set would hold): the
  same keys as decimal strings ``SADD``\\ ed to one set in pipelined batches of 10,000;
* **migration**: the store's ``seq`` column and index dropped (an older store file) and the store
  opened again: the one-time migration's time;
* **claims**: 50,000 recipients (10% of them opted out) claimed in requests of 200 against the
  bucketed copy: recipients/s and Redis CPU per 1,000.

    python -m loadtests.optouts_shared --sizes 1000000 10000000 \\
        --json loadtests/results-optouts-shared-10m.json
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis

from loadtests._report import emit
from plugins.store_redis.scripts import OPTOUT_BUCKETS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fill(path: Path, n: int, seed: int) -> float:
    from engine.state.store import OptOutRecord
    from engine.state.store.sqlite import SqliteStore

    store = SqliteStore(path)
    rng = random.Random(seed)
    started = time.perf_counter()
    while (have := store.count_optouts()) < n:
        store.add_optouts(
            OptOutRecord(f"+861{rng.randrange(3, 10)}{rng.randrange(10**9):09d}", "import")
            for _ in range(min(1_000_000, n - have))
        )
    store.close()
    return time.perf_counter() - started


def _memory(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def _cpu(r: redis.Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def _bucketed(url: str, db: Path, r: redis.Redis) -> dict[str, Any]:
    from engine.coordination.contract import Claim, CoordinatorContext
    from engine.coordination.optout_upload import share_store_optouts
    from engine.state.store import OptOutRecord
    from engine.state.store.sqlite import SqliteStore
    from plugins.store_redis.config import RedisConfig
    from plugins.store_redis.coordinator import RedisCoordinator

    c = RedisCoordinator(RedisConfig(url=url, timeout=60), CoordinatorContext())
    try:
        before = _memory(r)
        first = await share_store_optouts(c, db)
        assert first is not None
        memory = _memory(r) - before
        second = await share_store_optouts(c, db)
        assert second is not None
        assert second.rows == 0
        store = SqliteStore(db)
        rng = random.Random(99)
        more = store.add_optouts(OptOutRecord(f"+8617{rng.randrange(10**9):09d}", "mo") for _ in range(1000))
        keys = store.load_optouts().keys
        store.close()
        third = await share_store_optouts(c, db)
        assert third is not None
        assert third.rows == more
        # Claims against the copy: 10% of the recipients opted out.
        rng = random.Random(7)
        opted = [str(int(k)) for k in rng.sample(list(keys[: min(len(keys), 1_000_000)]), 5000)]
        fresh = [f"1{rng.randrange(30, 100)}{rng.randrange(10**8):08d}" for _ in range(45_000)]
        recipients = opted + fresh
        rng.shuffle(recipients)

        async def claims(campaign: str, optouts: bool) -> tuple[float, float, int]:
            cpu, t = _cpu(r), time.perf_counter()
            refused = 0
            for i in range(0, len(recipients), 200):
                got = await c.claim(campaign, recipients[i : i + 200], optouts=optouts)
                refused += got.count(Claim.OPTED_OUT)
            return time.perf_counter() - t, _cpu(r) - cpu, refused

        base_took, base_cpu, _ = await claims("baseline", False)  # the shared copy not checked
        took, cpu, refused = await claims("load", True)
        assert refused >= 5000, refused
        return {
            "first_start_seconds": round(first.seconds, 2),
            "first_start_store_read_seconds": round(first.read_seconds, 2),
            "uploaded": first.rows,
            "memory_mb": round(memory / 2**20, 1),
            "bytes_per_number": round(memory / first.rows, 1),
            "second_start_ms": round(second.seconds * 1000, 1),
            "third_start_new_rows": third.rows,
            "third_start_ms": round(third.seconds * 1000, 1),
            "claims": {
                "recipients": len(recipients),
                "opted_out_answered": refused,
                "recipients_per_second": round(len(recipients) / took),
                "redis_cpu_ms_per_1000": round(cpu * 1000 / len(recipients) * 1000, 2),
                "baseline_without_the_check": {
                    "recipients_per_second": round(len(recipients) / base_took),
                    "redis_cpu_ms_per_1000": round(base_cpu * 1000 / len(recipients) * 1000, 2),
                },
            },
        }
    finally:
        await c.aclose()


def _plain(db: Path, r: redis.Redis) -> dict[str, Any]:
    from engine.state.store.sqlite import SqliteStore

    store = SqliteStore(db)
    keys = store.load_optouts().keys
    store.close()
    before = _memory(r)
    started = time.perf_counter()
    for i in range(0, len(keys), 10_000):
        with r.pipeline(transaction=False) as pipe:
            pipe.sadd("pigeon:optouts-shared", *map(str, keys[i : i + 10_000].tolist()))
            pipe.execute()
    took = time.perf_counter() - started
    memory = _memory(r) - before
    return {
        "upload_seconds": round(took, 2),
        "numbers": int(r.scard("pigeon:optouts-shared")),
        "memory_mb": round(memory / 2**20, 1),
        "bytes_per_number": round(memory / len(keys), 1),
        "encoding": str(r.object("encoding", "pigeon:optouts-shared")),
    }


def _migration(db: Path) -> dict[str, Any]:
    from engine.state.store.sqlite import SqliteStore

    raw = sqlite3.connect(db)
    raw.execute("DROP INDEX optouts_by_seq")
    raw.execute("ALTER TABLE optouts DROP COLUMN seq")
    raw.execute("DELETE FROM meta WHERE name = 'optouts_seq'")
    raw.commit()
    raw.execute("VACUUM")
    raw.close()
    started = time.perf_counter()
    store = SqliteStore(db)
    took = time.perf_counter() - started
    seq = store.optouts_seq()
    store.close()
    return {"open_with_migration_seconds": round(took, 2), "optouts_seq": seq}


def main(argv: list[str] | None = None) -> int:
    """Fill stores, upload them bucketed and as a plain set, and measure."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not installed")
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            r = redis.Redis(port=port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    r.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            version = r.info("server")["redis_version"]
            runs = []
            for n in args.sizes:
                db = Path(tmp) / f"store-{n}.db"
                fill = _fill(db, n, seed=n)
                r.flushall()
                bucketed = asyncio.run(_bucketed(f"redis://127.0.0.1:{port}/0", db, r))
                r.flushall()
                plain = _plain(db, r)
                r.flushall()
                migration = _migration(db)
                runs.append(
                    {
                        "numbers": n,
                        "store_fill_seconds": round(fill, 1),
                        "bucketed": bucketed,
                        "plain_set": plain,
                        "memory_plain_over_bucketed": round(plain["memory_mb"] / bucketed["memory_mb"], 2),
                        "migration": migration,
                    }
                )
                db.unlink()
            r.close()
        finally:
            proc.terminate()
            proc.wait()
    emit(
        {
            "redis": version,
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "buckets": OPTOUT_BUCKETS,
            "runs": runs,
            "numpy": np.__version__,
        },
        args.json,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
