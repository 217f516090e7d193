"""Load test: a 1,000,000-row CSV through `pigeon send` to the blackhole gateway, beside the floor.

``send`` runs without the campaign ledger, ``send_ledger`` with it (every recipient's state in the
store, as `pigeon send` does), alternating in the same rounds; ``ledger_us_per_row`` is the
ledger's write path alone (the same hand-over and outcome transactions, no engine around them).

The floor is what any Python program pays for the same input: reading the CSV with the stdlib
``csv`` module and formatting each row with ``str.format``. Both run in this process, alternating,
``--repeat`` times each after one warm-up round; the report gives the best and median of each and
their ratio, plus the stage runner alone (the engine's stages without reading the file) measured
the same way, and the send split across ``--shards`` worker processes (default 2; the floor stays
one process: ``shards_to_floor_ratio_median`` is a two-core figure against a one-core floor).
``send`` counts Prometheus metrics (the default); ``send_metrics_off`` is the same send with them
off, measured in the same rounds: ``metrics_cost_median`` is what counting costs. ``send_pure`` is
the same send on the pure-Python twins of the compiled batch kernels (``engine.core.speedups``):
``pure_to_floor_ratio_median`` is the engine without its C extension, ``kernels_speedup_median``
what the extension buys.

    python -m loadtests.blackhole_1m                 # generates loadtests/data/segment-1m.csv once
    python -m loadtests.blackhole_1m --rows 200000 --repeat 3 --json results.json
"""

from __future__ import annotations

import argparse
import csv
import gc
import statistics
import tempfile
import time
from pathlib import Path

from loadtests._report import emit
from loadtests._segment import segment_of

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


def engine_send(
    campaign: Path,
    runs: Path,
    *,
    ledger: bool = False,
    metrics: bool = True,
    cpu: list[float] | None = None,
    shards: int = 1,
    compiled: bool = True,
) -> tuple[float, dict[str, int]]:
    """Rows per second through `pigeon send` (in process) and the summary's states; with
    ``ledger``, every recipient's state kept in the campaign ledger (a fresh store each time);
    ``metrics`` False turns the Prometheus counting off (it is on by default); ``shards`` above
    1 splits the send across that many worker processes (``pigeon send --shards``); ``compiled``
    False runs the pure-Python twins of the batch kernels."""
    from engine.core import speedups
    from engine.observability.metrics import NO_METRICS
    from engine.run.plan import prepare
    from engine.run.send import send

    if speedups.use(compiled) != compiled:
        raise SystemExit("engine.core._speedups is not built: pip install -e . with a C compiler")

    plan = prepare(campaign)
    if ledger:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{plan.engine.store_path}{suffix}").unlink(missing_ok=True)
    started, cpu_started = time.perf_counter(), time.process_time()  # the whole send(): with the
    try:
        summary = send(  # ledger, its opening (SHA-256) counts too
            plan, runs_dir=runs, ledger=ledger, metrics=None if metrics else NO_METRICS, shards=shards
        )
    finally:
        speedups.use(True)
    if cpu is not None:  # CPU seconds: steadier than wall clock on a shared machine
        cpu.append(time.process_time() - cpu_started)
    return summary.rows / (time.perf_counter() - started), summary.states


