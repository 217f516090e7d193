"""The holdout: the same recipients whatever the batching, a share near the one asked, no bias by number."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from engine.core.holdout import held_out
from engine.pipeline.runner import Batch
from engine.pipeline.stages import Holdout, Normalize


def _keys(n: int, start: int = 13800000000) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.int64)


def test_the_share_is_binomial_around_the_setting_and_differs_by_campaign() -> None:
    keys = _keys(200_000)
    a = held_out(keys, "spring", 0.05)
    b = held_out(keys, "summer", 0.05)
    # 200k draws at 5%: sd ≈ 97; 5 sd is a bug, not chance
    assert abs(int(a.sum()) - 10_000) < 500 and abs(int(b.sum()) - 10_000) < 500
    overlap = int((a & b).sum())
    assert abs(overlap - 500) < 120  # independent campaigns: 5% of 5%
    # consecutive numbers (one block of a segment) are not held out in runs
    assert abs(int(a[:100_000].sum()) - int(a[100_000:].sum())) < 400
    assert not held_out(keys, "spring", 0.0).any()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(13000000000, 19999999999), min_size=1, max_size=300), st.integers(1, 50))
def test_the_choice_does_not_depend_on_batching(numbers: list[int], cut: int) -> None:
    whole = held_out(numbers, "c", 0.3)
    parts = np.concatenate([held_out(numbers[:cut], "c", 0.3), held_out(numbers[cut:], "c", 0.3)])
    assert (whole == parts).all()


def test_the_stage_suppresses_exactly_the_hashed_numbers() -> None:
    numbers = [str(k) for k in _keys(5000)]
    batch = Batch(list(range(2, 5002)), [[n] for n in numbers], 0)
    Normalize().process(batch)
    Holdout("c9", 0.1).process(batch)
    expect = held_out(_keys(5000), "c9", 0.1)
    dropped = {r.row for r in batch.rejects}
    assert dropped == {i + 2 for i in np.flatnonzero(expect).tolist()}
    assert all(r.reason == "held_out" and r.state == "suppressed" for r in batch.rejects)
    assert len(batch.nums) == 5000 - int(expect.sum())
