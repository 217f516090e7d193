"""Load test: ``pigeon worker`` processes on one Redis against one-process ``pigeon send``, in the same run.

One segment, one HTTP simulator on loopback (its own process), no rate limit (the engine is the
bottleneck). For each setup, a fresh store per process and a fresh key prefix:

* ``send``: one ``pigeon send`` process, no coordinator (the baseline);
* ``workers-N`` (N = 1, 2, 4): N ``pigeon worker --coordinator redis://…`` processes, started
  together, each with its own store; the first publishes the ranges.

Reported: wall time from start to the last exit, messages the simulator accepted per second, client
CPU (all engine processes, user + system) per 1,000 messages, Redis script calls (``EVALSHA``: the
per-request claims, budget charges and range renewals) and all Redis commands (the scripts' inner
calls included: an upper bound of the work Redis does) and the Redis server's CPU (``INFO cpu``; the
whole server, so anything else it serves meanwhile counts too) per 1,000 messages. Every setup must deliver
each eligible recipient once (checked on the simulator's log).

    python -m loadtests.workers --rows 100000                  # quick
    python -m loadtests.workers --rows 500000 --json loadtests/results-workers.json

The machine is shared (2 cores; the simulator, Redis and every worker on them): more workers than
cores cannot add throughput here — the figures say what coordination costs, not how it scales.
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from loadtests._report import emit
from loadtests.simulator import SimConfig, SimulatorThread

ENV = {**os.environ, "PYTHONUTF8": "1"}


def _segment(path: Path, rows: int) -> int:
    with path.open("w", encoding="utf-8") as f:
        f.write("phone,name,coupon\n")
        for i in range(rows):
            f.write(f"138{i:08d},客{i % 100},20\n")
    return rows


def _files(d: Path, port: int, seg: Path, coordinator: str) -> Path:
    d.mkdir(parents=True)
    (d / "seg.csv").symlink_to(seg)
    (d / "engine.toml").write_text(
        f"""batch_size = 2048
runs_dir = "runs"
[store]
path = "{d / "pigeon.db"}"
[carriers.cm]
price_per_part = 0.05
[gateways.sim]
plugin = "http"
carriers = ["cm", "cu", "ct", "cbn", "intl"]
in_flight = 8
[gateways.sim.options]
url = "http://127.0.0.1:{port}/send"
max_batch = 500
{coordinator}
""",
        encoding="utf-8",
    )
    campaign = d / "campaign.toml"
    campaign.write_text(
        """id = "load"
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
    return campaign


def _redis_counts(client: redis.Redis) -> tuple[int, int, float]:
    stats = client.info("commandstats")
    evalsha = int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
    total = int(client.info("stats")["total_commands_processed"])
    cpu = client.info("cpu")
    return evalsha, total, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def _run(
    name: str, procs_args: list[tuple[list[str], Path]], sim: Any, client: redis.Redis, eligible: int
) -> dict[str, Any]:
    before_log = len(sim.log)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    e0, t0, c0 = _redis_counts(client)
    wall = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "engine", *args, "-q", "--json"],
            cwd=cwd,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args, cwd in procs_args
    ]
    for p in procs:
        _, err = p.communicate(timeout=3600)
        if p.returncode != 0:
            raise SystemExit(f"{name}: exit {p.returncode}: {err[-2000:]}")
    wall = time.perf_counter() - wall
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    e1, t1, c1 = _redis_counts(client)
    got = sim.log[before_log:]
    received = {to for _, _, to, _, _ in got}
    if len(got) != eligible or len(received) != eligible:
        raise SystemExit(
            f"{name}: {len(got)} messages for {len(received)} recipients, expected {eligible} once"
        )
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    n = len(got)
    return {
        "processes": len(procs),
        "wall_s": round(wall, 2),
        "messages_per_s": round(n / wall),
        "engine_cpu_ms_per_1000": round(cpu / n * 1e6, 1),
        "redis_scripts_per_1000": round((e1 - e0) / n * 1000, 1),
        "redis_commands_per_1000": round((t1 - t0) / n * 1000, 1),
        "redis_cpu_ms_per_1000": round((c1 - c0) / n * 1e6, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--range-kb", type=int, default=256)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    client = redis.Redis.from_url(args.redis)
    client.ping()
    report: dict[str, Any] = {
        "scenario": "workers",
        "rows": args.rows,
        "machine": f"{os.cpu_count()} cores, shared with other work; simulator, Redis and workers on it",
        "setups": {},
    }
    with tempfile.TemporaryDirectory() as tmp, SimulatorThread(SimConfig()) as sim:
        root = Path(tmp)
        seg = root / "seg.csv"
        eligible = _segment(seg, args.rows)
        campaign = _files(root / "send", sim.port, seg, "")
        report["setups"]["send"] = _run(
            "send", [(["send", str(campaign)], root / "send")], sim, client, eligible
        )
        for n in (int(x) for x in args.workers.split(",")):
            prefix = f"pigeon-load-{secrets.token_hex(4)}"
            coord = (
                f'[coordinator]\nplugin = "redis"\n[coordinator.options]\nurl = "{args.redis}"\n'
                f'prefix = "{prefix}"\n'
            )
            dirs = [root / f"workers-{n}" / f"w{i}" for i in range(n)]
            runs = [
                (["worker", str(_files(d, sim.port, seg, coord)), "--range-kb", str(args.range_kb)], d)
                for d in dirs
            ]
            report["setups"][f"workers-{n}"] = _run(f"workers-{n}", runs, sim, client, eligible)
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                client.delete(*keys)
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
