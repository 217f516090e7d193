"""Load test: what Prometheus counting costs a blast, metrics on beside metrics off in the same run.

Wall-clock rates on a shared 2-core machine swing by ±30 % from one run to the next, so this
measures three ways, each beside its own baseline:

* ``blackhole``: ``pigeon send`` to the blackhole gateway, metrics on, off, and off again (an A/A
  control that shows the machine's own spread), the order rotated every round, rows per CPU second;
* ``replay``: every metric call of one blackhole run recorded, then replayed alone against a fresh
  :class:`~engine.observability.metrics.Metrics`: their CPU time as a share of the same send with metrics off
  (the steadiest figure: no other work in the timed loop);
* ``http_batch1``: one message per request to the simulator (its own process), on and off
  alternating: the client's CPU per request;
* ``scrape``: time to render ``/metrics`` after the blast (``Metrics.exposition``), and its size.

    python -m loadtests.metrics_cost                       # 200,000 rows, 5 rounds
    python -m loadtests.metrics_cost --rows 1000000 --rounds 3 --json loadtests/results-metrics-cost.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from loadtests._host import free_port
from loadtests._report import emit
from loadtests._segment import segment_of
from loadtests.blackhole_1m import CAMPAIGN

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
COUNTING = (
    "stage_batch",
    "queued",
    "ratelimit_wait",
    "in_flight",
    "request",
    "messages",
    "retries",
    "failover",
)


def _send(campaign: Path, runs: Path, metrics: Any) -> tuple[float, int, Any]:
    """CPU seconds of one in-process send, rows, summary. Without the campaign ledger, on both
    sides (its cost is measured by blackhole_1m.py and ledger_instructions.py; with it, every
    send after the first would be refused as already finished)."""
    from engine.run.plan import prepare
    from engine.run.send import send

    plan = prepare(campaign)
    cpu = time.process_time()
    summary = send(plan, runs_dir=runs, metrics=metrics, ledger=False)
    return time.process_time() - cpu, summary.rows, summary


def blackhole(campaign: Path, runs: Path, rounds: int) -> dict[str, Any]:
    """Rows per CPU second with metrics on, off, and off again (the A/A control: how far two
    identical sends differ on this machine), rotating the order every round (after a warm-up)."""
    from engine.observability.metrics import NO_METRICS, Metrics

    kinds = ["on", "off", "off_again"]
    runs_by: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(rounds + 1):
        for kind in kinds[r % 3 :] + kinds[: r % 3]:
            cpu, rows, _ = _send(campaign, runs, Metrics() if kind == "on" else NO_METRICS)
            if r:
                runs_by[kind].append(rows / cpu)
    med = {k: statistics.median(v) for k, v in runs_by.items()}
    return {
        **{f"rows_per_cpu_s_{k}_median": round(v) for k, v in med.items()},
        "on_over_off_median": round(med["on"] / med["off"], 4),
        "off_again_over_off_median": round(med["off_again"] / med["off"], 4),
        **{f"runs_{k}": [round(x) for x in v] for k, v in runs_by.items()},
    }


def replay(campaign: Path, runs: Path, rounds: int) -> tuple[dict[str, Any], Any]:
    """The recorded metric calls of one run, timed alone, against the send with metrics off."""
    from engine.observability.metrics import NO_METRICS, Metrics
    from engine.run.plan import prepare, prepare_run

    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    class Recording(Metrics):
        pass

    def recorder(name: str) -> Any:
        real = getattr(Metrics, name)

        def record(self: Metrics, *args: Any, **kwargs: Any) -> Any:
            calls.append((name, args, kwargs))
            return real(self, *args, **kwargs)

        return record

    for name in COUNTING:
        setattr(Recording, name, recorder(name))
    recorded = Recording()
    _send(campaign, runs, recorded)
    off = min(_send(campaign, runs, NO_METRICS)[0] for _ in range(rounds))
    stages = sorted({args[0] for name, args, _ in calls if name == "stage_batch"})
    best = float("inf")
    for _ in range(rounds):
        m = Metrics()
        prepare_run(m, prepare(campaign), stages)
        bound = [(getattr(m, name), args, kwargs) for name, args, kwargs in calls]
        cpu = time.process_time()
        for fn, args, kwargs in bound:
            fn(*args, **kwargs)
        best = min(best, time.process_time() - cpu)
    counts: dict[str, int] = {}
    for name, _, _ in calls:
        counts[name] = counts.get(name, 0) + 1
    return {
        "calls": counts,
        "calls_cpu_ms": round(best * 1000, 2),
        "send_off_cpu_s": round(off, 3),
        "share_of_send": round(best / off, 5),
    }, recorded


def scrape(metrics: Any, rounds: int = 50) -> dict[str, Any]:
    """Rendering ``/metrics`` of a registry that counted a whole blast."""
    times = []
    body = b""
    for _ in range(rounds):
        started = time.perf_counter()
        body, _ = metrics.exposition()
        times.append(time.perf_counter() - started)
    return {
        "exposition_ms_median": round(statistics.median(times) * 1000, 3),
        "bytes": len(body),
        "series": sum(1 for line in body.splitlines() if line and not line.startswith(b"#")),
    }


def http_batch1(rows: int, rounds: int, tmp: Path) -> dict[str, Any]:
    """One message per request to the simulator (own process), 10 in flight; client CPU per request."""
    from engine.observability.metrics import NO_METRICS, Metrics

    port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "loadtests.simulator", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        for _ in range(200):
            try:
                httpx.get(f"http://127.0.0.1:{port}/stats", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        (tmp / "engine-http.toml").write_text(
            f"""
