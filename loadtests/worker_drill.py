"""Drill at scale: 4 ``pigeon worker`` processes on one campaign, 2 SIGKILLed mid-run, 1 joining late.

The 500,000-recipient version of ``tests/integration/test_workers.py``: a segment of ``--rows``
recipients, one HTTP simulator (idempotency keys on), China Mobile shared at ``--rate`` parts/s,
three workers started together, two SIGKILLed once a third of the messages arrived, a fourth
started then. Checked on the simulator's log and reported: every recipient exactly once (none
twice, none missing), the busiest 1 s window against the rate, who finished which ranges, wall time.

    python -m loadtests.worker_drill --rows 500000 --rate 20000 --json loadtests/results-worker-drill.json

Shared 2-core machine: the simulator, Redis and the workers share the cores with other work.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis

from loadtests._report import emit
from loadtests.simulator import SimConfig, SimulatorThread

ENV = {**os.environ, "PYTHONUTF8": "1"}


def _files(d: Path, port: int, seg: Path, url: str, prefix: str, rate: int) -> Path:
    d.mkdir(parents=True)
    (d / "seg.csv").symlink_to(seg)
    (d / "engine.toml").write_text(
        f"""batch_size = 2048
runs_dir = "runs"
[store]
path = "{d / "pigeon.db"}"
[carriers.cm]
price_per_part = 0.05
rate_per_second = {rate}
[gateways.sim]
plugin = "http"
carriers = ["cm", "cu", "ct", "cbn", "intl"]
in_flight = 8
[gateways.sim.options]
url = "http://127.0.0.1:{port}/send"
max_batch = 200
idempotent = true
idempotency_key = true
[coordinator]
plugin = "redis"
margin = 0.05
[coordinator.options]
url = "{url}"
prefix = "{prefix}"
""",
        encoding="utf-8",
    )
    c = d / "campaign.toml"
    c.write_text(
        """id = "drill"
kind = "marketing"
engine = "engine.toml"
[segment]
source = "csv"
path = "seg.csv"
[template]
signature = "小鹅优选"
text = "{name}，您的{coupon}元券已到账"
[policy]
send_window = ""
""",
        encoding="utf-8",
    )
    return c


def _start(c: Path, lease: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "engine", "worker", str(c), "--lease", str(lease), "-q", "--json"],
        cwd=c.parent,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--rate", type=int, default=20_000)
    ap.add_argument("--lease", type=float, default=5.0)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    client = redis.Redis.from_url(args.redis)
    client.ping()
    prefix = f"pigeon-drill-{secrets.token_hex(4)}"
    report: dict[str, Any] = {
        "scenario": "worker-drill",
        "rows": args.rows,
        "rate": args.rate,
        "lease": args.lease,
    }
    with tempfile.TemporaryDirectory() as tmp, SimulatorThread(SimConfig()) as sim:
        root = Path(tmp)
        seg = root / "seg.csv"
        with seg.open("w", encoding="utf-8") as f:
            f.write("phone,name,coupon\n")
            for i in range(args.rows):
                f.write(f"138{i:08d},客{i % 100},20\n")
        campaigns = [_files(root / f"w{i}", sim.port, seg, args.redis, prefix, args.rate) for i in range(4)]
        started = time.perf_counter()
        procs = [_start(c, args.lease) for c in campaigns[:3]]
        while len(sim.log) < args.rows // 3:
            if any(p.poll() is not None for p in procs):
                raise SystemExit(
                    "a worker ended early: " + "".join(p.stderr.read() for p in procs if p.stderr)
                )
            time.sleep(0.02)
        for p in procs[:2]:
            p.send_signal(signal.SIGKILL)
            p.wait()
        killed_at = len(sim.log)
        joiner = _start(campaigns[3], args.lease)
        for p in (procs[2], joiner):
            _, err = p.communicate(timeout=3600)
            if p.returncode != 0:
                raise SystemExit(f"worker failed: {err[-2000:]}")
        wall = time.perf_counter() - started
        log = list(sim.log)
        peak = sim.max_parts_per_second().get("cm", 0)
        shown = subprocess.run(
            [sys.executable, "-m", "engine", "status", "drill", "--coordinator", args.redis, "--json"],
            cwd=campaigns[2].parent,
            env=ENV,
            capture_output=True,
            text=True,
            check=True,
        )
        shared = json.loads(shown.stdout)["shared"]
        dedup = sim.stats.get("deduplicated", 0)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    received = Counter(to for _, _, to, _, _ in log)
    report.update(
        {
            "wall_s": round(wall, 1),
            "messages_per_s": round(len(log) / wall),
            "received_once": sum(1 for n in received.values() if n == 1),
            "received_twice_or_more": sum(1 for n in received.values() if n > 1),
            "missing": args.rows - len(received),
            "busiest_second_parts": peak,
            "arrived_at_kill": killed_at,
            "resends_dropped_by_the_provider": dedup,
            "ranges": shared["meta"]["ranges"],
            "ranges_done_by": {w: v["ranges"] for w, v in shared["done_by"].items()},
        }
    )
    emit(report, args.json)
    ok = report["received_twice_or_more"] == 0 and report["missing"] == 0 and peak <= args.rate
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
