"""Load test: blasts to the gateway simulator over real loopback HTTP, beside plain httpx baselines.

The simulator runs in its own process (it gets the second core). In the same run:

* baseline: a plain ``httpx.AsyncClient`` loop posting one message per request, 100 concurrent;
* baseline: the same with 10 concurrent;
* ``pigeon send`` through the ``http`` gateway with ``max_batch`` 100 (1,000,000 recipients);
* ``pigeon send`` with ``max_batch`` 1 (one message per request, like the baselines);
* with ``--shards N``, the batch-100 blast again on N worker processes (``pigeon send --shards``);
* with ``--transport-ref REF``, both Pigeon blasts again with the ``http`` gateway's transport
  module as it was at git revision REF (``plugins/gateway_http/transport.py``), each right before
  the same blast on the transport of the working tree: a transport change measured side by side.

Each reports messages per second and the client's CPU per request; Pigeon's runs also give request
latency percentiles, retries, and messages sent per carrier second by second.

    python -m loadtests.http_blast --rows 1000000 --rows-batch1 20000 --shards 2
    python -m loadtests.http_blast --rows 200000 --rows-batch1 5000 --transport-ref HEAD~1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from loadtests._host import cpu_seconds, free_port
from loadtests._report import emit
from loadtests._segment import make_segment, segment_of

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _proc_cpu(pid: int) -> float:
    """CPU seconds used so far by process ``pid`` (the simulator), from /proc; 0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def baseline(url: str, requests: int, concurrency: int) -> dict[str, Any]:
    """One message per request, ``concurrency`` requests in flight."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(requests):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                msg = {
                    "id": f"b{concurrency}-{i}",
                    "to": "+8613800138000",
                    "text": "hi",
                    "carrier": "cm",
                    "parts": 1,
                }
                r = await client.post(url, json={"messages": [msg]})
                r.raise_for_status()

        cpu, started = cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    return {
        "messages_per_s": round(requests / elapsed),
        "cpu_ms_per_request": round(cpu / requests * 1000, 3),
    }


def transport_at(ref: str) -> types.ModuleType:
    """The http gateway's transport module as it was at git revision ``ref`` (loaded from
    ``git show``, not installed), for a side-by-side run."""
    src = subprocess.run(
        ["git", "show", f"{ref}:plugins/gateway_http/transport.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType(f"transport_at_{ref}")
    exec(compile(src, f"{ref}:plugins/gateway_http/transport.py", "exec"), module.__dict__)
    return module


@contextlib.contextmanager
def gateway_transport(module: types.ModuleType | None) -> Iterator[None]:
    """Make the ``http`` gateway build its pool and send with ``module``'s (None: its own)."""
    if module is None:
        yield
        return
    from plugins.gateway_http import hooks

    saved = hooks.PooledTransport, hooks.send, hooks.probe
    hooks.PooledTransport, hooks.send, hooks.probe = module.PooledTransport, module.send, module.probe
    try:
        yield
    finally:
        hooks.PooledTransport, hooks.send, hooks.probe = saved


