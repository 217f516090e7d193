"""Load test: what the redis coordinator costs per request, beside the embedded one in the same run.

One worker process, one Redis on loopback (client and server share this machine's cores):

* ``claims``: recipients claimed per second in requests of 1, 100 and 500 (one script call each),
  script calls (Redis round trips) and client CPU per 1,000 recipients; the embedded claim set as
  the baseline;
* ``gcra``: budget charges per second, one call at a time (requests of 1–8 parts on a budget
  too large to refuse), beside the embedded limiter;
* ``memory``: bytes per claimed recipient in the campaign's claims hash (``MEMORY USAGE``);
* ``caps``: claims in requests of 200 with the frequency caps checked and counted in the claim
  script — none, ``1 per calendar_day``, and that plus ``3 per 7d`` — with client and Redis CPU
  per 1,000 recipients (``INFO cpu``: a shared Redis makes it noisy) and bytes per cap key.

* ``caps_cluster`` (``--cluster``): the same ``caps`` setups on a 3-primary Redis Cluster this run
  starts on loopback (redis-server processes), where a claim with caps is three steps (reserve on
  the kind's cap shards, claim, give back), for ``cap_shards`` 1, 4 and 16 — beside the standalone
  ``caps`` of the same run; Redis CPU summed over the primaries, script calls counted by them.

    python -m loadtests.redis_coordinator                    # 200,000 recipients
    python -m loadtests.redis_coordinator --json loadtests/results-redis-coordinator.json
    python -m loadtests.redis_coordinator --rows 50000 --cluster
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from engine.coordination.contract import BudgetKey, BudgetSpec, CapCheck, Coordinator, CoordinatorContext
from engine.coordination.embedded import EmbeddedCoordinator
from engine.state.caps import CapWindow
from loadtests._cluster import local_cluster
from loadtests._report import emit
from plugins.store_redis.config import RedisConfig
from plugins.store_redis.coordinator import RedisCoordinator


async def _claims(c: Coordinator, campaign: str, numbers: list[str], size: int) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(numbers), size):
        await c.claim(campaign, numbers[i : i + size])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = len(numbers)
    return {
        "recipients_per_s": round(n / wall),
        "script_calls_per_1000": round(1000 / size, 1),
        "client_cpu_ms_per_1000": round(cpu / n * 1e6, 2),
    }


async def _gcra(c: Coordinator, calls: int) -> dict[str, float]:
    spec = BudgetSpec(rate=1e9, burst=8)
    key = BudgetKey("load", "cm", "bulk")
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(calls):
        await c.charge(key, spec, 1 + i % 8)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"charges_per_s": round(calls / wall), "client_cpu_us_per_charge": round(cpu / calls * 1e6, 1)}


def _per_node(info: dict[str, Any], cluster: bool) -> list[dict[str, Any]]:
    return list(info.values()) if cluster else [info]


async def caps_costs(r: RedisCoordinator, rows: int) -> dict[str, Any]:
    """Claims of ``rows`` fresh recipients per setup, in requests of 200, with shared caps (on a
    Cluster: Redis CPU and script calls summed over its primaries)."""
    cluster = r.config.cluster
    server: Any = redis.RedisCluster.from_url(r.config.url) if cluster else redis.Redis.from_url(r.config.url)
    nodes: dict[str, Any] = {"target_nodes": redis.RedisCluster.PRIMARIES} if cluster else {}

    def redis_cpu() -> float:
        return sum(
            float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
            for cpu in _per_node(server.info("cpu", **nodes), cluster)
        )

    def script_calls() -> int:
        return sum(
            int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
            for stats in _per_node(server.info("commandstats", **nodes), cluster)
        )

    now = time.time()
    setups: dict[str, CapCheck | None] = {
        "none": None,
        "1_per_calendar_day": CapCheck("marketing", (CapWindow(1, "calendar_day"),), now),
        "1_per_day_and_3_per_7d": CapCheck(
            "marketing", (CapWindow(1, "calendar_day"), CapWindow(3, "7d")), now
        ),
    }
    out: dict[str, Any] = {}
    try:
        for j, (name, check) in enumerate(setups.items()):
            numbers = [f"86{j}{n:010d}" for n in range(rows)]  # fresh numbers: every claim counted
            await r.claim(f"warm-{name}", [f"85{j}{n:010d}" for n in range(200)], caps=check)  # scripts
            calls, used, wall, cpu = script_calls(), redis_cpu(), time.perf_counter(), time.process_time()
            for i in range(0, rows, 200):
                await r.claim(f"caps-{name}", numbers[i : i + 200], caps=check)
            wall, cpu, used = time.perf_counter() - wall, time.process_time() - cpu, redis_cpu() - used
            out[name] = {
                "recipients_per_s": round(rows / wall),
                "client_cpu_ms_per_1000": round(cpu / rows * 1e6, 2),
                "redis_cpu_ms_per_1000": round(used / rows * 1e6, 2),
                "script_calls_per_1000": round((script_calls() - calls) / rows * 1000, 1),
            }
        keys = list(server.scan_iter(match=f"{r.prefix}:caps:*", count=1000))
        for kind in ("day", "roll"):
            some = [k for k in keys if f":{kind}:".encode() in k][:1000]
            size = sum(int(server.memory_usage(k) or 0) for k in some)
            out[f"bytes_per_{kind}_key"] = round(size / max(1, len(some)))
    finally:
        server.close()
    return out


async def cluster_caps(rows: int, shards: tuple[int, ...] = (1, 4, 16)) -> dict[str, Any]:
    """:func:`caps_costs` on a 3-primary Cluster started here, per ``cap_shards``."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as root, local_cluster(Path(root)) as nodes:
        for n in shards:
            config = RedisConfig(url=nodes.url, cluster=True, cap_shards=n, prefix=f"pigeon-load-{n}")
            r = RedisCoordinator(config, CoordinatorContext())
            try:
                out[f"cap_shards_{n}"] = await caps_costs(r, rows)
            finally:
                await r.aclose()
    return out


