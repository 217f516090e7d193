"""Load test: 10,000 clicks through ``pigeon serve``'s redirector, each recorded exactly once.

Two processes on loopback: ``pigeon serve`` (its own engine file and store) and this client.
``--recipients`` per-recipient codes are made in the store's links file (as a ``recipient``-mode
campaign's send makes them); then, with ``--concurrency`` requests in flight over pooled
connections:

1. baseline: ``--clicks`` ``GET /healthz`` — the same server, client and connections, no store;
2. ``--clicks`` ``GET /l/{code}`` with a phone browser's user agent, every code tapped
   ``clicks / recipients`` times in a shuffled order; plus ``--bots`` taps by robots, link
   previews and ``HEAD`` requests, which must be redirected and not counted.

Checked afterwards in the links file: one click row per code, its ``hits`` equal to the taps it
got, no row for any robot's tap, and every answer a 302 to the target. Reported: clicks per
second and latency percentiles beside the baseline's. Bounded by ``--max-seconds``.

    python -m loadtests.redirector_clicks --json loadtests/results-redirector-clicks.json
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

from loadtests._host import cpu_seconds, free_port
from loadtests._report import emit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BROWSER = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 MicroMessenger/8.0.44"
ROBOTS = (
    "WhatsApp/2.23.20",
    "Mozilla/5.0 (compatible; Googlebot/2.1)",
    "TelegramBot (like TwitterBot)",
    "curl/8.1",
)
TARGET = "https://shop.example.com/d11?from=sms"
ENGINE = """\
runs_dir = "runs"
[store]
path = "pigeon.db"
[gateways.out]
plugin = "blackhole"
carriers = ["cm", "cu", "ct", "cbn", "intl"]
[service]
signature = "小鹅优选"
"""


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else 0.0


async def _phase(
    url: str, paths: list[tuple[str, str, str]], concurrency: int, limit: float
) -> dict[str, Any]:
    """Send every (method, path, user agent); returns statuses, locations and latencies."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    locations: set[str] = set()
    queue = list(paths)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as c:

        async def worker() -> None:
            while queue:
                method, path, ua = queue.pop()
                t = time.perf_counter()
                r = await c.request(method, path, headers={"user-agent": ua})
                latencies.append(time.perf_counter() - t)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code == 302:
                    locations.add(r.headers["location"])

        started = time.perf_counter()
        with anyio.fail_after(limit):
            async with anyio.create_task_group() as tg:
                for _ in range(concurrency):
                    tg.start_soon(worker)
        wall = time.perf_counter() - started
    return {
        "requests": len(paths),
        "seconds": round(wall, 3),
        "per_second": round(len(paths) / wall, 1),
        "p50_ms": round(_pct(latencies, 0.5) * 1000, 2),
        "p99_ms": round(_pct(latencies, 0.99) * 1000, 2),
        "statuses": statuses,
        "locations": sorted(locations),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the load test and print (and save) the report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clicks", type=int, default=10_000)
    p.add_argument("--recipients", type=int, default=5_000)
    p.add_argument("--bots", type=int, default=1_000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--max-seconds", type=float, default=300.0)
    p.add_argument("--json", type=Path, dest="out", help="also save the report here")
    args = p.parse_args(argv)
    from engine.state.links import LinkStore, links_path

    rng = random.Random(19)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "engine.toml").write_text(ENGINE, encoding="utf-8")
        store = LinkStore(links_path(tmp / "pigeon.db"))
        rows = list(range(2, args.recipients + 2))
        codes = store.assign("load", [str(r) for r in rows], ["all"] * len(rows), rows, TARGET, 7)
        store.close()
        taps = [codes[i % len(codes)] for i in range(args.clicks)]
        rng.shuffle(taps)
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        svc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine",
                "serve",
                "--engine",
                str(tmp / "engine.toml"),
                "--port",
                str(port),
            ],
            cwd=tmp,
            env=env,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or svc.poll() is not None:
                    raise SystemExit("pigeon serve did not start")
                time.sleep(0.1)
            cpu0 = cpu_seconds()
            baseline = anyio.run(
                _phase, url, [("GET", "/healthz", BROWSER)] * args.clicks, args.concurrency, args.max_seconds
            )
            bots = [
                ("HEAD" if i % 3 == 0 else "GET", f"/l/{codes[i % len(codes)]}", ROBOTS[i % len(ROBOTS)])
                for i in range(args.bots)
            ]
            clicks = [("GET", f"/l/{c}", BROWSER) for c in taps]
            mixed = clicks + bots
            rng.shuffle(mixed)
            redirected = anyio.run(_phase, url, mixed, args.concurrency, args.max_seconds)
            client_cpu = cpu_seconds() - cpu0
        finally:
            svc.send_signal(signal.SIGTERM)
            svc.wait(30)
        store = LinkStore(links_path(tmp / "pigeon.db"))
        try:
            recorded = dict(store.db.execute("SELECT code, hits FROM clicks").fetchall())
        finally:
            store.close()
    want: dict[str, int] = {}
    for c in taps:
        want[c] = want.get(c, 0) + 1
    exact = recorded == want
    report = {
        "scenario": "redirector_clicks",
        "machine": "shared 2-core VM, other jobs running: figures are indicative, the ratio is the point",
        "clicks": args.clicks,
        "recipients": args.recipients,
        "bot_and_head_taps": args.bots,
        "concurrency": args.concurrency,
        "baseline_healthz": baseline,
        "redirector": redirected,
        "ratio_to_baseline": round(redirected["per_second"] / baseline["per_second"], 3),
        "client_cpu_seconds": round(client_cpu, 2),
        "recorded_rows": len(recorded),
        "recorded_hits": sum(recorded.values()),
        "every_click_recorded_once": exact,
        "all_redirected_to_target": redirected["statuses"] == {302: len(mixed)}
        and redirected["locations"] == [TARGET],
    }
    emit(report, args.out)
    return 0 if exact and report["all_redirected_to_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
