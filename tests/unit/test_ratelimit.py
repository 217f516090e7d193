"""The rate limiter is pure: time is passed in, so its promise is checked without sleeping."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from engine.ratelimit import SlidingWindowLimiter


def test_a_full_window_makes_the_next_request_wait_for_the_oldest_to_leave() -> None:
    lim = SlidingWindowLimiter(rate=10, margin=0)
    assert lim.reserve(0.0, 7) == 0.0
    assert lim.reserve(0.2, 3) == 0.0
    assert lim.reserve(0.3, 7) == pytest.approx(0.7)  # at 1.0 the first 7 left the window
    assert lim.reserve(1.0, 3) == pytest.approx(0.2)  # at 1.2 the 3 sent at 0.2 have left


def test_oversized_requests_go_alone() -> None:
    lim = SlidingWindowLimiter(rate=5, margin=0)
    assert lim.reserve(0.0, 2) == 0.0
    assert lim.reserve(0.0, 12) == pytest.approx(1.0)


@pytest.mark.parametrize(("rate", "window"), [(0, 1), (-1, 1), (1, 0)])
def test_invalid_settings(rate: float, window: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        SlidingWindowLimiter(rate, window)


@settings(max_examples=400, deadline=None)
@given(
    rate=st.integers(1, 50),
    requests=st.lists(st.tuples(st.floats(0, 0.5), st.integers(1, 20)), max_size=60),
)
def test_no_window_of_one_second_ever_holds_more_than_the_rate(
    rate: int, requests: list[tuple[float, int]]
) -> None:
    lim = SlidingWindowLimiter(rate)  # with its default margin, as the engine runs it
    now = 0.0
    sent: list[tuple[float, int]] = []
    for gap, parts in requests:
        now += gap
        parts = min(parts, rate)  # the lane never asks for more than the rate at once
        sent.append((now + lim.reserve(now, parts), parts))
    for end, _ in sent:  # the busiest window ends at a send
        in_window = sum(p for t, p in sent if end - 1.0 < t <= end + 1e-9)
        assert in_window <= rate, (end, in_window)


def test_a_request_under_two_budgets_goes_when_both_allow_it() -> None:
    carrier = SlidingWindowLimiter(rate=10, margin=0)
    account = SlidingWindowLimiter(rate=6, margin=0)
    assert SlidingWindowLimiter.reserve_all([carrier, account], 0.0, 5) == 0.0
    assert SlidingWindowLimiter.reserve_all([carrier, account], 0.1, 5) == pytest.approx(
        0.9
    )  # the account is full
    assert carrier.used(1.0) == 5 and account.used(1.0) == 5  # both booked at 1.0 (the first 5 have left)


def test_throttling_halves_the_rate_and_success_climbs_back() -> None:
    lim = SlidingWindowLimiter(rate=100)
    lim.slow_down()
    assert lim.rate == 50
    lim.slow_down()
    lim.slow_down()
    assert lim.rate == 12.5
    for _ in range(100):
        lim.recover()
    assert lim.rate == 100  # never above the configured rate
