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
