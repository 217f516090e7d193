"""The daily limit's quota on a fake clock: a day takes at most its number, a batch is split in order,
the count starts again at the zone's midnight, and what earlier runs took today counts."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from engine.core.messages import MessageBatch
from engine.run.daily import DailyQuota, day_start
from engine.state.ledger.records import Fingerprint
from engine.state.ledger.store import Ledger

SH = ZoneInfo("Asia/Shanghai")


def at(day: int, hour: int, minute: int = 0) -> float:
    return datetime(2026, 11, day, hour, minute, tzinfo=SH).timestamp()


def batch(carrier: str, n: int, first: int = 0) -> MessageBatch:
    return MessageBatch(
        carrier,
        rows=list(range(first, first + n)),
        numbers=[f"+86138{first + i:08d}" for i in range(n)],
        texts=["hi"] * n,
        parts=[1] * n,
        id_prefix="t-",
    )


def test_a_day_takes_its_number_in_the_batchs_order_and_the_rest_waits() -> None:
    q = DailyQuota(25, "Asia/Shanghai", at(10, 20))
    ready, held = q.take({"cm": batch("cm", 20), "cu": batch("cu", 10, 100)}, at(10, 20))
    assert [len(b) for b in ready.values()] == [20, 5] and list(held) == ["cu"]
    assert list(held["cu"].rows) == list(range(105, 110))  # the last ones wait, none lost, none twice
    assert q.room(at(10, 23, 59)) == 0
    assert q.take(held, at(10, 23, 59)) == ({}, held)  # still today: nothing more
    ready, held2 = q.take(held, at(11, 0, 1))  # the zone's midnight: a new day
    assert list(ready["cu"].rows) == list(range(105, 110)) and held2 == {}
    assert q.room(at(11, 9)) == 20


def test_earlier_runs_today_count_and_shards_split_each_day() -> None:
    q = DailyQuota(100, "Asia/Shanghai", at(10, 9), earlier=70)
    assert q.room(at(10, 9)) == 30 and q.room(at(11, 9)) == 100
    s = DailyQuota(100, "Asia/Shanghai", at(10, 9), earlier=40, share=1 / 3)
    assert s.room(at(10, 9)) == 20 and s.room(at(11, 9)) == 33  # three shards: never over 100 a day
    assert day_start(at(10, 0, 30), "Asia/Shanghai") == at(10, 0)
    assert q.describe(at(11, 8), at(10, 21)) == "2026-11-11 08:00 Asia/Shanghai (in 11h 00m)"


def test_the_ledger_counts_the_recipients_handed_over_since_a_time_each_once(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "s.db")
    run = ledger.open_campaign("c", kind="marketing", fingerprint=Fingerprint())
    run.handover(batch("cm", 10), now=at(9, 20))  # yesterday
    run.handover(batch("cm", 5, 10), now=at(10, 9))
    run.handover(batch("cm", 5, 10), now=at(10, 10))  # a retry of the same five: counted once
    run.handover(batch("cu", 3, 20), now=at(10, 11))
    run.flush()
    assert ledger.handed_since("c", day_start(at(10, 12), "Asia/Shanghai")) == 8
    assert ledger.handed_since("c", at(9, 0)) == 18
    assert ledger.handed_since("other", at(9, 0)) == 0
    ledger.close()
