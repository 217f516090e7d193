"""A range's confirmed row (engine/run/range_progress.py): the last row up to which every row of the
range has its outcome — a row in flight, released for a retry or deferred holds it back."""

from __future__ import annotations

from engine.core.messages import ACCEPTED, MessageBatch, Reject, State
from engine.pipeline.source import SegmentRange
from engine.run.range_progress import RangeProgress


def _batch(rows: list[int]) -> MessageBatch:
    n = len(rows)
    return MessageBatch(
        carrier="cm",
        numbers=[f"138{r:08d}" for r in rows],
        texts=["x"] * n,
        parts=[1] * n,
        rows=rows,
    )


def test_the_confirmed_row_waits_for_every_row_before_it() -> None:
    t = RangeProgress(SegmentRange(index=3, start=500, end=900, first_row=100, rows=40))
    assert t.confirmed() == 99, "nothing read: nothing confirmed"
    t.dropped([Reject(100, "bad_number", "", "", State.REJECTED)])
    t.read([101, 102, 103, 105], 105)  # (104: a blank line, nobody on it)
    assert t.confirmed() == 100
    t.results("gw", _batch([102, 103]), [ACCEPTED] * 2)
    assert t.confirmed() == 100, "101 is still in flight"
    t.released("gw", _batch([101]), "retry:x")
    assert t.confirmed() == 100, "released: pending again, not settled"
    t.failed("gw", _batch([101]), "rejected:x")
    assert t.confirmed() == 104
    t.unknown("gw", _batch([105]), "ambiguous:timeout")
    assert t.confirmed() == 105
    t.dropped(
        [Reject(106, "quiet_hours", "", "", State.DEFERRED), Reject(107, "dup", "", "", State.SUPPRESSED)]
    )
    t.read([], 107)
    assert t.confirmed() == 105, "a deferred row is sent later: not settled"
    t.read([108, 139], 139)
    t.results("gw", _batch([139]), [ACCEPTED])
    assert t.confirmed() == 105
    t.dropped([Reject(106, "claimed_elsewhere", "", "", State.SUPPRESSED)])
    t.results("gw", _batch([108]), [ACCEPTED])
    assert t.confirmed() == 139, "every row read up to the range's last"
    t.read([], 500)  # (a row past the range is not the range's to confirm)
    assert t.confirmed() == 139
