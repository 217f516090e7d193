"""Receipt correlation when ids read two ways: each receipt settles its own message exactly once."""

from __future__ import annotations

import pytest

from engine.core.messages import DeliveryStatus
from plugins.session_core.receipts import Correlator, Receipt, canonical_id


@pytest.mark.parametrize("early", [True, False])
@pytest.mark.parametrize("with_addr", [True, False])
def test_decimal_receipts_for_hex_ids_that_collide_across_bases(early: bool, with_addr: bool) -> None:
    """Ids 0x01..0x60 in hex, receipts in decimal: "16" is this message's 0x10 and another's 0x16."""
    corr = Correlator("g", clock=lambda: 0.0)
    n = 0x60
    ids = [f"{i:08X}" for i in range(1, n + 1)]
    to = [f"+86139{i:08d}" for i in range(1, n + 1)]
    receipts = [Receipt(str(i), "DELIVRD", addr=to[i - 1][1:] if with_addr else "") for i in range(1, n + 1)]
    reports = []
    if early:
        for r in receipts:
            reports += corr.receipt(r, DeliveryStatus.DELIVERED)
    for i, mid in enumerate(ids):
        reports += corr.track(f"m-{i + 1}", [canonical_id(mid)], to[i])
    if not early:
        for r in receipts:
            reports += corr.receipt(r, DeliveryStatus.DELIVERED)
    reports += corr.expire(1e9)
    if with_addr:  # the handset's number settles every ambiguous reading
        assert sorted(r.message_id for r in reports) == sorted(f"m-{i}" for i in range(1, n + 1))
        assert all(r.provider_id == canonical_id(ids[int(r.message_id[2:]) - 1]) for r in reports)
        assert corr.duplicates == 0
    else:
        # Without the handset's number an id that reads two ways cannot always be settled: on ids
        # this dense every decimal receipt also names another message in hex, and some go to the
        # wrong one (a limit stated in docs/carriers-smpp-cmpp.md; SMPP receipts carry the number
        # in source_addr, CMPP ids are binary). No message gets two reports.
        assert len({r.message_id for r in reports}) == len(reports) <= n


@pytest.mark.parametrize(
    ("value", "offset", "epoch"),
    [
        ("2612031201", 0.0, 1796299260.0),
        ("261203120130", 0.0, 1796299290.0),
        ("2612032001", 8.0, 1796299260.0),  # 20:01 in China is 12:01 UTC
        ("2613031201", 0.0, 0.0),
        ("26120312", 0.0, 0.0),
    ],
)
def test_receipt_dates(value: str, offset: float, epoch: float) -> None:
    from datetime import UTC, datetime

    from plugins.session_core.receipts import receipt_time

    assert receipt_time(value, offset) == epoch
    if epoch:
        assert datetime.fromtimestamp(epoch, UTC).strftime("%y%m%d%H%M") == "2612031201"


@pytest.mark.parametrize("ahead", [1, 3, 7])
def test_an_early_receipt_in_hex_waits_for_its_own_message_not_one_whose_id_reads_the_same(
    ahead: int,
) -> None:
    """The interop race (smpp34, issue 15): the receipt for hex ``14`` is read before the answer
    that tracks its message, while the message tracked as ``e`` (decimal 14) still waits for its
    own receipt. The number in the receipt says it is not ``e``'s: it is parked, and settles its
    own message when that is tracked; ``e``'s own receipt then settles ``e``."""
    corr = Correlator("g", clock=lambda: 0.0)
    n = 0x30
    ids = [canonical_id(f"{i:08X}") for i in range(1, n + 1)]
    to = [f"+86139{i:08d}" for i in range(1, n + 1)]
    receipts = [Receipt(f"{i:08x}", "DELIVRD", addr=to[i - 1][1:]) for i in range(1, n + 1)]
    reports = []
    for i in range(n):  # each receipt is read `ahead` answers before its message is tracked
        if i + ahead < n:
            reports += corr.receipt(receipts[i + ahead], DeliveryStatus.DELIVERED)
        reports += corr.track(f"m-{i + 1}", [ids[i]], to[i])
    for r in receipts[:ahead]:
        reports += corr.receipt(r, DeliveryStatus.DELIVERED)
    reports += corr.expire(1e9)
    assert sorted((r.message_id, r.provider_id) for r in reports) == sorted(
        (f"m-{i + 1}", ids[i]) for i in range(n)
    )
    assert corr.duplicates == 0 and corr.unmatched == 0 and corr.awaiting == 0
