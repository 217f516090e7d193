"""The ``smpp`` gateway against the SMSC simulator on loopback, on both event loops: every fault ends
in its documented state, every receipt correlates, long messages arrive whole."""

from __future__ import annotations

import os
from collections.abc import Iterator

import anyio
import pytest

from engine.core.errors import GatewayAuthError, GatewayUnreachable
from engine.core.messages import DeliveryStatus, Outcome
from engine.sending.testing import gateway_context
from loadtests.smsc_sim import Smsc, SmscConfig, SmscThread
from plugins.gateway_smpp.hooks import SmppConfig, SmppGateway
from plugins.session_core.longsms import read_udh
from plugins.session_core.pool import Inbox
from tests.integration.binsim_helpers import batch, plain, serving, wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SMPP_PASSWORD", "secret")


@pytest.fixture
def smsc(request: pytest.FixtureRequest) -> Iterator[Smsc]:
    config: SmscConfig = getattr(request, "param", SmscConfig())
    with SmscThread(config) as sim:
        yield sim


def gateway(port: int, **options: object) -> SmppGateway:
    cfg = SmppConfig(
        host="127.0.0.1", port=port, system_id="pigeon", password_env="TEST_SMPP_PASSWORD", **options
    )  # type: ignore[arg-type]
    return SmppGateway(cfg, gateway_context("smsc"))


def inbox_of(gw: SmppGateway) -> Inbox:
    inbox = Inbox()
    gw.attach(inbox)
    return inbox


async def test_accepts_pipelines_in_the_window_and_unbinds(smsc: Smsc) -> None:
    gw = gateway(smsc.port, window=10)
    try:
        results = await gw.send(batch(plain(200)))
    finally:
        await gw.aclose()
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 200
    ids = [r.provider_id for r in results]
    assert len(set(ids)) == 200
    # the simulator's ids are zero-padded upper-case hex: canonical is lower case, unpadded
    assert all(i == i.lower().lstrip("0") for i in ids)
    assert smsc.stats["window_violations"] == 0
    assert smsc.stats["unbind"] == 1
    assert [p.dest for p in smsc.parts] == [n if False else "86" + n for n in plain(200)]


@pytest.mark.parametrize("smsc", [SmscConfig(window=5, latency_ms=5)], indirect=True)
async def test_the_window_is_never_exceeded_and_a_larger_one_is_caught(smsc: Smsc) -> None:
    gw = gateway(smsc.port, window=5)
    try:
        results = await gw.send(batch(plain(60)))
    finally:
        await gw.aclose()
    assert all(r.outcome is Outcome.ACCEPTED for r in results)
    assert smsc.stats["window_violations"] == 0
    greedy = gateway(smsc.port, window=20)  # the simulator refuses beyond its window of 5
    try:
        results = await greedy.send(batch(plain(60, 100)))
    finally:
        await greedy.aclose()
    assert smsc.stats["window_violations"] > 0
    assert Outcome.THROTTLED in {r.outcome for r in results}


@pytest.mark.parametrize("smsc", [SmscConfig(receipt_delay_ms=1)], indirect=True)
async def test_magic_numbers_end_in_their_documented_outcomes(smsc: Smsc) -> None:
    gw = gateway(smsc.port, response_timeout=0.5)
    numbers = ["13900000444", "13900000445", "13900000446", "13900000999", "13900000001"]
    try:
        results = await gw.send(batch(numbers))
    finally:
        await gw.aclose()
    throttled, transient, refused, silent, fine = results
    assert throttled.outcome is Outcome.THROTTLED and throttled.code == "0x58" and throttled.retry_after > 0
    assert transient.outcome is Outcome.RETRY and transient.code == "0x8"
    assert refused.outcome is Outcome.REJECTED and refused.permanent and refused.code == "0xb"
    assert silent.outcome is Outcome.UNKNOWN and silent.code == "timeout"
    assert fine.outcome is Outcome.ACCEPTED
    assert gw.bind_stats["smsc#0"].throttled == 1
    assert gw.bind_stats["smsc#0"].expired == 1


async def test_an_idempotent_gateway_answers_retry_on_a_timeout(smsc: Smsc) -> None:
    gw = gateway(smsc.port, response_timeout=0.3, idempotent=True)
    try:
        (r,) = await gw.send(batch(["13900000999"]))
    finally:
        await gw.aclose()
    assert r.outcome is Outcome.RETRY


