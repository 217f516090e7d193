"""The token bucket is pure: time is passed in, so its promises are checked without sleeping."""

from __future__ import annotations

import pytest

from engine.ratelimit import TokenBucket


def test_burst_is_free_then_requests_wait_for_their_tokens() -> None:
    b = TokenBucket(rate=100, burst=100, now=0.0)
    assert b.reserve(0.0, 100) == 0.0
    assert b.reserve(0.0, 50) == pytest.approx(0.5)
    assert b.reserve(0.5, 10) == pytest.approx(0.1)  # the 50 owed were repaid at 0.5


def test_idle_time_refills_up_to_the_burst_only() -> None:
    b = TokenBucket(rate=10, burst=20, now=0.0)
    b.reserve(0.0, 20)
    assert b.available(100.0) == 20
    assert b.reserve(100.0, 20) == 0.0
    assert b.reserve(100.0, 1) == pytest.approx(0.1)


def test_requests_larger_than_the_burst_still_go_after_their_debt() -> None:
    b = TokenBucket(rate=10, burst=5, now=0.0)
    assert b.reserve(0.0, 25) == pytest.approx(2.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_invalid_settings(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        TokenBucket(rate, burst)
