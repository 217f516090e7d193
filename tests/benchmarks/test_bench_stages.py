"""pytest-benchmark: the stage runner and the CSV reader, each beside its Python floor in the same run.

Run with ``python -m pytest tests/benchmarks --benchmark-enable`` (the suite runs each once, untimed,
as a smoke test). Groups put each engine figure next to its baseline:

* ``stages``: normalize → route → render → count_parts over 100,000 pre-read rows, against
  formatting the same rows with ``str.format`` (the least any renderer pays per row).
* ``read``: the CSV source over a 100,000-row file, against ``csv.reader`` + ``str.format``.

The engine's side of each group runs twice: on the compiled batch kernels and on their
pure-Python twins (``engine.core.speedups``; the ``kernels`` fixture).
"""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from engine.pipeline.runner import Batch
from engine.pipeline.stages import Dedupe
from engine.run.plan import Plan, prepare
from loadtests.blackhole_1m import CAMPAIGN, FLOOR_FORMAT, floor_rows
from tests.conftest import ROOT

ROWS = 100_000


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    d = tmp_path_factory.mktemp("bench")
    segment = d / "segment.csv"
    subprocess.run(
        [sys.executable, str(ROOT / "config" / "make_segment.py"), "--rows", str(ROWS), "-o", str(segment)],
        check=True,
        capture_output=True,
    )
    campaign = d / "campaign.toml"
    campaign.write_text(
        CAMPAIGN.format(engine=ROOT / "config" / "engine-blackhole.toml", segment=segment), encoding="utf-8"
    )
    return prepare(campaign)


@pytest.fixture(scope="module")
def source_batches(plan: Plan) -> list[tuple[list[int], list[Sequence[str]]]]:
    segment = plan.open_segment()
    out = [(b.nums, b.rows) for b in segment.reader.batches(plan.engine.config.batch_size)]
    segment.close()
    return out


def _rate(benchmark: pytest.FixtureRequest, rows: int) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None and stats.stats.mean:
        benchmark.extra_info["rows_per_second"] = round(rows / stats.stats.mean)  # type: ignore[attr-defined]


@pytest.mark.benchmark(group="stages")
def test_stage_runner(benchmark, plan: Plan, source_batches, kernels: str) -> None:  # type: ignore[no-untyped-def]
    segment = plan.open_segment()
    segment.close()
    runner, phone_col = segment.runner, segment.phone_col

    def run() -> int:
        kept = 0
        for nums, rows in source_batches:
            kept += len(runner.run(Batch(list(nums), list(rows), phone_col)))
        return kept

    def fresh() -> None:  # each round a new run: dedupe has seen nobody yet (outside the timing)
        for stage in runner.stages:
            if isinstance(stage, Dedupe):
                stage.seen.clear()
        gc.collect()

    kept = benchmark.pedantic(run, setup=fresh, rounds=10)
    assert ROWS * 0.95 < kept < ROWS
    _rate(benchmark, ROWS)


@pytest.mark.benchmark(group="stages")
def test_baseline_str_format_of_the_same_rows(benchmark, plan: Plan, source_batches) -> None:  # type: ignore[no-untyped-def]
    # The floor's format, with fields renumbered for the projected rows (phone, name, city, coupon).
    fmt = FLOOR_FORMAT.replace("{7}", "{3}").format

    def run() -> int:
        n = 0
        for _, rows in source_batches:
            for r in rows:
                fmt(*r)
                n += 1
        return n

    assert benchmark(run) == sum(len(r) for _, r in source_batches)
    _rate(benchmark, ROWS)


@pytest.mark.benchmark(group="read")
def test_csv_source(benchmark, plan: Plan, kernels: str) -> None:  # type: ignore[no-untyped-def]
    def run() -> int:
        segment = plan.open_segment()
        n = sum(len(b.nums) + len(b.rejects) for b in segment.reader.batches(4096))
        segment.close()
        return n

    assert benchmark(run) == ROWS
    _rate(benchmark, ROWS)


@pytest.mark.benchmark(group="read")
def test_baseline_csv_reader_and_str_format(benchmark, plan: Plan) -> None:  # type: ignore[no-untyped-def]
    path = Path(plan.campaign.base_dir) / "segment.csv"
    assert benchmark(floor_rows, path) == ROWS
    _rate(benchmark, ROWS)
