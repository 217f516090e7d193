"""Load test: what the shared coordinator costs a transactional API message in ``pigeon serve``.

The service runs in this process (asyncio, ``loadtests/_service.py``) against the HTTP simulator on
loopback; ``--messages`` transactional messages are posted one per request at ``--rate`` a second,
twice: with the engine's ``embedded`` coordinator (nothing shared: the baseline) and with the
``redis`` coordinator (each request checked against the transactional cap in Redis and charged on
the carrier's shared budget, reserve on). Reported per setup: the latency from the client's POST to
the simulator's arrival (p50, p99, max; both on the machine's monotonic clock), the messages
arrived and the Redis calls counted by the service's gates. Bounded by ``--max-seconds`` a phase.

    python -m loadtests.service_coordinated --messages 2000 --rate 200
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

from loadtests._report import emit
from loadtests._service import SECRET, serving, write_engine
from loadtests.simulator import SimConfig, SimulatorThread

HERE = Path(__file__).resolve().parent


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else 0.0


async def _phase(root: Path, coordinator: str, messages: int, rate: float, bound: float) -> dict[str, Any]:
    await anyio.Path(root).mkdir()
    with SimulatorThread(SimConfig()) as sim:
        engine, key = write_engine(root, sim.port, cm_rate=5000)
        with engine.open("a", encoding="utf-8") as f:
            f.write(coordinator)
        posted: dict[str, float] = {}
        async with (
            serving(engine) as (url, svc),
            httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=30) as c,
        ):
            start = time.monotonic()
            for i in range(messages):
                due = start + i / rate
                now = time.monotonic()
                if due > now:
                    await anyio.sleep(due - now)
                to = f"1390000{i:04d}"
                posted["+86" + to] = time.monotonic()
                body = {"priority": "transactional", "messages": [{"to": to, "text": "您的验证码1234"}]}
                r = await c.post("/v1/messages", json=body)
                r.raise_for_status()
                if time.monotonic() - start > bound:
                    break
            with anyio.move_on_after(bound):
                while len(sim.log) < len(posted):  # noqa: ASYNC110 (the simulator's thread appends)
                    await anyio.sleep(0.05)
            gate = svc.lanes.streams["transactional"].gate
            calls = gate.calls if gate is not None else 0
        arrived = {to: t for t, _, to, _, _ in sim.log}
    lat = [arrived[to] - t for to, t in posted.items() if to in arrived]
    return {
        "posted": len(posted),
        "arrived": len(lat),
        "p50_ms": round(_pct(lat, 0.5) * 1000, 2),
        "p99_ms": round(_pct(lat, 0.99) * 1000, 2),
        "max_ms": round(max(lat, default=0.0) * 1000, 2),
        "redis_calls": calls,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"pigeon-load-{secrets.token_hex(4)}"
    redis = (
        f'[coordinator]\nplugin = "redis"\nreserve = true\n'
        f'[coordinator.options]\nurl = "{args.redis}"\nprefix = "{prefix}"\n'
    )
    out: dict[str, Any] = {
        "messages": args.messages,
        "rate": args.rate,
        "at": time.strftime("%H:%M UTC", time.gmtime()),
    }
    with tempfile.TemporaryDirectory() as tmp:
        out["embedded"] = await _phase(Path(tmp) / "embedded", "", args.messages, args.rate, args.max_seconds)
        out["redis"] = await _phase(Path(tmp) / "redis", redis, args.messages, args.rate, args.max_seconds)
    try:
        import redis as redis_client

        client = redis_client.Redis.from_url(args.redis)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    except Exception:  # (best effort: the keys expire anyway)
        pass
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--rate", type=float, default=200.0, help="transactional messages per second")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    p.add_argument("--max-seconds", type=float, default=60.0, help="bound on each phase")
    p.add_argument("--out", type=Path, default=HERE / "results-service-coordinated.json")
    a = p.parse_args()
    os.environ.setdefault("PIGEON_TEST_WEBHOOK_SECRET", SECRET)  # (the engine file names a webhook secret)
    emit(anyio.run(main, a, backend="asyncio"), a.out)
