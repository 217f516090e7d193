"""Load test: what the shared coordinator costs a blast ``pigeon serve`` starts (``POST /v1/campaigns``).

The service runs in this process (asyncio, ``loadtests/_service.py``) against the HTTP simulator on
loopback; a marketing campaign of ``--rows`` China Mobile recipients is posted and followed until
its worker process ends, twice: with the engine's ``embedded`` coordinator (nothing shared: the
baseline) and with the ``redis`` coordinator (each request of the blast claimed in Redis; no rate
set, so nothing is charged: the engine is the bottleneck). Reported per setup: the blast's seconds
from the POST to its end, messages/s, the simulator's count and distinct numbers (each exactly
once), and the coordinator calls the blast's worker counted (``pigeon_coordinator_calls_total`` in
the service's ``/metrics``, its worker's series merged in).

    python -m loadtests.service_blast_coordinated --rows 100000
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

from loadtests._report import emit
from loadtests._segment import write_marketing_campaign
from loadtests._service import SECRET, serving, write_engine
from loadtests.simulator import SimConfig, SimulatorThread

HERE = Path(__file__).resolve().parent
CALLS = re.compile(r"^pigeon_coordinator_calls_total\{([^}]*)\} ([0-9.e+]+)$", re.M)


async def _phase(root: Path, coordinator: str, rows: int, bound: float) -> dict[str, Any]:
    await anyio.Path(root / "campaigns").mkdir(parents=True)
    with (root / "campaigns" / "seg.csv").open("w", encoding="utf-8") as f:
        f.write("phone,name\n")
        f.writelines(f"1380{i:07d},客{i % 100}\n" for i in range(rows))
    write_marketing_campaign(root / "campaigns", "blast")
    with SimulatorThread(SimConfig()) as sim:
        engine, key = write_engine(root, sim.port, max_batch=500)
        with engine.open("a", encoding="utf-8") as f:
            f.write(coordinator)
        async with (
            serving(engine) as (url, _svc),
            httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=30) as c,
        ):
            start = time.monotonic()
            r = await c.post("/v1/campaigns", json={"file": "blast.toml"})
            r.raise_for_status()
            view: dict[str, Any] = {}
            with anyio.move_on_after(bound):
                while not view.get("done"):
                    await anyio.sleep(0.1)
                    view = (await c.get("/v1/campaigns/blast")).json()
            seconds = time.monotonic() - start
            metrics = (await c.get("/metrics")).text
        numbers = [to for _, _, to, _, _ in sim.log]
    calls: dict[str, float] = {}
    for labels, value in CALLS.findall(metrics):
        call = re.search(r'call="([^"]*)"', labels)
        if call is not None:
            calls[call.group(1)] = calls.get(call.group(1), 0.0) + float(value)
    return {
        "state": view.get("state"),
        "seconds": round(seconds, 2),
        "messages_per_second": round(len(numbers) / seconds) if seconds else 0,
        "arrived": len(numbers),
        "distinct": len(set(numbers)),
        "claimed_elsewhere": view.get("claimed_elsewhere", 0),
        "coordinator_calls": {k: int(v) for k, v in sorted(calls.items())},
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"pigeon-load-{secrets.token_hex(4)}"
    redis = (
        f'[coordinator]\nplugin = "redis"\n[coordinator.options]\nurl = "{args.redis}"\nprefix = "{prefix}"\n'
    )
    out: dict[str, Any] = {"rows": args.rows, "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with tempfile.TemporaryDirectory() as tmp:
        out["embedded"] = await _phase(Path(tmp) / "embedded", "", args.rows, args.max_seconds)
        out["redis"] = await _phase(Path(tmp) / "redis", redis, args.rows, args.max_seconds)
    try:
        import redis as redis_client

        client = redis_client.Redis.from_url(args.redis)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    except Exception:  # (best effort: the claims expire anyway)
        pass
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    p.add_argument("--max-seconds", type=float, default=120.0, help="bound on each phase")
    p.add_argument("--out", type=Path, default=HERE / "results-service-blast-coordinated.json")
    a = p.parse_args()
    os.environ.setdefault("PIGEON_TEST_WEBHOOK_SECRET", SECRET)  # (the engine file names a webhook secret)
    emit(anyio.run(main, a, backend="asyncio"), a.out)
