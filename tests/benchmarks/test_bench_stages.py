"""pytest-benchmark: the stage runner and the CSV reader, each beside its Python floor in the same run.

Run with ``python -m pytest tests/benchmarks --benchmark-enable`` (the suite runs each once, untimed,
as a smoke test). Groups put each engine figure next to its baseline:

* ``stages``: normalize → route → render → count_parts over 100,000 pre-read rows, against
  formatting the same rows with ``str.format`` (the least any renderer pays per row).
* ``read``: the CSV source over a 100,000-row file, against ``csv.reader`` + ``str.format``.
"""

from __future__ import annotations

import csv
import gc
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from engine.pipeline import Batch
from engine.runtime import Plan, prepare
from tests.conftest import ROOT

ROWS = 100_000
FLOOR_FORMAT = "【小鹅优选】{1}，您在{2}的{7}元双11专属券已到账，11月11日前下单可用 拒收请回复R"
CAMPAIGN = """\
id = "bench"
engine = "{engine}"
[segment]
source = "csv"
path = "{segment}"
[template]
signature = "小鹅优选"
text = "{{name|亲爱的会员}}，您在{{city}}的{{coupon}}元双11专属券已到账，11月11日前下单可用"
"""


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
    reader, _ = plan.open_segment()
    out = [(b.nums, b.rows) for b in reader.batches(plan.engine.config.batch_size)]
    reader.close()
    return out


def _rate(benchmark: pytest.FixtureRequest, rows: int) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None and stats.stats.mean:
        benchmark.extra_info["rows_per_second"] = round(rows / stats.stats.mean)  # type: ignore[attr-defined]


@pytest.mark.benchmark(group="stages")
def test_stage_runner(benchmark, plan: Plan, source_batches) -> None:  # type: ignore[no-untyped-def]
    reader, runner = plan.open_segment()
    reader.close()
    phone_col = plan.phone_col

    def run() -> int:
        kept = 0
        for nums, rows in source_batches:
            kept += len(runner.run(Batch(list(nums), list(rows), phone_col)))
        return kept

    gc.collect()
    kept = benchmark(run)
    assert ROWS * 0.95 < kept < ROWS
    _rate(benchmark, ROWS)


@pytest.mark.benchmark(group="stages")
def test_baseline_str_format_of_the_same_rows(benchmark, plan: Plan, source_batches) -> None:  # type: ignore[no-untyped-def]
    fmt = "【小鹅优选】{1}，您在{2}的{3}元双11专属券已到账，11月11日前下单可用 拒收请回复R".format

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
def test_csv_source(benchmark, plan: Plan) -> None:  # type: ignore[no-untyped-def]
    def run() -> int:
        reader, _ = plan.open_segment()
        n = sum(len(b.nums) + len(b.rejects) for b in reader.batches(4096))
        reader.close()
        return n

    assert benchmark(run) == ROWS
    _rate(benchmark, ROWS)


@pytest.mark.benchmark(group="read")
def test_baseline_csv_reader_and_str_format(benchmark, plan: Plan) -> None:  # type: ignore[no-untyped-def]
    path = Path(plan.campaign.base_dir) / "segment.csv"
    fmt = FLOOR_FORMAT.format

    def run() -> int:
        n = 0
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            next(reader)
            for row in reader:
                fmt(*row)
                n += 1
        return n

    assert benchmark(run) == ROWS
    _rate(benchmark, ROWS)