def ledger_only(rows: int, store: Path, size: int = 1000) -> float:
    """Microseconds per recipient of the ledger's write path alone: ``rows`` recipients handed over
    and accepted in requests of ``size`` (one hand-over and one outcome transaction each), as the
    blackhole run writes them."""
    from engine.core.messages import ACCEPTED, MessageBatch
    from engine.state.ledger.records import Fingerprint
    from engine.state.ledger.store import Ledger

    for suffix in ("", "-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    ledger = Ledger(store)
    run = ledger.open_campaign("ledger-only", kind="marketing", fingerprint=Fingerprint())
    requests = []
    for start in range(2, rows + 2, size):
        nums = list(range(start, min(start + size, rows + 2)))
        n = len(nums)
        requests.append(
            MessageBatch("cm", rows=nums, numbers=["13800138000"] * n, texts=["t"] * n, parts=[1] * n)
        )
    started = time.perf_counter()
    for batch in requests:
        run.handover(batch, now=0.0)
        run.results("sink", batch, [ACCEPTED] * len(batch))
    elapsed = time.perf_counter() - started
    ledger.close()
    return elapsed / rows * 1e6


def stages_only(campaign: Path) -> float:
    """Rows per second through the stage runner alone, on batches read beforehand."""
    from engine.pipeline.runner import Batch
    from engine.run.plan import prepare

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


_RATES = ("floor", "send", "send_ledger", "send_pure", "stages", "send_shards", "send_shards_ledger")
"""The figures in rows per second (the others are µs per row and CPU seconds)."""


def main(argv: list[str] | None = None) -> int:
    """Run the scenario and print (and optionally save) the report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3, help="runs of each measurement (default 3)")
    p.add_argument("--segment", type=Path, help="CSV to use (default: generated under loadtests/data)")
    p.add_argument(
        "--shards",
        type=int,
        default=2,
        help="also send on this many worker processes (pigeon send --shards; default 2, 1: not)",
    )
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = p.parse_args(argv)

    segment = args.segment or segment_of(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        campaign = Path(tmp) / "campaign.toml"
        engine = Path(tmp) / "engine.toml"  # the blackhole engine with its store in the temp dir
        engine.write_text(
            (ROOT / "config" / "engine-blackhole.toml").read_text("utf-8")
            + f'\n[store]\npath = "{Path(tmp).as_posix()}/pigeon.db"\n',
            encoding="utf-8",
        )
        campaign.write_text(CAMPAIGN.format(engine=engine, segment=segment.resolve()), encoding="utf-8")
        results: dict[str, list[float]] = {
            "floor": [],
            "send": [],
            "send_ledger": [],
            "send_metrics_off": [],
            "send_pure": [],
            "stages": [],
            "send_shards": [],
            "send_shards_ledger": [],
            "ledger_us_per_row": [],
            "send_cpu_s": [],
            "send_ledger_cpu_s": [],
        }
        states: dict[str, int] = {}
        for round_ in range(args.repeat + 1):  # round 0 warms caches and CPU up; not reported
            f = floor(segment)
            cpu: list[float] = []
            cpu_ledger: list[float] = []
            rate, states = engine_send(campaign, Path(tmp) / "runs", cpu=cpu)
            rate_ledger, _ = engine_send(campaign, Path(tmp) / "runs", ledger=True, cpu=cpu_ledger)
            off, _ = engine_send(campaign, Path(tmp) / "runs", metrics=False)
            pure, pure_states = engine_send(campaign, Path(tmp) / "runs", compiled=False)
            assert pure_states == states, (pure_states, states)  # the same outcome, without C
            st = stages_only(campaign)
            led = ledger_only(args.rows, Path(tmp) / "ledger-only.db")
            if args.shards > 1:
                sharded, sharded_states = engine_send(campaign, Path(tmp) / "runs", shards=args.shards)
                assert sharded_states == states, (sharded_states, states)  # the same outcome, split
                sharded_ledger, _ = engine_send(campaign, Path(tmp) / "runs", ledger=True, shards=args.shards)
            if round_:
                if args.shards > 1:
                    results["send_shards"].append(sharded)
                    results["send_shards_ledger"].append(sharded_ledger)
                results["ledger_us_per_row"].append(led)
                results["send_cpu_s"] += cpu
                results["send_ledger_cpu_s"] += cpu_ledger
                results["floor"].append(f)
                results["send"].append(rate)
                results["send_ledger"].append(rate_ledger)
                results["send_metrics_off"].append(off)
                results["send_pure"].append(pure)
                results["stages"].append(st)
    report = {
        "segment": str(segment),
        "repeat": args.repeat,
        "states": states,
        "shards": args.shards,
        **{f"{k}_best": round(max(v)) for k, v in results.items() if k in _RATES and v},
        **{f"{k}_median": round(statistics.median(v)) for k, v in results.items() if k in _RATES and v},
        "send_to_floor_ratio_best": round(max(results["send"]) / max(results["floor"]), 3),
        "send_to_floor_ratio_median": round(
            statistics.median(results["send"]) / statistics.median(results["floor"]), 3
        ),
        **(
            {
                "shards_to_floor_ratio_median": round(
                    statistics.median(results["send_shards"]) / statistics.median(results["floor"]), 3
                ),
                "shards_ledger_to_floor_ratio_median": round(
                    statistics.median(results["send_shards_ledger"]) / statistics.median(results["floor"]), 3
                ),
            }
            if args.shards > 1
            else {}
        ),
        "pure_to_floor_ratio_median": round(
            statistics.median(results["send_pure"]) / statistics.median(results["floor"]), 3
        ),
        "kernels_speedup_median": round(
            statistics.median(a / b for a, b in zip(results["send"], results["send_pure"], strict=True)), 3
        ),
        "ledger_to_no_ledger_ratio_median": round(
            statistics.median(results["send_ledger"]) / statistics.median(results["send"]), 3
        ),
        "metrics_cost_median": round(
            1 - statistics.median(results["send"]) / statistics.median(results["send_metrics_off"]), 4
        ),
        "ledger_to_no_ledger_ratio_per_round_median": round(
            statistics.median(b / a for a, b in zip(results["send"], results["send_ledger"], strict=True)), 3
        ),
        "ledger_to_no_ledger_ratio_per_round": [
            round(b / a, 3) for a, b in zip(results["send"], results["send_ledger"], strict=True)
        ],
        "send_us_per_row_median": round(1e6 / statistics.median(results["send"]), 3),
        "ledger_cpu_cost_median": round(
            statistics.median(results["send_ledger_cpu_s"]) / statistics.median(results["send_cpu_s"]) - 1, 3
        ),
        "ledger_only_us_per_row_median": round(statistics.median(results["ledger_us_per_row"]), 3),
        "runs": {k: [round(x, 3) if x < 100 else round(x) for x in v] for k, v in results.items()},
    }
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
