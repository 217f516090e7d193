"""A full round trip through Jasmin (PyPI; an SMS gateway we did not write), on both event loops: the
``smpp`` gateway binds to Jasmin's SMPP server API and submits; Jasmin routes each message through
its own SMPP connector to the SMSC simulator, which sends receipts back; Jasmin maps them to its own
message ids and pushes them to our bind as deliver_sm, where every one must correlate. A 3-part
UCS-2 message must reach the SMSC whole and in order. Setup and the Jasmin version: jasmin_helpers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.core.messages import DeliveryStatus, Outcome
from engine.sending.testing import gateway_context
from loadtests.smsc_sim import Smsc, SmscConfig, SmscThread
from plugins.gateway_smpp.hooks import SmppConfig, SmppGateway
from plugins.session_core.longsms import read_udh
from plugins.session_core.pool import Inbox
from tests.integration.binsim_helpers import batch, plain, serving, wait_for
from tests.integration.jasmin_helpers import jasmin_in_front_of, jasmin_log

pytestmark = pytest.mark.anyio

TEXT3 = "【鸽子商城】" + "尊敬的会员，您的双十一专属优惠券已到账😀，" * 7 + "拒收请回复R"
UUID = re.compile(r"[0-9a-f]{1,8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
"""Jasmin's message ids, in canonical form (leading zeros dropped, as for every provider id)."""


@pytest.fixture(scope="module")
def jasmin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Smsc, int, Path]]:
    tmp = tmp_path_factory.mktemp("jasmin")
    config = SmscConfig(system_id="jasmin", password="secret", receipt_delay_ms=100)
    with (
        SmscThread(config) as smsc,
        jasmin_in_front_of(smsc.port, tmp, smsc_user="jasmin", smsc_password="secret") as port,
    ):
        yield smsc, port, tmp


@pytest.fixture(autouse=True)
def _password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_JASMIN_PASSWORD", "secret")


async def test_submits_and_receipts_make_a_round_trip_through_jasmin(
    jasmin: tuple[Smsc, int, Path], anyio_backend: str
) -> None:
    smsc, port, tmp = jasmin
    start = 100 if "trio" in str(anyio_backend) else 0  # (each loop's run its own numbers)
    numbers = [*plain(5, start), f"1390000{start:01d}666"[-11:]]
    texts = ["【测试】您的验证码是1234"] * 4 + [TEXT3, "【测试】您的验证码是5678"]
    gw = SmppGateway(
        SmppConfig(
            host="127.0.0.1", port=port, system_id="pigeon", password_env="TEST_JASMIN_PASSWORD", window=10
        ),
        gateway_context("jasmin"),
    )
    inbox = Inbox()
    gw.attach(inbox)
    async with serving(gw):
        results = await gw.send(batch(numbers, texts))
        try:
            await wait_for(lambda: len(inbox.delivery_reports) >= len(numbers), inbox, limit=60)
        except TimeoutError:
            pytest.fail(f"{len(inbox.delivery_reports)} receipts of {len(numbers)}:\n{jasmin_log(tmp)}")
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * len(numbers)
    assert all(UUID.fullmatch(r.provider_id) for r in results)  # Jasmin's own ids, canonical as they are
    by_id = {r.message_id: r for r in inbox.delivery_reports}
    assert len(by_id) == len(numbers)  # every receipt correlated, one per message
    for i, res in enumerate(results, 1):
        assert by_id[f"m-{i}"].provider_id == res.provider_id
    assert by_id["m-6"].status is DeliveryStatus.FAILED  # the SMSC's UNDELIV, through Jasmin
    assert all(by_id[f"m-{i}"].status is DeliveryStatus.DELIVERED for i in range(1, 6))
    # the 3-part UCS-2 message reached the SMSC whole: three parts, one reference, in order
    parts = [p for p in smsc.parts if p.dest.endswith(numbers[4])]
    assert len(parts) == 3
    texts_at_smsc, seqs = [], []
    for p in parts:
        info, n = read_udh(p.payload)
        assert p.coding == 8 and p.udhi and info is not None and info.total == 3
        seqs.append(info.seq)
        texts_at_smsc.append(p.payload[n:].decode("utf-16-be"))
    assert sorted(seqs) == [1, 2, 3]
    assert "".join(t for _, t in sorted(zip(seqs, texts_at_smsc, strict=True))) == TEXT3
