"""A crash loop: kill, cut off and resume one campaign until it finishes, then count what broke.

Each run is ``pigeon send`` (or ``pigeon resume``, on asyncio or trio) against the simulator; every
0.5–4 s while it sends, up to ``--rounds`` faults in all, the loop does one of: SIGKILL the engine;
take the gateway down for a few seconds (the run pauses and goes on); take it down past
``outage.limit`` (the run stops, exit 6); take it down and SIGKILL the engine while its requests
wait. Then it lets a last run finish and compares the simulator's log of every message that
arrived with the ledger, row for row::

    python -m loadtests.crash_loop --rows 200000 --rounds 30 --json loadtests/results-crash-loop.json

Reported: kills, outages, runs stopped by the outage limit, recipients received twice
(``duplicates``), eligible recipients never received and not ``unknown`` (``missing``), ``unknown``
rows, ``unknown`` rows that never reached the gateway (``unknown_never_sent``: must be 0 but for a
kill between a hand-over's commit and its write), rows left not final, and the busiest 1 s window
of parts that arrived at the simulator against the configured rate. Bounded: ``--rounds`` faults,
at most ``--rounds`` + 2 runs of at most ``--round-seconds`` each after their faults.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from engine.state.ledger.records import LedgerState
from engine.state.ledger.store import Ledger
from loadtests.simulator import SimConfig, SimulatorThread

__all__ = ["main", "run"]

ENV = {**os.environ, "PYTHONUTF8": "1"}


def _segment(path: Path, rows: int) -> set[int]:
    """``rows`` recipients, one in 997 with a bad number; the eligible row numbers."""
    eligible: set[int] = set()
    with path.open("w", encoding="utf-8") as f:
        f.write("phone,name,coupon\n")
        for i in range(rows):
            if i % 997 == 5:
                f.write(f"12{i:05d},坏号,10\n")
            else:
                f.write(f"138{i:08d},客{i % 100},20\n")
                eligible.add(i + 2)
    return eligible


def _files(tmp: Path, port: int, rate: int, limit: float) -> Path:
    (tmp / "engine.toml").write_text(
        f"""runs_dir = "runs"
[store]
path = "pigeon.db"
[retry]
max_attempts = 3
base = 0.01
cap = 0.05
[outage]
limit = {limit}
[carriers.cm]
rate_per_second = {rate}
[gateways.sim]
plugin = "http"
in_flight = 4
[gateways.sim.options]
url = "http://127.0.0.1:{port}/send"
max_batch = 250
""",
        encoding="utf-8",
    )
    campaign = tmp / "campaign.toml"
    campaign.write_text(
        """id = "loop"
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


def _pigeon(tmp: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "engine", *args, "--json", "-q"],
        cwd=tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def _fault(
    proc: subprocess.Popen[str], sim: Any, rng: random.Random, limit: float, counts: Counter[str]
) -> None:
    """One fault, chosen at random, while ``proc`` sends."""
    fault = rng.choice(["kill", "short outage", "long outage", "outage then kill"])
    if fault == "kill":
        proc.send_signal(signal.SIGKILL)
        counts["kills"] += 1
    elif fault == "short outage":  # shorter than the limit: the run pauses and goes on
        sim.go_down()
        time.sleep(rng.uniform(0.5, limit - 1))
        sim.come_up()
        counts["outages"] += 1
    elif fault == "long outage":  # past the limit: the run must stop by itself (exit 6)
        sim.go_down()
        counts["outages"] += 1
        try:
            proc.wait(limit + 15)
        except subprocess.TimeoutExpired:
            counts["outage_not_stopped_in_time"] += 1
        sim.come_up()
    else:  # requests waiting on a refusing gateway when the kill comes
        sim.go_down()
        time.sleep(rng.uniform(0.3, 2.0))
        proc.send_signal(signal.SIGKILL)
        sim.come_up()
        counts["outages"] += 1
        counts["kills"] += 1


def run(rows: int, rounds: int, rate: int, seed: int, round_seconds: float) -> dict[str, Any]:
    """The loop; returns the figures."""
    rng = random.Random(seed)
    counts: Counter[str] = Counter()
    with TemporaryDirectory() as d, SimulatorThread(SimConfig(latency_ms=1, jitter_ms=4)) as sim:
        tmp = Path(d)
        eligible = _segment(tmp / "seg.csv", rows)
        limit = 3.0
        campaign = _files(tmp, sim.port, rate, limit)
        finished = False
        faults = 0
        for n in range(rounds + 2):  # bounded: every run but the last meets at least one fault
            backend = ("asyncio", "trio")[n % 2]
            args = ["send", str(campaign)] if n % 3 != 2 else ["resume", "loop", "--engine", "engine.toml"]
            proc = _pigeon(tmp, *args, "--backend", backend)
            counts["runs"] += 1
            while proc.poll() is None and faults < rounds:  # faults at random moments while it sends
                deadline = time.monotonic() + rng.uniform(0.5, 4.0)
                while time.monotonic() < deadline and proc.poll() is None:
                    time.sleep(0.01)
                if proc.poll() is None:
                    _fault(proc, sim, rng, limit, counts)
                    faults += 1
            try:
                _, err = proc.communicate(timeout=round_seconds)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            counts[f"exit_{proc.returncode}"] += 1
            if "Traceback" in err:
                counts["tracebacks"] += 1
            if proc.returncode == 0:
                finished = True
                break
        logged = Counter(int(mid.rsplit("-", 1)[1]) for _, mid, *_ in sim.log)
        ledger = Ledger(tmp / "pigeon.db")
        try:
            unknown = set(ledger.rows_in("loop", LedgerState.UNKNOWN).tolist())
            submitted = set(ledger.rows_in("loop", LedgerState.SUBMITTED).tolist())
            open_rows = set(ledger.rows_in("loop", LedgerState.PENDING, LedgerState.SUBMITTING).tolist())
            reasons = ledger.counts("loop").reasons
        finally:
            ledger.close()
        peak = sim.max_arrived_parts_per_second().get("cm", 0)
    return {
        "rows": rows,
        "rounds": rounds,
        "seed": seed,
        "finished": finished,
        "runs": counts["runs"],
        "kills": counts["kills"],
        "outages": counts["outages"],
        "stopped_by_outage_limit": counts["exit_6"],
        "outage_not_stopped_in_time": counts["outage_not_stopped_in_time"],
        "tracebacks": counts["tracebacks"],
        "exits": {k: v for k, v in counts.items() if k.startswith("exit_")},
        "received": len(logged),
        "duplicates": sum(1 for v in logged.values() if v > 1),
        "missing": len(eligible - set(logged) - unknown),
        "unknown": len(unknown),
        "unknown_reasons": reasons.get("unknown", {}),
        "unknown_never_sent": len(unknown - set(logged)),
        "not_final": len(open_rows & eligible),
        "recorded_sent_not_received": len(submitted - set(logged)),
        "rate_limit": rate,
        "peak_arrived_parts_per_second": peak,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the loop and print (or write) the figures."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument(
        "--rate", type=int, default=5_000, help="China Mobile's parts per second (sets how long a run lasts)"
    )
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--round-seconds", type=float, default=120.0)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    figures = run(args.rows, args.rounds, args.rate, args.seed, args.round_seconds)
    text = json.dumps(figures, indent=2, ensure_ascii=False)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    broken = figures["duplicates"] or figures["missing"] or figures["not_final"] or not figures["finished"]
    return 1 if broken or figures["peak_arrived_parts_per_second"] > args.rate else 0


if __name__ == "__main__":
    raise SystemExit(main())
