"""Caps are never exceeded in any window, for any sequence of sends and times (fake clock)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from engine.state.caps import CapState, CapWindow, parse_period

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()
WINDOWS = [CapWindow(3, "calendar_day"), CapWindow(2, "7d"), CapWindow(1, "30s")]
KEYS = [13800138000, 13900139000, 13000130000]


def sends_in(window: CapWindow, log: list[tuple[int, float]], key: int, end: float) -> int:
    return sum(1 for k, t in log if k == key and window.start(end) <= t <= end)


@settings(max_examples=300, deadline=None)
@given(
    history=st.lists(st.tuples(st.sampled_from(KEYS), st.floats(-10 * 86400, 0)), max_size=12),
    steps=st.lists(
        st.tuples(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3), st.floats(0, 3 * 86400)),
        max_size=25,
    ),
    refresh=st.sampled_from([0.0, 60.0, 3600.0]),
)
def test_no_window_is_ever_exceeded(
    history: list[tuple[int, float]], steps: list[tuple[list[int], float]], refresh: float
) -> None:
    """Checking at each send is enough: a rolling window's busiest interval ends at a send, and a
    calendar day is the day of the send."""
    hist = [(k, T0 + t) for k, t in history]
    state = CapState(
        WINDOWS,
        np.array([k for k, _ in hist], dtype=np.int64),
        np.array([t for _, t in hist], dtype=np.float64),
        refresh=refresh,
    )
    log = list(hist)
    for keys, dt in sorted(steps, key=lambda s: s[1]):
        now = T0 + dt
        capped = set(state.over(now, keys))
        sent = list(dict.fromkeys(k for i, k in enumerate(keys) if i not in capped))  # dedupe: once per batch
        state.record(now, sent)
        log += [(k, now) for k in sent]
        for key in sent:
            for w in WINDOWS:
                assert sends_in(w, log, key, now) <= w.limit, (key, w, now)


def test_calendar_day_starts_at_local_midnight() -> None:
    w = CapWindow(3, "calendar_day", "Asia/Shanghai")
    start = w.start(T0)
    assert datetime.fromtimestamp(start, ZoneInfo("Asia/Shanghai")).hour == 0
    assert T0 - start == 9 * 3600
    assert w.reset_after(T0) - start == 86400


def test_history_counts_against_the_window_ending_now() -> None:
    s = CapState(
        [CapWindow(2, "7d")], np.array([1, 1, 2], dtype=np.int64), np.array([T0 - 8 * 86400, T0 - 3600, T0])
    )
    assert s.over(T0, [1, 2, 3]) == []  # key 1: one send in the last 7 days; key 2: one
    s.record(T0, [1])
    assert s.over(T0 + 1, [1, 2]) == [0]


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("15m", 900), ("24h", 86400), ("7d", 604800), ("calendar_day", None)]
)
def test_periods(text: str, seconds: float | None) -> None:
    assert parse_period(text) == seconds


@pytest.mark.parametrize("text", ["", "0d", "1w", "day", "-1h"])
def test_bad_periods_say_what_to_write(text: str) -> None:
    with pytest.raises(ValueError, match="calendar_day"):
        parse_period(text)


def test_a_number_twice_in_one_batch_counts_the_one_before_it() -> None:
    """An API stream has no dedupe stage: two messages to one number in one batch (two flow steps
    due at the same moment) must not both pass a cap of one."""
    state = CapState([CapWindow(1, "calendar_day")])
    assert state.over(1_700_000_000.0, [5, 7, 5, 5], repeats=True) == [2, 3]
    state2 = CapState([CapWindow(2, "24h")])
    assert state2.over(1_700_000_000.0, [5, 5, 5], repeats=True) == [2]
    # a segment's batch leaves its repeats to dedupe, which names them `duplicate`, not `capped`
    assert state.over(1_700_000_000.0, [5, 7, 5, 5]) == []
