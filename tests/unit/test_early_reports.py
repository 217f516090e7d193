"""Reports parked until their message's submit answer is recorded: kept for their time, bounded."""

from __future__ import annotations

from engine.core.messages import DeliveryReport, DeliveryStatus
from engine.service.early_reports import EarlyReports


def report(pid: str) -> DeliveryReport:
    return DeliveryReport(provider_id=pid, status=DeliveryStatus.DELIVERED)


def test_reports_are_given_back_until_their_time_is_up() -> None:
    early = EarlyReports(ttl=10.0)
    early.park([report("a"), report("")], now=100.0)  # without a provider id nothing can match later
    assert len(early) == 1
    items = early.take(now=105.0)
    assert [r.provider_id for _, r in items] == ["a"] and len(early) == 0
    early.put_back(items)  # still unmatched: kept with the time it first came
    early.park([report("b")], now=108.0)
    assert [r.provider_id for _, r in early.take(now=111.0)] == ["b"]  # "a" is 11 s old
    assert early.expired == 1


def test_past_the_limit_the_oldest_go_first() -> None:
    early = EarlyReports(limit=3)
    early.park([report(str(i)) for i in range(5)], now=0.0)
    assert [r.provider_id for _, r in early.take(now=1.0)] == ["2", "3", "4"]
    assert early.expired == 2
