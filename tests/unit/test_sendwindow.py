"""Send windows and the quiet-hours stage, on a fake clock: nobody is texted at night, nobody lost."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from engine.core.clock import FakeClock
from engine.core.sendwindow import SendWindow, timezone_for
from engine.pipeline.runner import Batch
from engine.pipeline.stages import HoldQuietHours

SH = ZoneInfo("Asia/Shanghai")


def at(hour: int, minute: int = 0, day: int = 22, tz: ZoneInfo = SH) -> float:
    return datetime(2026, 11, day, hour, minute, tzinfo=tz).timestamp()


@pytest.mark.parametrize(
    ("spec", "hour", "minute", "is_open"),
    [
        ("08:00-21:00", 7, 59, False),
        ("08:00-21:00", 8, 0, True),
        ("08:00-21:00", 20, 59, True),
        ("08:00-21:00", 21, 0, False),
        ("22:00-06:00", 23, 0, True),
        ("22:00-06:00", 5, 59, True),
        ("22:00-06:00", 6, 0, False),
        ("00:00-24:00", 3, 0, True),
        ("09:30-24:00", 23, 59, True),
        ("11:30-13:00, 19:30-21:30", 11, 29, False),  # the seeds' lunch and evening windows
        ("11:30-13:00, 19:30-21:30", 12, 59, True),
        ("11:30-13:00, 19:30-21:30", 13, 0, False),
        ("11:30-13:00, 19:30-21:30", 19, 30, True),
        ("11:30-13:00,19:30-21:30", 21, 30, False),
        ("20:00-21:00, 23:00-01:00", 0, 30, True),
    ],
)
def test_is_open(spec: str, hour: int, minute: int, is_open: bool) -> None:
    assert SendWindow.parse(spec).is_open(at(hour, minute)) is is_open


def test_next_opening_is_today_or_tomorrow() -> None:
    w = SendWindow.parse("08:00-21:00")
    assert w.next_open(at(7)) == at(8)
    assert w.next_open(at(21, 30)) == at(8, day=23)
    assert w.next_open(at(12)) == at(12)
    assert w.describe_opening(at(21, 30)) == "2026-11-23 08:00 Asia/Shanghai (in 10h 30m)"


def test_a_window_of_several_ranges_opens_at_the_next_of_them() -> None:
    w = SendWindow.parse("11:30-13:00, 19:30-21:30")
    assert w.next_open(at(9)) == at(11, 30)
    assert w.next_open(at(14)) == at(19, 30)
    assert w.next_open(at(22)) == at(11, 30, day=23)
    assert str(w) == "11:30-13:00, 19:30-21:30 Asia/Shanghai"
    assert w.describe_opening(at(14)) == "2026-11-22 19:30 Asia/Shanghai (in 5h 30m)"


@pytest.mark.parametrize(
    "spec",
    [
        "8-21",
        "25:00-26:00",
        "08:00-08:00",
        "08:61-09:00",
        "08:00-24:30",
        "08:00-12:00,",
        "08:00-12:00; 14:00-15:00",
    ],
)
def test_bad_windows_say_what_to_write(spec: str) -> None:
    with pytest.raises(ValueError, match=r"08:00-21:00|out of range|empty"):
        SendWindow.parse(spec)


def test_international_numbers_use_their_country_zone() -> None:
    assert timezone_for("+12025550143") == "America/New_York"
    assert timezone_for("+85251234567") == "Asia/Hong_Kong"


def _batch(*numbers: str) -> Batch:
    b = Batch(list(range(2, 2 + len(numbers))), [(n,) for n in numbers], 0)
    b.numbers = list(numbers)
    b.carriers = ["intl" if n[0] == "+" else "cm" for n in numbers]  # as route leaves them
    return b


def test_stage_defers_everyone_at_night_and_nobody_by_day() -> None:
    clock = FakeClock(at(23))
    stage = HoldQuietHours(SendWindow.parse("08:00-21:00"), clock)
    b = _batch("13800138000", "13900139000")
    stage.process(b)
    assert b.nums == []
    assert [(r.row, r.state, r.reason) for r in b.rejects] == [
        (2, "deferred", "outside_send_window"),
        (3, "deferred", "outside_send_window"),
    ]
    assert "opens 2026-11-23 08:00 Asia/Shanghai" in b.rejects[0].detail
    clock.advance(10 * 3600)  # 09:00 next day
    b = _batch("13800138000")
    stage.process(b)
    assert b.nums == [2] and b.rejects == []


def test_stage_defers_only_the_international_recipients_asleep() -> None:
    # 10:00 in Shanghai is 21:00 the day before in New York (outside 08:00-21:00) and 10:00 in Hong Kong.
    stage = HoldQuietHours(SendWindow.parse("08:00-21:00"), FakeClock(at(10)))
    b = _batch("13800138000", "+12025550143", "+85251234567")
    stage.process(b)
    assert b.numbers == ["13800138000", "+85251234567"]
    assert [r.row for r in b.rejects] == [3]
    assert "America/New_York" in b.rejects[0].detail


def test_a_gateways_hours_hold_its_carriers_messages_too() -> None:
    from engine.core.sendwindow import ALL_DAY

    clock = FakeClock(at(20, 30))  # inside the campaign's 08:00-21:00, outside the gateway's 08:00-20:00
    stage = HoldQuietHours(SendWindow.parse("08:00-21:00"), clock, {"cm": SendWindow.parse("08:00-20:00")})
    b = _batch("13800138000", "13000130000")
    b.carriers = ["cm", "cu"]
    stage.process(b)
    assert b.numbers == ["13000130000"]
    assert "the gateway's hours (08:00-20:00 Asia/Shanghai)" in b.rejects[0].detail
    always = HoldQuietHours(ALL_DAY, FakeClock(at(3)), {})
    b = _batch("13800138000", "+12025550143")
    always.process(b)
    assert len(b) == 2