async def test_a_dropped_connection_leaves_the_unanswered_unknown_and_reconnects(smsc: Smsc) -> None:
    gw = gateway(smsc.port, window=1, reconnect_base=0.05)
    numbers = [*plain(3), "13900000997", *plain(3, 10)]
    try:
        results = await gw.send(batch(numbers))
        again = await gw.send(batch(plain(2, 20)))
    finally:
        await gw.aclose()
    outcomes = [r.outcome for r in results]
    assert outcomes[:3] == [Outcome.ACCEPTED] * 3
    assert outcomes[3] is Outcome.UNKNOWN  # it may have been taken: never resent blindly
    # The rest went on a new bind — or, when the new bind was not up in time (a busy machine),
    # came back "retry" for the lane to send again: never lost, never failed.
    assert set(outcomes[4:]) <= {Outcome.ACCEPTED, Outcome.RETRY}
    assert [r.outcome for r in again] == [Outcome.ACCEPTED] * 2
    assert smsc.stats["binds"] == 2
    assert gw.bind_stats["smsc#0"].reconnects == 1


async def test_connection_refused_is_unreachable() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gw = gateway(port)
    with pytest.raises(GatewayUnreachable):
        await gw.send(batch(plain(2)))
    await gw.aclose()


async def test_a_wrong_password_is_an_auth_error(smsc: Smsc, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SMPP_PASSWORD", "wrong")
    gw = gateway(smsc.port)
    with pytest.raises(GatewayAuthError):
        await gw.send(batch(plain(2)))
    await gw.aclose()
    assert smsc.stats["bind_refused"] == 1 and smsc.stats["submit_sm"] == 0


async def test_no_password_in_the_environment_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.core.errors import ConfigError

    monkeypatch.delenv("TEST_SMPP_PASSWORD")
    with pytest.raises(ConfigError, match="TEST_SMPP_PASSWORD"):
        gateway(1)


@pytest.mark.parametrize(
    "smsc",
    [
        pytest.param(
            SmscConfig(receipt_id=form, receipt_tlvs=tlvs, id_format=fmt),
            id=f"{fmt}-{form}-{'tlv' if tlvs else 'text'}",
        )
        for fmt, form, tlvs in [
            ("hex", "same", True),
            ("hex", "decimal", False),
            ("hex", "lower", False),
            ("hex", "unpadded", True),
            ("dec", "same", False),
        ]
    ],
    indirect=True,
)
async def test_every_receipt_correlates_whatever_form_the_id_takes(smsc: Smsc) -> None:
    gw = gateway(smsc.port, window=20)
    inbox = inbox_of(gw)
    numbers = [*plain(30), "13900000666", "13900000667", "13900000668", "13900000669"]
    async with serving(gw):
        results = await gw.send(batch(numbers))
        await wait_for(lambda: len(inbox.delivery_reports) >= len(numbers), inbox)
        await gw.send(batch(plain(1, 500), prefix="late-"))
        await wait_for(lambda: len(inbox.delivery_reports) >= len(numbers) + 1, inbox)
        await anyio.sleep(0.1)  # (a duplicate would have arrived by now)
    by_id = {r.message_id: r for r in inbox.delivery_reports}
    assert len(inbox.delivery_reports) == len(numbers) + 1  # one each: the duplicate was ignored
    assert all(r.message_id for r in inbox.delivery_reports)  # every one matched its message
    for i, res in enumerate(results, 1):
        assert by_id[f"m-{i}"].provider_id == res.provider_id
    assert by_id["m-31"].status is DeliveryStatus.FAILED and by_id["m-31"].code.startswith("UNDELIV")
    assert by_id["m-32"].status is DeliveryStatus.EXPIRED
    assert by_id["m-33"].status is DeliveryStatus.DELIVERED
    assert by_id["m-34"].status is DeliveryStatus.DELIVERED  # its receipt came before the submit answer
    assert gw.pool.correlator.duplicates >= 1


TEXT3 = "【鸽子商城】" + "尊敬的会员，您的双十一专属优惠券已到账😀，" * 7 + "拒收请回复R"


@pytest.mark.parametrize("concat", ["udh8", "udh16", "sar"])
async def test_a_long_ucs2_message_goes_in_order_on_one_bind_and_joins_back(smsc: Smsc, concat: str) -> None:
    gw = gateway(smsc.port, binds=2, concat=concat)
    inbox = inbox_of(gw)
    async with serving(gw):
        results = await gw.send(batch(plain(4), TEXT3))
        await wait_for(lambda: len(inbox.delivery_reports) == 4, inbox)
    assert all(r.outcome is Outcome.ACCEPTED for r in results)
    for dest in {p.dest for p in smsc.parts}:
        parts = [p for p in smsc.parts if p.dest == dest]
        assert len({p.conn for p in parts}) == 1  # one bind
        texts, seqs = [], []
        for p in parts:
            assert p.coding == 8
            if concat == "sar":
                assert p.sar is not None and not p.udhi
                seqs.append(p.sar[2])
                texts.append(p.payload.decode("utf-16-be"))
            else:
                info, n = read_udh(p.payload)
                assert p.udhi and info is not None
                seqs.append(info.seq)
                texts.append(p.payload[n:].decode("utf-16-be"))
        assert seqs == list(range(1, len(parts) + 1))  # in order
        assert "".join(texts) == TEXT3
    assert len(smsc.parts) % 4 == 0 and len(smsc.parts) >= 12
    assert all(r.status is DeliveryStatus.DELIVERED for r in inbox.delivery_reports)  # one per message


async def test_one_failed_part_fails_the_long_message(smsc: Smsc) -> None:
    gw = gateway(smsc.port)
    inbox = inbox_of(gw)
    async with serving(gw):
        await gw.send(batch(["13900000666", "13900000001"], TEXT3))
        await wait_for(lambda: len(inbox.delivery_reports) == 2, inbox)
    status = {r.message_id: r.status for r in inbox.delivery_reports}
    assert status == {"m-1": DeliveryStatus.FAILED, "m-2": DeliveryStatus.DELIVERED}


async def test_mo_replies_are_reassembled_and_read_between_sends(smsc: Smsc) -> None:
    gw = gateway(smsc.port, enquire_link_interval=0.2)
    inbox = inbox_of(gw)
    async with anyio.create_task_group() as tg:
        tg.start_soon(gw.serve)
        await wait_for(lambda: smsc.bound.is_set())
        smsc.inject_mo("8613800138000", "R")
        smsc.inject_mo("8613800138001", "您好，请帮我退订这个服务，谢谢！", per_part=6)
        await wait_for(lambda: len(inbox.mo_replies) == 2, inbox)
        await anyio.sleep(0.5)  # idle: the gateway keeps the link alive
        tg.cancel_scope.cancel()
    await gw.aclose()
    texts = {r.from_: r.text for r in inbox.mo_replies}
    assert texts == {"+8613800138000": "R", "+8613800138001": "您好，请帮我退订这个服务，谢谢！"}
    assert smsc.stats["enquire_link"] >= 1
    assert smsc.stats["deliver_sm_resp"] >= 4


@pytest.mark.parametrize("smsc", [SmscConfig(latency_ms=2)], indirect=True)
async def test_a_rate_is_split_among_the_binds(smsc: Smsc) -> None:
    gw = gateway(smsc.port, binds=2, rate_per_second=200, window=50)
    start = anyio.current_time()
    try:
        results = await gw.send(batch(plain(300)))
        elapsed = anyio.current_time() - start
    finally:
        await gw.aclose()
    assert all(r.outcome is Outcome.ACCEPTED for r in results)
    assert len({p.conn for p in smsc.parts}) == 2
    # 300 parts at 200/s over two binds: each bind takes 100 in its first second, the rest in the next
    assert elapsed >= 1.0
    per_conn = sorted(sum(1 for p in smsc.parts if p.conn == c) for c in {p.conn for p in smsc.parts})
    assert per_conn == [150, 150]
    assert smsc.stats["binds"] == 2


def test_the_password_is_not_in_the_config_type() -> None:
    assert "password" not in {f for f in SmppConfig.__struct_fields__ if not f.endswith("_env")}
    assert os.environ.get("TEST_SMPP_PASSWORD") == "secret"


@pytest.mark.parametrize("smsc", [SmscConfig(latency_ms=2, receipt_delay_ms=1, keep=False)], indirect=True)
async def test_two_sends_sharing_a_small_window_lose_no_receipt(smsc: Smsc) -> None:
    """A send that waits for window room reads for the others; a deadline of its own must not cut
    a read step short between answering a deliver_sm and handing its receipt over (it did)."""
    gw = gateway(smsc.port, window=10)
    inbox = inbox_of(gw)
    n = 1500
    async with serving(gw):
        async with anyio.create_task_group() as tg:
            for k in range(3):
                tg.start_soon(gw.send, batch(plain(500, k * 500), prefix=f"s{k}-"))
        await wait_for(lambda: len(inbox.delivery_reports) >= n, inbox, limit=10)
    assert smsc.stats["deliver_sm_resp"] == n
    assert len({r.message_id for r in inbox.delivery_reports}) == n


async def test_the_plugin_kit_contract_holds(smsc: Smsc) -> None:
    from engine.sending.gateway import Gateway, Receiving
    from engine.sending.testing import check_gateway

    gw = gateway(smsc.port)
    assert isinstance(gw, Gateway) and isinstance(gw, Receiving)
    mixed = batch(["13900000001", "13900000444", "13900000446"])
    results = await check_gateway(gw, mixed)
    assert [r.outcome for r in results] == [Outcome.ACCEPTED, Outcome.THROTTLED, Outcome.REJECTED]
