"""Load test: what ``replicas = 1`` (a claim answered once a replica has it) costs, beside ``replicas = 0``.

Starts its own Redis on loopback — a primary and its replica (no persistence), and with
``--cluster`` 3 primaries + 3 replicas — and claims fresh recipients from one client process,
``replicas = 0`` and ``replicas = 1`` alternating in the same run (``--rounds`` each), in requests
of 1, 100 and 500, and in requests of 200 with a daily cap (on a Cluster: its three steps, each
script followed by ``WAIT`` on its node). Per setup: recipients claimed per second, client CPU per
1,000 recipients and each call's latency (p50, p99). Client, primary and replica share this
machine's cores.

    python -m loadtests.redis_replicated --json loadtests/results-redis-replicated.json --cluster
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from engine.coordination.contract import CapCheck, CoordinatorContext
from engine.state.caps import CapWindow
from loadtests._cluster import free_port_pair, local_cluster
from loadtests._report import emit
from plugins.store_redis.config import RedisConfig
from plugins.store_redis.coordinator import RedisCoordinator


@contextmanager
def primary_and_replica(root: Path) -> Iterator[str]:
    """A redis-server primary and its replica on loopback (in sync): the primary's URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed: apt-get install redis-server")
    ports = [free_port_pair(), free_port_pair()]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, port in enumerate(ports):
            d = root / str(port)
            d.mkdir(parents=True)
            extra = ["--replicaof", "127.0.0.1", str(ports[0])] if i else []
            cmd = [exe, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(d), "--save", "",
                   "--appendonly", "no", "--repl-diskless-sync-delay", "0", *extra]  # fmt: skip
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
        with redis.Redis(port=ports[1]) as r:
            for _ in range(200):
                try:
                    if r.info("replication").get("master_link_status") == "up":
                        break
                except redis.RedisError:
                    pass
                time.sleep(0.05)
            else:
                raise RuntimeError("the replica never synced")
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


async def _claims(
    c: RedisCoordinator, campaign: str, numbers: list[str], size: int, caps: CapCheck | None
) -> dict[str, float]:
    calls: list[float] = []
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(numbers), size):
        t = time.perf_counter()
        await c.claim(campaign, numbers[i : i + size], caps=caps)
        calls.append(time.perf_counter() - t)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = len(numbers)
    q = statistics.quantiles(calls, n=100) if len(calls) > 1 else calls * 99
    return {
        "recipients_per_s": round(n / wall),
        "client_cpu_ms_per_1000": round(cpu / n * 1e6, 2),
        "call_p50_ms": round(q[49] * 1000, 3),
        "call_p99_ms": round(q[98] * 1000, 3),
    }


async def compare(url: str, rows: int, rounds: int, *, cluster: bool) -> dict[str, Any]:
    """Per setup and round: the figures with ``replicas = 0`` and ``= 1``, claiming fresh numbers."""
    made = {
        n: RedisCoordinator(
            RedisConfig(url=url, cluster=cluster, prefix=f"load{n}", replicas=n, replica_timeout=1.0),
            CoordinatorContext(),
        )
        for n in (0, 1)
    }
    day = CapCheck("marketing", (CapWindow(1, "calendar_day"),), time.time())
    setups: dict[str, tuple[int, CapCheck | None]] = {
        "request_1": (1, None),
        "request_100": (100, None),
        "request_500": (500, None),
        "request_200_daily_cap": (200, day),
    }
    if cluster:  # without caps a Cluster claim is the standalone one on another node: the caps' steps
        setups = {"request_200_daily_cap": (200, day), "request_100": (100, None)}
    out: dict[str, Any] = {}
    try:
        for n, c in made.items():  # load the scripts, open the connections
            await c.claim("warm", [f"85{n}{i:09d}" for i in range(200)], caps=day)
        serial = 0
        for name, (size, caps) in setups.items():
            count = min(rows, 5_000) if size == 1 else rows
            runs: dict[str, list[dict[str, float]]] = {"replicas_0": [], "replicas_1": []}
            for _ in range(rounds):
                for n, c in made.items():
                    serial += 1
                    numbers = [f"8{serial:03d}{i:08d}" for i in range(count)]
                    runs[f"replicas_{n}"].append(await _claims(c, f"{name}-{serial}", numbers, size, caps))
            med = {k: round(statistics.median(r["recipients_per_s"] for r in v)) for k, v in runs.items()}
            out[name] = {
                "recipients": count,
                **runs,
                "median_recipients_per_s": med,
                "replicas_1_over_0": round(med["replicas_1"] / med["replicas_0"], 3),
            }
    finally:
        for c in made.values():
            await c.aclose()
    return out


async def main(rows: int, rounds: int, cluster: bool) -> dict[str, Any]:
    report: dict[str, Any] = {
        "rows": rows,
        "rounds": rounds,
        "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    with tempfile.TemporaryDirectory() as root:
        with primary_and_replica(Path(root) / "pair") as url:
            report["standalone"] = await compare(url, rows, rounds, cluster=False)
        if cluster:
            (Path(root) / "cluster").mkdir()
            with local_cluster(Path(root) / "cluster", replicas=1) as nodes:
                report["cluster"] = await compare(nodes.url, rows, rounds, cluster=True)
    return report


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=50_000, help="recipients per setup and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cluster", action="store_true", help="also on a 3+3 Cluster started here")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    emit(asyncio.run(main(args.rows, args.rounds, args.cluster)), args.json)
