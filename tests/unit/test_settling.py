"""The rule that pairs a provider's statuses with the messages ``pigeon settle`` asks about."""

from __future__ import annotations

from engine.core.messages import DeliveryStatus
from engine.sending.settling import ProviderStatus, SettleQuery, match

Q = SettleQuery(message_id="c-7", number="+8613800138007", sent_at=1000.0, keys=frozenset({"c-5", "c-7"}))


def status(**kw: object) -> ProviderStatus:
    base: dict[str, object] = {
        "number": Q.number,
        "key": "c-5",
        "status": DeliveryStatus.DELIVERED,
        "at": 1001.0,
    }
    return ProviderStatus(**{**base, **kw})  # type: ignore[arg-type]


def test_a_status_of_the_request_settles_the_message() -> None:
    (m,), used = match([Q], [status()])
    assert m.final and m.status == status() and used == {0}


def test_another_requests_send_to_the_same_number_is_not_this_message() -> None:
    (m,), used = match([Q], [status(key="other-1"), status(number="+8613800138008")])
    assert m.status is None and not m.final and used == set()


def test_a_status_from_before_the_request_is_an_earlier_send() -> None:
    (m,), _ = match([Q], [status(at=1000.0 - 121)])
    assert m.status is None
    (m,), _ = match([Q], [status(at=1000.0 - 119)])  # within the clock skew allowed
    assert m.final
    (m,), _ = match([Q], [status(at=0.0)])  # no time given: the key and number decide
    assert m.final


def test_a_final_status_wins_over_waiting_and_a_later_over_an_earlier() -> None:
    waiting = status(status=DeliveryStatus.UNKNOWN, at=1005.0)
    failed = status(status=DeliveryStatus.FAILED, at=1002.0, code="MK:0001")
    (m,), used = match([Q], [waiting, failed])
    assert m.status == failed and used == {0, 1}
    (m,), _ = match([Q], [waiting])
    assert not m.final and m.status == waiting
    later = status(at=1009.0, code="late")
    (m,), _ = match([Q], [status(), later])
    assert m.status == later


def test_nothing_found_is_never_taken_only_when_the_provider_listed_every_record() -> None:
    (m,), _ = match([Q], [])
    assert not m.absent and not m.final
    (m,), _ = match([Q], [], frozenset({"c-7"}))
    assert m.absent and m.final
    (m,), _ = match([Q], [status()], frozenset({"c-7"}))  # found: not absent
    assert not m.absent and m.status is not None
