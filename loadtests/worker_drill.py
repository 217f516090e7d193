"""Drill at scale: 4 ``pigeon worker`` processes on one campaign, 2 SIGKILLed, 1 late, Redis restarted.

The 500,000-recipient version of ``tests/integration/test_workers.py``: a segment of ``--rows``
recipients, one HTTP simulator (idempotency keys on), China Mobile shared at ``--rate`` parts/s,
three workers started together, two SIGKILLed once a third of the messages arrived, a fourth
started then. With ``--restart-redis S`` the drill runs a redis-server of its own (AOF, fsync every
second, on a free loopback port) and, once half the messages arrived, SIGKILLs it and starts it
again on the same files S seconds later: the workers must pause (nothing without its claim) and
carry on. Checked on the simulator's log and reported: every recipient exactly once (none twice,
none missing), the busiest 1 s window against the rate, what arrived while Redis was down, who
finished which ranges, wall time.

    python -m loadtests.worker_drill --rows 500000 --rate 20000 --json loadtests/results-worker-drill.json
    python -m loadtests.worker_drill --rows 500000 --rate 20000 --restart-redis 3

Shared 2-core machine: the simulator, Redis and the workers share the cores with other work.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
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


def _files(d: Path, port: int, seg: Path, url: str, prefix: str, rate: int, margin: float) -> Path:
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
margin = {margin}
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


def _redis_server(port: int, data: Path) -> subprocess.Popen[bytes]:
    """A redis-server of the drill's own on ``port``, AOF on (fsync every second) in ``data``; answering."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("--restart-redis needs redis-server (apt-get install redis-server)")
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"]
    args += ["--appendfsync", "everysec", "--dir", str(data)]
    proc = subprocess.Popen([exe, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.RedisError:
            time.sleep(0.05)
    else:
        raise SystemExit(f"redis-server on port {port} did not answer")
    client.close()
    return proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    ap.add_argument("--margin", type=float, default=0.05, help="[coordinator] margin (default 0.05)")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    ap.add_argument(
        "--restart-redis", type=float, metavar="S", help="SIGKILL Redis mid-run, start it again S s later"
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    own: subprocess.Popen[bytes] | None = None
    data = Path(tempfile.mkdtemp(prefix="drill-redis-"))
    if args.restart_redis is not None:
        port = _free_port()
        args.redis = f"redis://127.0.0.1:{port}/0"
        own = _redis_server(port, data)
    try:
        return _drill(args, own, data)
    finally:
        if own is not None:
            own.kill()
            own.wait()
        shutil.rmtree(data, ignore_errors=True)


def _drill(args: argparse.Namespace, own: subprocess.Popen[bytes] | None, data: Path) -> int:
    client = redis.Redis.from_url(args.redis)
    client.ping()
    prefix = f"pigeon-drill-{secrets.token_hex(4)}"
    report: dict[str, Any] = {
        "scenario": "worker-drill",
        "rows": args.rows,
        "rate": args.rate,
        "lease": args.lease,
        "margin": args.margin,
        "redis_restart_s": args.restart_redis,
    }
    down: tuple[float, float] | None = None
    with tempfile.TemporaryDirectory() as tmp, SimulatorThread(SimConfig()) as sim:
        root = Path(tmp)
        seg = root / "seg.csv"
        with seg.open("w", encoding="utf-8") as f:
            f.write("phone,name,coupon\n")
            for i in range(args.rows):
                f.write(f"138{i:08d},客{i % 100},20\n")
        campaigns = [
            _files(root / f"w{i}", sim.port, seg, args.redis, prefix, args.rate, args.margin)
            for i in range(4)
        ]
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
            p.communicate()  # reaps it and closes its pipes
        killed_at = len(sim.log)
        joiner = _start(campaigns[3], args.lease)
        if own is not None:
            while len(sim.log) < args.rows // 2 and joiner.poll() is None:
                time.sleep(0.02)
            own.kill()
            own.wait()
            gone = time.monotonic()
            report["arrived_at_redis_kill"] = len(sim.log)
            time.sleep(args.restart_redis)
            report["arrived_while_redis_down"] = len(sim.log) - report["arrived_at_redis_kill"]
            port = int(args.redis.rsplit(":", 1)[1].split("/")[0])
            down = (gone, time.monotonic())  # nothing listens on the port until the new server starts
            own = _redis_server(port, data)
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
        if own is not None:
            own.kill()
            own.wait()
    if own is None:  # the shared Redis: leave nothing behind (the drill's own is removed with its files)
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
    if down is not None:
        # what the simulator logged more than half a second into the outage: requests claimed and
        # booked before the kill may still arrive in its first moments, nothing after
        report["arrived_later_than_0.5s_into_the_outage"] = sum(
            1 for t, *_ in log if down[0] + 0.5 < t < down[1]
        )
    emit(report, args.json)
    ok = report["received_twice_or_more"] == 0 and report["missing"] == 0 and peak <= args.rate
    ok = ok and not report.get("arrived_later_than_0.5s_into_the_outage")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