async def main(rows: int, url: str, *, cluster: bool = False) -> dict[str, Any]:
    prefix = f"pigeon-load-{secrets.token_hex(4)}"
    r = RedisCoordinator(RedisConfig(url=url, prefix=prefix), CoordinatorContext())
    e = EmbeddedCoordinator(CoordinatorContext(store_path=Path(tempfile.mkdtemp()) / "s.db"))
    numbers = [f"86139{n:08d}" for n in range(rows)]
    report: dict[str, Any] = {"rows": rows, "redis": url.rsplit("@", 1)[-1], "claims": {}, "gcra": {}}
    try:
        for size in (1, 100, 500):
            part = numbers[: min(rows, 20_000)] if size == 1 else numbers  # one per call: bounded
            report["claims"][f"request_{size}"] = {
                "redis": await _claims(r, f"c{size}", part, size),
                "embedded": await _claims(e, f"c{size}", part, size),
            }
        report["gcra"] = {"redis": await _gcra(r, 20_000), "embedded": await _gcra(e, 20_000)}
        used = int(await r.client.memory_usage(r.claims_key("c500")) or 0)
        report["memory"] = {"claims_hash_bytes": used, "bytes_per_recipient": round(used / rows, 1)}
        report["caps"] = await caps_costs(r, min(rows, 50_000))
        if cluster:
            report["caps_cluster"] = await cluster_caps(min(rows, 50_000))
    finally:
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        await r.aclose()
        await e.aclose()
    return report


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--url", default="redis://127.0.0.1:6379/11")
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--cluster", action="store_true", help="also the caps on a 3-primary Cluster started here"
    )
    args = ap.parse_args()
    emit(asyncio.run(main(args.rows, args.url, cluster=args.cluster)), args.json)