[gateways.sim]
plugin = "http"
in_flight = 10
[gateways.sim.options]
url = "http://127.0.0.1:{port}/send"
max_batch = 1
max_connections = 10
timeout = 30
""",
            encoding="utf-8",
        )
        campaign = tmp / "campaign-http.toml"
        campaign.write_text(
            CAMPAIGN.replace('engine = "{engine}"', 'engine = "engine-http.toml"').format(
                segment=segment_of(rows).resolve()
            ),
            encoding="utf-8",
        )
        on: list[float] = []
        off: list[float] = []
        for r in range(rounds + 1):
            for enabled in [True, False] if r % 2 else [False, True]:
                cpu, _, summary = _send(campaign, tmp / "runs", Metrics() if enabled else NO_METRICS)
                if r:
                    (on if enabled else off).append(cpu / summary.gateways["sim"].requests * 1000)
    finally:
        sim.terminate()
        sim.wait(10)
    return {
        "rows": rows,
        "cpu_ms_per_request_on_median": round(statistics.median(on), 4),
        "cpu_ms_per_request_off_median": round(statistics.median(off), 4),
        "on_over_off_median": round(statistics.median(on) / statistics.median(off), 4),
        "runs_on": [round(x, 4) for x in on],
        "runs_off": [round(x, 4) for x in off],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios and print (and optionally save) the report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000, help="rows of the blackhole blast")
    p.add_argument("--rows-http", type=int, default=5_000, help="rows of the batch-1 http blast")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        campaign = tmp / "campaign.toml"
        campaign.write_text(
            CAMPAIGN.format(
                engine=ROOT / "config" / "engine-blackhole.toml", segment=segment_of(args.rows).resolve()
            ),
            encoding="utf-8",
        )
        report: dict[str, Any] = {"rows": args.rows, "rounds": args.rounds}
        report["blackhole"] = blackhole(campaign, tmp / "runs", args.rounds)
        report["replay"], counted = replay(campaign, tmp / "runs", args.rounds)
        report["scrape"] = scrape(counted)
        report["http_batch1"] = http_batch1(args.rows_http, args.rounds, tmp)
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
