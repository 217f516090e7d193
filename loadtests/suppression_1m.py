"""Load test: the stage runner with every suppression stage on, beside the foundation's stages.

1,000,000 recipients (10% of them duplicates written in another form), 1,000,000 opt-outs loaded
(5% of the segment among them), frequency-cap history for 500,000 numbers (a third of them at the
weekly cap), quiet hours checked. Both runners get the same pre-read batches in the same process,
alternating, ``--repeat`` times after a warm-up.

    python -m loadtests.suppression_1m --repeat 3
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from engine.core.carriers import default_prefix_table
from engine.core.clock import FakeClock
from engine.core.messages import number_key
from engine.core.sendwindow import SendWindow
from engine.core.template import compile_template
from engine.pipeline.runner import Batch, StageRunner
from engine.pipeline.stages import Cap, HoldQuietHours, standard_stages
from engine.state.caps import CapState, CapWindow
from engine.state.optout import OptOutSet
from loadtests._report import emit

ALL = {"cm", "cu", "ct", "cbn", "intl"}


def segment(rows: int, seed: int) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Rows (phone as written, name, coupon) with 10% duplicates in another form; and the uniques."""
    rng = random.Random(seed)
    prefixes = sorted({k[:3] for k in default_prefix_table().route if k[:3] not in {"134", "174"}})
    uniques = [rng.choice(prefixes) + f"{rng.randrange(10**8):08d}" for _ in range(rows * 9 // 10)]
    out = [(n, rng.choice(["张伟", "王芳", ""]), "20") for n in uniques]
    for _ in range(rows - len(uniques)):
        n = rng.choice(uniques)
        out.insert(rng.randrange(len(out)), (f"+86 {n[:3]}-{n[3:7]}-{n[7:]}", "李娜", "20"))
    return out, uniques


def main(argv: list[str] | None = None) -> int:
    """Run both stage runners over the same batches and report rows per second."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    rng = random.Random(7)
    rows, uniques = segment(args.rows, 1)
    optout_numbers = rng.sample(uniques, len(uniques) // 20) + [
        "13" + f"{rng.randrange(10**9):09d}" for _ in range(1_000_000 - len(uniques) // 20)
    ]
    optouts = OptOutSet.from_numbers(optout_numbers)
    now = datetime(2026, 11, 22, 10, 0, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()
    capped = rng.sample(uniques, min(500_000, len(uniques)))
    # One send in the past week for every number, a second one for a third of them (at the 2/week cap).
    hist_keys = np.array(
        [number_key(n) for i, n in enumerate(capped) for _ in range(2 if i % 3 == 0 else 1)], dtype=np.int64
    )
    hist_times = now - np.random.default_rng(3).uniform(3600, 6 * 86400, hist_keys.size)
    windows = [CapWindow(3, "calendar_day"), CapWindow(2, "7d")]
    clock = FakeClock(now)

    bound = compile_template(
        "{name|亲}，您的{coupon}元券已到账", signature="小鹅优选", opt_out_text="拒收请回复R"
    ).bind(["phone", "name", "coupon"])
    table = default_prefix_table()
    batches = [rows[i : i + args.batch_size] for i in range(0, len(rows), args.batch_size)]

    def run(with_suppression: bool) -> tuple[float, dict[str, int]]:
        if with_suppression:
            cap = Cap(CapState(windows, hist_keys, hist_times), clock)
            quiet = HoldQuietHours(SendWindow.parse("08:00-21:00"), clock)
            stages = standard_stages(bound, table, ALL, (), optouts, cap, quiet)
        else:  # the foundation's runner: normalize, route, render, count_parts
            stages = [s for s in standard_stages(bound, table, ALL) if s.name != "dedupe"]
        runner = StageRunner(stages)
        gc.collect()
        gc.freeze()
        started = time.perf_counter()
        for i, chunk in enumerate(batches):
            first = i * args.batch_size
            runner.run(Batch(list(range(first, first + len(chunk))), list(chunk), 0))  # stages drop in place
        elapsed = time.perf_counter() - started
        gc.unfreeze()
        return len(rows) / elapsed, dict(runner.tally.rejected)

    results: dict[str, list[float]] = {"baseline": [], "all_stages": []}
    reasons: dict[str, int] = {}
    for round_ in range(args.repeat + 1):
        b, _ = run(False)
        a, reasons = run(True)
        if round_:
            results["baseline"].append(b)
            results["all_stages"].append(a)
    report = {
        "rows": len(rows),
        "optouts": len(optouts),
        "cap_history_numbers": len(capped),
        "dropped_by_reason": reasons,
        **{f"{k}_median": round(statistics.median(v)) for k, v in results.items()},
        **{f"{k}_best": round(max(v)) for k, v in results.items()},
        "ratio_median": round(
            statistics.median(results["all_stages"]) / statistics.median(results["baseline"]), 3
        ),
    }
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
