"""The rate limiter is pure: time is passed in, so its promise is checked without sleeping.

The promise is the receiver's: in any 1 s window of *arrival* times at the provider, at most the
rate in parts — however late a request arrives after it was let go (a busy CPU, a pool wait, the
network) and however long its answer takes. The property test drives the limiter the way the lanes
do (several requests in flight, a request let go only when ``earliest`` says now) in a simulated
world where arrival and answer delays are arbitrary, and checks every window of the arrival log
against a sliding-window oracle.
"""

from __future__ import annotations

import heapq
import math

import pytest
from hypothesis import given, settings, strategies as st

from engine.sending.ratelimit import SlidingWindowLimiter


def test_a_full_window_makes_the_next_request_wait_for_the_oldest_answer_to_leave() -> None:
    lim = SlidingWindowLimiter(rate=10, margin=0)
    assert lim.earliest(0.0, 7) == 0.0
    a = lim.take(0.0, 7)
    assert lim.earliest(0.1, 3) == 0.1
    b = lim.take(0.1, 3)
    assert lim.earliest(0.2, 1) == math.inf  # all 10 in flight: only an answer makes room
    lim.done(a, 0.3)  # charged until 1.3 (it may have arrived as late as 0.3)
    lim.done(b, 0.4)
    assert lim.earliest(0.5, 7) == pytest.approx(1.3)
    assert lim.earliest(0.5, 8) == pytest.approx(1.4)
    assert lim.used(0.5) == 10 and lim.used(1.35) == 3


def test_asking_about_a_later_time_changes_nothing() -> None:
    lim = SlidingWindowLimiter(rate=10, margin=0)
    lim.done(lim.take(0.0, 7), 0.0)
    assert lim.earliest(0.0, 7) == pytest.approx(1.0)
    assert lim.earliest(1.0, 7) == 1.0  # a look at the future …
    assert lim.earliest(0.0, 7) == pytest.approx(1.0)  # … leaves the present as it was


def test_a_request_that_never_left_gives_its_parts_back() -> None:
    lim = SlidingWindowLimiter(rate=10, margin=0)
    lim.cancel(lim.take(0.0, 10))
    assert lim.earliest(0.0, 10) == 0.0


def test_a_request_over_the_rate_is_refused_not_let_through() -> None:
    lim = SlidingWindowLimiter(rate=5, margin=0)
    with pytest.raises(ValueError, match="split the request"):
        lim.earliest(0.0, 6)


def test_after_a_slow_down_a_request_over_the_lowered_rate_goes_alone() -> None:
    lim = SlidingWindowLimiter(rate=8, margin=0, min_rate=2)
    lim.slow_down()
    lim.slow_down()
    lim.slow_down()
    assert lim.rate == 2  # never below the longest message's parts
    lim.done(lim.take(0.0, 1), 0.0)
    assert lim.earliest(0.5, 5) == pytest.approx(1.0)  # 5 > 2: only into an empty window
    assert lim.earliest(1.0, 5) == 1.0


@pytest.mark.parametrize(("rate", "window"), [(0, 1), (-1, 1), (1, 0)])
def test_invalid_settings(rate: float, window: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        SlidingWindowLimiter(rate, window)


def busiest_window(arrivals: list[tuple[float, int]], window: float = 1.0) -> int:
    """The oracle: the most parts whose arrival times lie within any ``window`` seconds."""
    arrivals = sorted(arrivals)
    best = total = start = 0
    for t, parts in arrivals:
        total += parts
        while arrivals[start][0] <= t - window:
            total -= arrivals[start][1]
            start += 1
        best = max(best, total)
    return best


def simulate(
    rate: int,
    requests: list[tuple[int, float, float, bool]],
    workers: int,
    limiters: int = 1,
) -> list[tuple[float, int]]:
    """Send ``requests`` — (parts, delay from let-go to arrival, answer latency after arrival, left
    at all) — through ``workers`` concurrent senders that ask ``limiters`` limiters as a lane
    does; returns the arrival log (time, parts). Simulated time, no sleeping."""
    lims = [SlidingWindowLimiter(rate) for _ in range(limiters)]
    queue = list(reversed(requests))
    events: list[tuple[float, int, str, object]] = []  # (time, seq, kind, payload)
    seq = 0
    arrivals: list[tuple[float, int]] = []
    waiting: list[int] = []  # workers waiting for an answer

    def push(t: float, kind: str, payload: object) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, payload))

    for w in range(workers):
        push(0.0, "ready", w)
    while events:
        now, _, kind, payload = heapq.heappop(events)
        if kind == "answer":
            tickets, left = payload  # type: ignore[misc]
            for lim, ticket in tickets:
                lim.done(ticket, now) if left else lim.cancel(ticket)
            for w in waiting:
                push(now, "ready", w)
            waiting.clear()
            continue
        if kind == "ready" and queue:
            parts, to_arrival, latency, left = queue[-1]
            at = SlidingWindowLimiter.earliest_all(lims, now, parts)
            if at == math.inf:
                waiting.append(payload)  # type: ignore[arg-type]
                continue
            if at > now:
                push(at, "ready", payload)
                continue
            queue.pop()
            tickets = [(lim, lim.take(now, parts)) for lim in lims]
            if left:
                arrivals.append((now + to_arrival, parts))
                push(now + to_arrival + latency, "answer", (tickets, True))
            else:
                push(now + to_arrival, "answer", (tickets, False))
            push(now + to_arrival + latency, "ready", payload)  # the worker is free again
    return arrivals


@settings(max_examples=300, deadline=None)
@given(
    rate=st.integers(1, 60),
    workers=st.integers(1, 8),
    limiters=st.integers(1, 2),
    data=st.data(),
)
def test_no_window_of_one_second_at_the_receiver_ever_holds_more_than_the_rate(
    rate: int, workers: int, limiters: int, data: st.DataObject
) -> None:
    requests = data.draw(
        st.lists(
            st.tuples(
                st.integers(1, rate),  # the lanes split anything larger
                st.floats(0, 2.5),  # let go → arrival: a busy CPU, a pool wait, a slow network
                st.floats(0, 1.5),  # arrival → answer
                st.booleans() | st.just(True),  # False: the connection was refused (never arrived)
            ),
            max_size=60,
        )
    )
    arrivals = simulate(rate, requests, workers, limiters)
    assert busiest_window(arrivals) <= rate
    assert len(arrivals) == sum(1 for r in requests if r[3])  # and nothing was held back for ever


def test_the_limiter_keeps_the_pipe_full_when_the_network_is_quick() -> None:
    # 1,000 requests of 10 parts at 1,000 parts/s, answered in 5 ms: ~10 s, not more.
    arrivals = simulate(1000, [(10, 0.001, 0.004, True)] * 1000, workers=8)
    span = max(t for t, _ in arrivals) - min(t for t, _ in arrivals)
    assert busiest_window(arrivals) <= 1000
    assert 8.5 < span < 10.5


def test_a_request_under_two_budgets_goes_when_both_allow_it() -> None:
    carrier = SlidingWindowLimiter(rate=10, margin=0)
    account = SlidingWindowLimiter(rate=6, margin=0)
    assert SlidingWindowLimiter.earliest_all([carrier, account], 0.0, 5) == 0.0
    tickets = [(lim, lim.take(0.0, 5)) for lim in (carrier, account)]
    for lim, t in tickets:
        lim.done(t, 0.0)
    assert SlidingWindowLimiter.earliest_all([carrier, account], 0.1, 5) == pytest.approx(1.0)  # the account


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
