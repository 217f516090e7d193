"""The run recorder: its latency histogram (constant memory, percentiles within 10%) and how it
records a gateway's per-message answers."""

from __future__ import annotations

import random

import pytest

from engine.core.messages import MessageBatch, Outcome, State, SubmitResult
from engine.observability.report import LatencyHistogram, RunRecorder


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


def test_per_message_answers_end_sent_failed_or_unknown() -> None:
    rec = RunRecorder({"cm": 0.05})
    batch = MessageBatch(
        "cm", rows=[2, 3, 4], numbers=["13800138000"] * 3, texts=["t"] * 3, parts=[1, 2, 1], id_prefix="c-"
    )
    rec.results(
        "gw",
        batch,
        [
            SubmitResult(Outcome.ACCEPTED, provider_id="p1"),
            SubmitResult(Outcome.REJECTED, code="isv.MOBILE_NUMBER_ILLEGAL", permanent=True),
            SubmitResult(Outcome.UNKNOWN, code="ambiguous:InternalError.Timeout"),
        ],
    )
    assert rec.states == {State.SENT: 1, State.FAILED: 1, State.UNKNOWN: 1}
    assert rec.reasons[State.UNKNOWN] == {"ambiguous:InternalError.Timeout": 1}
    assert rec.reasons[State.FAILED] == {"rejected:isv.MOBILE_NUMBER_ILLEGAL": 1}
    assert rec.carriers["cm"].parts == 1  # only the accepted message is billed
