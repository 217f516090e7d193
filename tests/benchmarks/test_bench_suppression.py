"""pytest-benchmark: every suppression stage on, beside the foundation's stage runner, same rows.

100,000 recipients (10% duplicates in another form), 100,000 opt-outs, cap history for 50,000
numbers; ``loadtests/suppression_1m.py`` runs the same at 1,000,000.
"""

from __future__ import annotations

import random
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from engine.core.carriers import default_prefix_table
from engine.core.clock import FakeClock
from engine.core.messages import number_key
from engine.core.sendwindow import SendWindow
from engine.core.template import compile_template
from engine.pipeline.runner import Batch, StageRunner
from engine.pipeline.stages import Cap, HoldQuietHours, standard_stages
from engine.state.caps import CapState, CapWindow
from engine.state.optout import OptOutSet
from loadtests.suppression_1m import ALL, segment

ROWS = 100_000
NOW = datetime(2026, 11, 22, 10, 0, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()


@pytest.fixture(scope="module")
def data() -> tuple[list[list[tuple[str, str, str]]], list[str]]:
    rows, uniques = segment(ROWS, 1)
    return [rows[i : i + 1024] for i in range(0, len(rows), 1024)], uniques


def _run(stages: list, batches: list[list[tuple[str, str, str]]]) -> int:  # type: ignore[type-arg]
    runner = StageRunner(stages)
    kept = 0
    for i, chunk in enumerate(batches):
        kept += len(runner.run(Batch(list(range(i * 1024, i * 1024 + len(chunk))), list(chunk), 0)))
    return kept


BOUND = compile_template(
    "{name|亲}，您的{coupon}元券已到账", signature="小鹅优选", opt_out_text="拒收请回复R"
).bind(["phone", "name", "coupon"])


@pytest.mark.benchmark(group="suppression")
def test_baseline_foundation_stages(benchmark, data) -> None:  # type: ignore[no-untyped-def]
    batches, _ = data
    stages = [s for s in standard_stages(BOUND, default_prefix_table(), ALL) if s.name != "dedupe"]
    assert benchmark(_run, stages, batches) > ROWS * 0.95


@pytest.mark.benchmark(group="suppression")
def test_all_suppression_stages(benchmark, data) -> None:  # type: ignore[no-untyped-def]
    batches, uniques = data
    rng = random.Random(7)
    optouts = OptOutSet.from_numbers(
        rng.sample(uniques, len(uniques) // 20)
        + ["13" + f"{rng.randrange(10**9):09d}" for _ in range(95_000)]
    )
    capped = rng.sample(uniques, 50_000)
    keys = np.array([number_key(n) for i, n in enumerate(capped) for _ in range(2 if i % 3 == 0 else 1)])
    times = NOW - np.random.default_rng(3).uniform(3600, 6 * 86400, keys.size)
    clock = FakeClock(NOW)

    def run() -> int:
        cap = Cap(CapState([CapWindow(3, "calendar_day"), CapWindow(2, "7d")], keys, times), clock)
        quiet = HoldQuietHours(SendWindow.parse("08:00-21:00"), clock)
        return _run(standard_stages(BOUND, default_prefix_table(), ALL, (), optouts, cap, quiet), batches)

    kept = benchmark(run)
    assert ROWS * 0.6 < kept < ROWS * 0.85  # duplicates, opt-outs and capped numbers are gone