def engine(
    url: str,
    segment: Path,
    tmp: Path,
    max_batch: int,
    in_flight: int,
    *,
    ledger: bool = True,
    shards: int = 1,
) -> dict[str, Any]:
    """``pigeon send`` of the segment through the http gateway, with the campaign ledger on (as
    ``pigeon send`` runs); each scenario is its own campaign, and a repeat starts a new run.
    ``shards`` above 1 splits it across that many worker processes (``pigeon send --shards``):
    their CPU counts in the client's."""
    from engine.observability.metrics import Metrics
    from engine.observability.report import RunRecorder
    from engine.run.plan import prepare
    from engine.run.send import send

    (tmp / "engine.toml").write_text(
        f"""
[carriers.cm]
rate_per_second = 200000
[carriers.cu]
rate_per_second = 200000
[carriers.ct]
rate_per_second = 200000
[carriers.cbn]
rate_per_second = 200000
[gateways.sim]
plugin = "http"
in_flight = {in_flight}
rate_per_second = 400000
[gateways.sim.options]
url = "{url}"
max_batch = {max_batch}
max_connections = {in_flight}
timeout = 30
""",
        encoding="utf-8",
    )
    (tmp / "campaign.toml").write_text(
        f"""
id = "http-blast-b{max_batch}"
engine = "engine.toml"
[segment]
source = "csv"
path = "{segment}"
[template]
signature = "小鹅优选"
text = "{{name|亲爱的会员}}，您在{{city}}的{{coupon}}元双11专属券已到账"
[policy]
send_window = ""
respect_optouts = false
""",
        encoding="utf-8",
    )
    plan = prepare(tmp / "campaign.toml")
    timeline: list[dict[str, object]] = []
    last = [0.0]

    def sample(rec: RunRecorder, elapsed: float, fraction: float | None, final: bool) -> None:
        if elapsed - last[0] >= 1.0 or final:  # sent per carrier, once a second
            last[0] = elapsed
            timeline.append(
                {"t": round(elapsed, 1), **{c: s.messages for c, s in sorted(rec.carriers.items())}}
            )

    cpu, started = cpu_seconds(children=True), time.perf_counter()
    metrics = Metrics(backend="asyncio")  # metrics on: every batch and request counted
    summary = send(
        plan,
        runs_dir=tmp / "runs",
        progress=sample,
        metrics=metrics,
        ledger=ledger,
        again=ledger,
        shards=shards,
    )
    elapsed, cpu = time.perf_counter() - started, cpu_seconds(children=True) - cpu
    sent = summary.states.get("sent", 0)
    requests = summary.gateways["sim"].requests
    return {
        "rows": summary.rows,
        "sent": sent,
        "seconds": round(elapsed, 2),
        "messages_per_s": round(sent / elapsed),
        "requests": requests,
        "cpu_ms_per_request": round(cpu / max(1, requests) * 1000, 3),
        "client_cpu_s": round(cpu, 2),
        "shards": shards,
        "metrics_requests_counted": round(  # shards count in their own processes
            sum(
                sample.value
                for family in metrics.registry.collect()
                if family.name == "pigeon_gateway_request_duration_seconds"
                for sample in family.samples
                if sample.name.endswith("_count")
            )
        )
        if shards == 1
        else None,
        "retries": summary.gateways["sim"].retries,
        "latency_ms": summary.gateways["sim"].latency_ms,
        "states": summary.states,
        "sent_over_time": timeline,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios and print the report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="recipients for the batch-100 blast")
    p.add_argument("--rows-batch1", type=int, default=20_000, help="recipients for the batch-1 blast")
    p.add_argument("--baseline-requests", type=int, default=5_000)
    p.add_argument("--in-flight-batch1", type=int, default=4, help="requests in flight at batch 1")
    p.add_argument("--in-flight-batch100", type=int, default=4, help="requests in flight at batch 100")
    p.add_argument("--only", choices=["batch1", "batch100"], help="skip the other Pigeon scenario")
    p.add_argument(
        "--without-ledger", action="store_true", help="also run the batch-100 blast without the ledger"
    )
    p.add_argument(
        "--shards",
        type=int,
        default=1,
        help="also run the batch-100 blast on this many worker processes (pigeon send --shards)",
    )
    p.add_argument(
        "--transport-ref",
        metavar="REF",
        help="also run both blasts with the http gateway's transport at this git revision, side by side",
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    old = transport_at(args.transport_ref) if args.transport_ref else None

    port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "loadtests.simulator", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        url = f"http://127.0.0.1:{port}/send"
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/stats", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        report: dict[str, object] = {"load_average_at_start": os.getloadavg()[0]}

        def measured(name: str, run: Callable[[], dict[str, Any]]) -> None:
            sim_cpu = _proc_cpu(sim.pid)
            result = run()
            result["simulator_cpu_s"] = round(_proc_cpu(sim.pid) - sim_cpu, 2)
            report[name] = result

        measured("httpx_100_concurrent", lambda: asyncio.run(baseline(url, args.baseline_requests, 100)))
        measured("httpx_10_concurrent", lambda: asyncio.run(baseline(url, args.baseline_requests, 10)))
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = Path(tmp_dir)
            big = segment_of(args.rows) if args.only != "batch1" else Path()
            small = make_segment(args.rows_batch1, tmp / "small.csv") if args.only != "batch100" else Path()
            variants: list[tuple[str, types.ModuleType | None]] = [("", None)]
            if old is not None:  # the old transport first, then the working tree's, per blast
                variants.insert(0, (f"@{args.transport_ref}", old))
            if args.only != "batch1":
                b100 = args.in_flight_batch100
                for suffix, module in variants:
                    with gateway_transport(module):
                        measured(f"pigeon_batch_100{suffix}", lambda: engine(url, big, tmp, 100, b100))
                if args.without_ledger:  # the ledger's cost: the same blast without it, same run
                    measured(
                        "pigeon_batch_100_without_ledger",
                        lambda: engine(url, big, tmp, 100, b100, ledger=False),
                    )
                if args.shards > 1:  # the same blast split across worker processes, same run
                    measured(
                        f"pigeon_batch_100_shards_{args.shards}",
                        lambda: engine(url, big, tmp, 100, b100, shards=args.shards),
                    )
            if args.only != "batch100":
                for suffix, module in variants:
                    with gateway_transport(module):
                        measured(
                            f"pigeon_batch_1{suffix}",
                            lambda: engine(url, small, tmp, 1, args.in_flight_batch1),
                        )
        report["simulator"] = httpx.get(f"http://127.0.0.1:{port}/stats", timeout=5).json()
    finally:
        sim.terminate()
        sim.wait(10)
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
