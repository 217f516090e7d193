"""The run recorder's latency histogram: constant memory, percentiles within 10%."""

from __future__ import annotations

import random

import pytest

from engine.report import LatencyHistogram


def test_percentiles_are_within_ten_percent() -> None:
    rng = random.Random(4)
    values = sorted(rng.lognormvariate(-4, 1) for _ in range(20_000))
    h = LatencyHistogram()
    for v in values:
        h.observe(v)
    for q in (0.5, 0.9, 0.99, 0.999):
        exact = values[int(q * len(values)) - 1]
        assert exact <= h.percentile(q) <= exact * 1.1 * 1.1, q
    assert len(h.counts) < 200  # buckets, not samples


def test_empty_and_tiny() -> None:
    h = LatencyHistogram()
    assert h.percentile(0.99) == 0.0
    h.observe(0.0)
    assert h.percentile(0.5) == pytest.approx(1e-4 * 1.1)
