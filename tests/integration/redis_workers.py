"""Worker processes for tests/integration/test_store_redis.py: each claims or spends on one Redis."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from typing import Any

from engine.coordination.contract import BudgetKey, BudgetSpec, Claim, CoordinatorContext
from plugins.store_redis.config import RedisConfig
from plugins.store_redis.coordinator import RedisCoordinator


def _coordinator(url: str, prefix: str) -> RedisCoordinator:
    return RedisCoordinator(RedisConfig(url=url, prefix=prefix), CoordinatorContext())


def claim_worker(
    url: str, prefix: str, campaign: str, recipients: list[str], request: int, ready: Any, go: Any, out: Any
) -> None:
    """Claim ``recipients`` in requests of ``request``; put (worker, new recipients, taken count, mine count)."""
    coord = _coordinator(url, prefix)

    async def main() -> tuple[str, list[str], int, int]:
        new: list[str] = []
        taken = mine = 0
        for i in range(0, len(recipients), request):
            chunk = recipients[i : i + request]
            for r, c in zip(chunk, await coord.claim(campaign, chunk), strict=True):
                if c is Claim.NEW:
                    new.append(r)
                elif c is Claim.TAKEN:
                    taken += 1
                else:
                    mine += 1
        await coord.aclose()
        return coord.worker, new, taken, mine

    ready.put(1)
    go.wait()
    out.put(asyncio.run(main()))


def gcra_worker(
    url: str,
    prefix: str,
    port: int,
    rate: float,
    burst: int,
    margin: float,
    seconds: float,
    seed: int,
    ready: Any,
    go: Any,
    out: Any,
) -> None:
    """Charge requests of 1..burst parts on one shared budget for ``seconds``; each booked one is a
    datagram of its parts to the receiver on ``port``. Put (requests sent, parts sent, waits)."""
    coord = _coordinator(url, prefix)
    spec = BudgetSpec(rate=rate, burst=burst, margin=margin)
    key = BudgetKey("sim", "cm", "bulk")
    rng = random.Random(seed)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    async def main() -> tuple[int, int, int]:
        sent = parts_sent = waits = 0
        end = time.monotonic() + seconds
        parts = rng.randint(1, burst)
        while time.monotonic() < end:
            wait = await coord.charge(key, spec, parts)
            if wait > 0:
                waits += 1
                await asyncio.sleep(wait)
                continue
            sock.sendto(b"%d" % parts, ("127.0.0.1", port))
            sent += 1
            parts_sent += parts
            parts = rng.randint(1, burst)
        await coord.aclose()
        return sent, parts_sent, waits

    ready.put(1)
    go.wait()
    out.put(asyncio.run(main()))
    sock.close()
