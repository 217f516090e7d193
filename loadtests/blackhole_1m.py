"""Load test: a 1,000,000-row CSV through `pigeon send` to the blackhole gateway, beside the floor.

The floor is what any Python program pays for the same input: reading the CSV with the stdlib
``csv`` module and formatting each row with ``str.format``. Both run in this process, alternating,
``--repeat`` times each after one warm-up round; the report gives the best and median of each and
their ratio, plus the stage runner alone (the engine's stages without reading the file) measured
the same way. ``send`` counts Prometheus metrics (the default); ``send_metrics_off`` is the same
send with them off, measured in the same rounds: ``metrics_cost_median`` is what counting costs.

    python -m loadtests.blackhole_1m                 # generates loadtests/data/segment-1m.csv once
    python -m loadtests.blackhole_1m --rows 200000 --repeat 3 --json results.json
"""

from __future__ import annotations

import argparse
import csv
import gc
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtests._report import emit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CAMPAIGN = """\
id = "load-blackhole"
kind = "marketing"
engine = "{engine}"

[segment]
source = "csv"
path = "{segment}"

[template]
signature = "小鹅优选"
text = "{{name|亲爱的会员}}，您在{{city}}的{{coupon}}元双11专属券已到账，11月11日前下单可用"

[policy]
# The foundation's pipeline, at any hour: no store, no sending hours (loadtests/suppression_1m.py
# measures those stages).
send_window = ""
respect_optouts = false
"""
FLOOR_FORMAT = "【小鹅优选】{1}，您在{2}的{7}元双11专属券已到账，11月11日前下单可用 拒收请回复R"


def floor_rows(segment: Path) -> int:
    """What any Python program pays: csv.reader + str.format over every row; returns the rows."""
    fmt = FLOOR_FORMAT.format
    n = 0
    with segment.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)
        for row in reader:
            fmt(*row)
            n += 1
    return n


def floor(segment: Path) -> float:
    """Rows per second of :func:`floor_rows` (the Python floor)."""
    started = time.perf_counter()
    n = floor_rows(segment)
    return n / (time.perf_counter() - started)


def engine_send(campaign: Path, runs: Path, *, metrics: bool = True) -> tuple[float, dict[str, int]]:
    """Rows per second through `pigeon send` (in process) and the summary's states; ``metrics``
    False turns the Prometheus counting off (it is on by default)."""
    from engine.metrics import NO_METRICS
    from engine.runtime import prepare, send

    plan = prepare(campaign)
    summary = send(plan, runs_dir=runs, metrics=None if metrics else NO_METRICS)
    return summary.rows_per_second, summary.states


def stages_only(campaign: Path) -> float:
    """Rows per second through the stage runner alone, on batches read beforehand."""
    from engine.pipeline import Batch
    from engine.runtime import prepare

    plan = prepare(campaign)
    segment = plan.open_segment()
    size = plan.engine.config.batch_size
    batches = [(sb.nums, sb.rows, sb.rejects) for sb in segment.reader.batches(size)]
    segment.close()
    runner, phone_col = segment.runner, segment.phone_col
    n = sum(len(nums) + len(rejects) for nums, _, rejects in batches)
    gc.collect()
    gc.freeze()
    started = time.perf_counter()
    for nums, rows, rejects in batches:
        runner.run(Batch(nums, rows, phone_col, list(rejects)))
    elapsed = time.perf_counter() - started
    gc.unfreeze()
    return n / elapsed


def main(argv: list[str] | None = None) -> int:
    """Run the scenario and print (and optionally save) the report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3, help="runs of each measurement (default 3)")
    p.add_argument("--segment", type=Path, help="CSV to use (default: generated under loadtests/data)")
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = p.parse_args(argv)

    segment = args.segment or HERE / "data" / f"segment-{args.rows}.csv"
    if not segment.exists():
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "config" / "make_segment.py"),
                "--rows",
                str(args.rows),
                "-o",
                str(segment),
            ],
            check=True,
        )
    with tempfile.TemporaryDirectory() as tmp:
        campaign = Path(tmp) / "campaign.toml"
        campaign.write_text(
            CAMPAIGN.format(engine=ROOT / "config" / "engine-blackhole.toml", segment=segment.resolve()),
            encoding="utf-8",
        )
        results: dict[str, list[float]] = {"floor": [], "send": [], "send_metrics_off": [], "stages": []}
        states: dict[str, int] = {}
        for round_ in range(args.repeat + 1):  # round 0 warms caches and CPU up; not reported
            f = floor(segment)
            rate, states = engine_send(campaign, Path(tmp) / "runs")
            off, _ = engine_send(campaign, Path(tmp) / "runs", metrics=False)
            st = stages_only(campaign)
            if round_:
                results["floor"].append(f)
                results["send"].append(rate)
                results["send_metrics_off"].append(off)
                results["stages"].append(st)
    report = {
        "segment": str(segment),
        "repeat": args.repeat,
        "states": states,
        **{f"{k}_best": round(max(v)) for k, v in results.items()},
        **{f"{k}_median": round(statistics.median(v)) for k, v in results.items()},
        "send_to_floor_ratio_best": round(max(results["send"]) / max(results["floor"]), 3),
        "send_to_floor_ratio_median": round(
            statistics.median(results["send"]) / statistics.median(results["floor"]), 3
        ),
        "metrics_cost_median": round(
            1 - statistics.median(results["send"]) / statistics.median(results["send_metrics_off"]), 4
        ),
        "runs": {k: [round(x) for x in v] for k, v in results.items()},
    }
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
