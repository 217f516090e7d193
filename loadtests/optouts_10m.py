"""Load test: 10,000,000 opt-outs in the embedded store — load time and memory.

Fills a fresh store (in batches, as ``pigeon optout import`` does), then measures in fresh
processes (Linux ``/proc``): the first load (the table read in chunks, the snapshot written) and a
load from the snapshot, each with its peak and lasting resident memory.

    python -m loadtests.optouts_10m --numbers 10000000
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtests._report import emit

MEASURE = """
import sys, time
from engine.state.store.sqlite import SqliteStore

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) // 1024  # MB

store = SqliteStore(sys.argv[1])
before = status("VmRSS")
t = time.perf_counter()
optouts = store.load_optouts()
elapsed = time.perf_counter() - t
peak, kept = status("VmHWM") - before, status("VmRSS") - before
print(len(optouts), round(elapsed, 3), peak, kept, optouts.nbytes // 2**20)
"""


def main(argv: list[str] | None = None) -> int:
    """Fill a store and measure loading it."""
    from engine.state.store import OptOutRecord
    from engine.state.store.sqlite import SqliteStore

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--numbers", type=int, default=10_000_000)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "pigeon.db"
        store = SqliteStore(db)
        rng = random.Random(1)
        started = time.perf_counter()
        while store.count_optouts() < args.numbers:
            n = min(1_000_000, args.numbers - store.count_optouts())
            store.add_optouts(
                OptOutRecord(f"+861{rng.randrange(3, 10)}{rng.randrange(10**9):09d}", "import")
                for _ in range(n)
            )
        filled = time.perf_counter() - started
        store.close()

        def measure() -> dict[str, float]:
            out = subprocess.run(
                [sys.executable, "-c", MEASURE, str(db)], capture_output=True, text=True, check=True
            )
            count, seconds, peak_mb, kept_mb, array_mb = out.stdout.split()
            return {
                "numbers": int(count),
                "seconds": float(seconds),
                "peak_rss_added_mb": int(peak_mb),
                "rss_kept_mb": int(kept_mb),
                "array_mb": int(array_mb),
            }

        report = {"fill_seconds": round(filled, 1), "first_load": measure(), "snapshot_load": measure()}
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
