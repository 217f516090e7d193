"""Load test: the campaign ledger's CPU cost on `pigeon send`, counted in instructions (callgrind).

Wall-clock and CPU-second comparisons on a shared 2-core VM wander by ±10% run to run, more than
the cost being measured. Instruction counts do not: ``valgrind --tool=callgrind`` runs the same
blackhole send (``loadtests/blackhole_1m.py``'s campaign) with and without the ledger, on
``--rows`` rows and on one row (the set-up: imports, config, store), and the ledger's cost is the
ratio of the two sends' instructions once the set-up is taken out. Each run is its own process,
one after the other in this run; a 100,000-row segment takes about 3 minutes in all.

    python -m loadtests.ledger_instructions --rows 100000
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from loadtests._report import emit
from loadtests._segment import make_segment

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

_ONE_SEND = """
import sys
from pathlib import Path
from loadtests.blackhole_1m import CAMPAIGN, ROOT, engine_send
tmp, segment, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
engine = tmp / "engine.toml"
engine.write_text((ROOT / "config" / "engine-blackhole.toml").read_text("utf-8")
                  + f'\\n[store]\\npath = "{tmp.as_posix()}/pigeon.db"\\n', encoding="utf-8")
campaign = tmp / "campaign.toml"
campaign.write_text(CAMPAIGN.format(engine=engine, segment=segment), encoding="utf-8")
engine_send(campaign, tmp / "runs", ledger=mode == "ledger")
"""


def instructions(segment: Path, mode: str) -> int:
    """Instructions callgrind counts for one process sending ``segment`` (``ledger`` or ``none``)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        run = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-c",
                _ONE_SEND,
                tmp,
                str(segment),
                mode,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    found = re.search(r"Collected : (\d+)", run.stderr)
    if found is None:
        raise RuntimeError(f"callgrind printed no count:\n{run.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    """Count, compare and print (and optionally save) the report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        segment, one = make_segment(args.rows, Path(tmp) / "segment.csv"), Path(tmp) / "one.csv"
        with segment.open(encoding="utf-8") as fh:
            one.write_text(fh.readline() + fh.readline(), encoding="utf-8")
        counts = {
            (mode, n): instructions(seg, mode)
            for mode in ("none", "ledger")
            for n, seg in (("rows", segment), ("setup", one))
        }
    send = {mode: counts[(mode, "rows")] - counts[(mode, "setup")] for mode in ("none", "ledger")}
    ratio = send["ledger"] / send["none"]
    emit(
        {
            "rows": args.rows,
            "instructions": {f"{m}_{n}": v for (m, n), v in counts.items()},
            "send_instructions_per_row": {m: round(v / args.rows) for m, v in send.items()},
            "ledger_instruction_cost": round(ratio - 1, 4),
            "throughput_at_equal_ipc": round(1 / ratio, 4),
        },
        args.json,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
