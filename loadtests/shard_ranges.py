"""Load test: `pigeon send --shards N` on byte ranges (the default) against hash sharding and one process.

One segment (``--rows``, 200,000 by default; the repeated numbers of ``config/make_segment.py``
included) to the blackhole gateway, in rounds that alternate, after one warm-up round:

- ``one``: one process (``--shards 1``);
- ``hash``: ``--shards N`` where every shard reads the whole file and keeps its numbers
  (``send(..., shard_by="hash")``, ``PIGEON_SHARD_BY=hash``);
- ``ranges``: ``--shards N`` where each shard reads one byte range and claims every number for
  its row in a table in shared memory (a compare-and-swap per number; with the ledger, the
  numbers each batch won are also logged in the store), so a number in two ranges is sent once.

All setups run in the same rounds, so that a machine shared with other work weighs on each alike.

Each without the ledger and with it (``*_ledger``: every recipient's state in the store, as
`pigeon send` does by default). Reported per setup: rows/s (best and median), CPU seconds of the
parent and its shards together, and whether the outcome (states and reasons) is the same as one
process's — duplicates included.

    python -m loadtests.shard_ranges --rows 200000 --shards 2 --repeat 2 \
        --json loadtests/results-shard-ranges.json
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtests._report import emit
from loadtests._segment import segment_of
from loadtests.blackhole_1m import CAMPAIGN, ROOT

SETUPS = ("one", "hash", "ranges")


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run(campaign: Path, runs: Path, setup: str, shards: int, *, ledger: bool) -> tuple[float, float, Any]:
    """Rows/s, CPU seconds (this process and its shards) and the outcome (states, reasons)."""
    from engine.run.plan import prepare
    from engine.run.send import send

    plan = prepare(campaign)
    for suffix in ("", "-wal", "-shm"):  # a fresh store: no ledger, no claims of the last round
        Path(f"{plan.engine.store_path}{suffix}").unlink(missing_ok=True)
    started, cpu = time.perf_counter(), _cpu()
    summary = send(
        plan,
        runs_dir=runs,
        ledger=ledger,
        shards=1 if setup == "one" else shards,
        shard_by="hash" if setup == "hash" else "ranges",
    )
    elapsed = time.perf_counter() - started
    return summary.rows / elapsed, _cpu() - cpu, (summary.states, summary.reasons)


def main(argv: list[str] | None = None) -> int:
    """Run the scenario and print (and optionally save) the report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2, help="measured rounds (after one warm-up)")
    p.add_argument("--segment", type=Path, help="CSV to use (default: generated under loadtests/data)")
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = p.parse_args(argv)
    segment = args.segment or segment_of(args.rows)
    rates: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}
    same: dict[str, bool] = {}
    with tempfile.TemporaryDirectory() as tmp:
        campaign, engine = Path(tmp) / "campaign.toml", Path(tmp) / "engine.toml"
        engine.write_text(
            (ROOT / "config" / "engine-blackhole.toml").read_text("utf-8")
            + f'\n[store]\npath = "{Path(tmp).as_posix()}/pigeon.db"\n',
            encoding="utf-8",
        )
        campaign.write_text(CAMPAIGN.format(engine=engine, segment=segment.resolve()), encoding="utf-8")
        for round_ in range(args.repeat + 1):
            for ledger in (False, True):
                base: Any = None
                for setup in SETUPS:
                    name = setup + ("_ledger" if ledger else "")
                    rate, cpu, outcome = run(campaign, Path(tmp) / "runs", setup, args.shards, ledger=ledger)
                    if setup == "one":
                        base = outcome
                    same[name] = same.get(name, True) and outcome == base
                    if round_:
                        rates.setdefault(name, []).append(rate)
                        cpus.setdefault(name, []).append(cpu)
    report: dict[str, Any] = {
        "segment": str(segment),
        "rows": args.rows,
        "shards": args.shards,
        "repeat": args.repeat,
        "rows_per_s_best": {k: round(max(v)) for k, v in rates.items()},
        "rows_per_s_median": {k: round(statistics.median(v)) for k, v in rates.items()},
        "cpu_s_median": {k: round(statistics.median(v), 2) for k, v in cpus.items()},
        "same_outcome_as_one_process": same,
    }
    for suffix in ("", "_ledger"):
        one, hashed, ranged = (statistics.median(rates[s + suffix]) for s in SETUPS)
        report[f"ranges_to_hash{suffix}"] = round(ranged / hashed, 3)
        report[f"ranges_to_one{suffix}"] = round(ranged / one, 3)
        report[f"hash_to_one{suffix}"] = round(hashed / one, 3)
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
