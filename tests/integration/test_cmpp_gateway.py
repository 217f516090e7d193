"""The ``cmpp`` gateway against the ISMG simulator on loopback (CMPP 2.0 and 3.0, both event loops):
faults end in their documented states, reports correlate by Msg_Id, long messages and MO join back."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

from engine.core.errors import GatewayAuthError
from engine.core.messages import DeliveryStatus, Outcome
from engine.sending.testing import gateway_context
from loadtests.ismg_sim import Ismg, IsmgConfig, IsmgThread
from plugins.gateway_cmpp import codec as c
from plugins.gateway_cmpp.hooks import CmppConfig, CmppGateway
from plugins.session_core.longsms import read_udh
from plugins.session_core.pool import Inbox
from tests.integration.binsim_helpers import batch, plain, serving, wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_CMPP_SECRET", "secret")


@pytest.fixture(params=["2.0", "3.0"])
def version(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def ismg(version: str, request: pytest.FixtureRequest) -> Iterator[Ismg]:
    base: IsmgConfig = getattr(request, "param", IsmgConfig())
    base.version = c.V3 if version == "3.0" else c.V2
    with IsmgThread(base) as sim:
        yield sim


def gateway(port: int, version: str, **options: object) -> CmppGateway:
    cfg = CmppConfig(
        host="127.0.0.1",
        port=port,
        source_addr="901234",
        secret_env="TEST_CMPP_SECRET",
        version=version,
        src_id="10690001",
        **options,
    )  # type: ignore[arg-type]
    return CmppGateway(cfg, gateway_context("ismg"))


async def test_submits_in_the_window_and_every_report_correlates(ismg: Ismg, version: str) -> None:
    gw = gateway(ismg.port, version, window=16)
    inbox = Inbox()
    gw.attach(inbox)
    numbers = [*plain(40), "13900000666", "13900000667", "13900000668", "13900000669"]
    async with serving(gw):
        results = await gw.send(batch(numbers))
        await wait_for(lambda: len(inbox.delivery_reports) >= len(numbers), inbox)
        await anyio.sleep(0.1)
    assert all(r.outcome is Outcome.ACCEPTED for r in results)
    assert all(int(r.provider_id) >= 2**63 for r in results)  # December's Msg_Ids: the unsigned decimal
    assert len(inbox.delivery_reports) == len(numbers)  # the duplicate report was dropped
    by_id = {r.message_id: r for r in inbox.delivery_reports}
    for i, res in enumerate(results, 1):
        assert by_id[f"m-{i}"].provider_id == res.provider_id
    assert by_id["m-41"].status is DeliveryStatus.FAILED
    assert by_id["m-42"].status is DeliveryStatus.EXPIRED
    assert by_id["m-44"].status is DeliveryStatus.DELIVERED  # reported before its SUBMIT_RESP
    assert ismg.stats["window_violations"] == 0 and ismg.stats["unbind"] == 1


async def test_results_and_silence_end_in_their_outcomes(ismg: Ismg, version: str) -> None:
    gw = gateway(ismg.port, version, response_timeout=0.4)
    try:
        results = await gw.send(
            batch(["13900000444", "13900000445", "13900000446", "13900000999", "13900000001"])
        )
    finally:
        await gw.aclose()
    assert [r.outcome for r in results] == [
        Outcome.THROTTLED,
        Outcome.RETRY,
        Outcome.REJECTED,
        Outcome.UNKNOWN,
        Outcome.ACCEPTED,
    ]
    assert results[0].code == "0x8" and results[2].permanent


async def test_a_wrong_secret_is_an_auth_error(
    ismg: Ismg, version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_CMPP_SECRET", "nope")
    gw = gateway(ismg.port, version)
    with pytest.raises(GatewayAuthError):
        await gw.send(batch(plain(1)))
    await gw.aclose()
    assert ismg.stats["bind_refused"] == 1 and ismg.stats["submit_sm"] == 0


async def test_long_messages_carry_pk_fields_and_a_udh_and_mo_joins_back(ismg: Ismg, version: str) -> None:
    text = "【鸽子商城】" + "您的专属优惠券已到账😀，" * 12 + "拒收请回复R"
    gw = gateway(ismg.port, version, binds=2, active_test_interval=0.2)
    inbox = Inbox()
    gw.attach(inbox)
    async with serving(gw):
        results = await gw.send(batch(plain(3), text))
        await wait_for(lambda: len(inbox.delivery_reports) == 3, inbox)
        ismg.inject_mo("13800138000", "退订")
        ismg.inject_mo("8613800138001", "麻烦帮我退订这个号码的短信", per_part=5)
        await wait_for(lambda: len(inbox.mo_replies) >= 2, inbox)
        await anyio.sleep(0.5)  # idle: active tests keep the links
    assert all(r.outcome is Outcome.ACCEPTED for r in results)
    for dest in {p.dest for p in ismg.parts}:
        parts = [p for p in ismg.parts if p.dest == dest]
        total = len(parts)
        assert [p.fields["pk"] for p in parts] == [(total, k) for k in range(1, total + 1)]
        assert len({p.conn for p in parts}) == 1
        joined = ""
        for p in parts:
            info, n = read_udh(p.payload)
            assert p.udhi and p.coding == 8 and info is not None and info.total == total
            joined += p.payload[n:].decode("utf-16-be")
        assert joined == text
    texts = {r.from_: r.text for r in inbox.mo_replies}
    assert texts == {"+8613800138000": "退订", "+8613800138001": "麻烦帮我退订这个号码的短信"}
    assert ismg.stats["enquire_link"] >= 1  # CMPP_ACTIVE_TEST while idle


async def test_the_plugin_kit_contract_holds(ismg: Ismg, version: str) -> None:
    from engine.sending.gateway import Gateway, Receiving
    from engine.sending.testing import check_gateway

    gw = gateway(ismg.port, version)
    assert isinstance(gw, Gateway) and isinstance(gw, Receiving)
    results = await check_gateway(gw, batch(["13900000001", "13900000444", "13900000446"]))
    assert [r.outcome for r in results] == [Outcome.ACCEPTED, Outcome.THROTTLED, Outcome.REJECTED]
