"""The session core's sending loop against the SMSC simulator, on both event loops: a sender never
waits for traffic that already came, receipts read between sends are handed over, and a message
no PDU can carry fails alone."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

from engine.core.messages import Outcome
from engine.sending.testing import gateway_context
from loadtests.smsc_sim import Smsc, SmscConfig, SmscThread
from plugins.gateway_smpp.hooks import SmppConfig, SmppGateway
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


async def test_a_sender_refills_at_once_when_another_task_read_its_answers(smsc: Smsc) -> None:
    # A serve task reads the bind too: answers it reads while the sender writes must not leave the
    # sender waiting in a read of its own for traffic that already came (until a keepalive, 60 s).
    gw = gateway(smsc.port, window=16, response_timeout=60, enquire_link_interval=60)
    inbox = Inbox()
    gw.attach(inbox)
    async with serving(gw):
        for round_ in range(10):
            with anyio.fail_after(10):
                results = await gw.send(batch(plain(44, round_ * 44), prefix=f"r{round_}-"))
            assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 44
        await wait_for(lambda: len(inbox.delivery_reports) >= 440, inbox)
    assert len({r.message_id for r in inbox.delivery_reports}) == 440
    assert smsc.stats["window_violations"] == 0


@pytest.mark.parametrize("smsc", [SmscConfig(latency_ms=1, receipt_delay_ms=1)], indirect=True)
async def test_receipts_a_sender_read_are_handed_over_when_its_send_ends(smsc: Smsc) -> None:
    # No serve task: the sender is the only reader, and what it read is delivered before it returns
    # (or at the latest when the gateway closes), without more traffic from the SMSC.
    gw = gateway(smsc.port, window=8)
    inbox = Inbox()
    gw.attach(inbox)
    try:
        with anyio.fail_after(10):
            first = await gw.send(batch(plain(20)))
            await anyio.sleep(0.2)  # the receipts arrive; nobody reads
            second = await gw.send(batch(plain(20, 20), prefix="n-"))  # reads them, with its answers
    finally:
        await gw.aclose()
    assert all(r.outcome is Outcome.ACCEPTED for r in [*first, *second])
    got = {r.message_id for r in inbox.delivery_reports}
    assert {f"m-{i}" for i in range(1, 21)} <= got
    assert len(got) == len(inbox.delivery_reports)


async def test_a_message_no_pdu_can_carry_fails_alone(smsc: Smsc) -> None:
    gw = gateway(smsc.port)
    too_long = "优" * (255 * 67 + 1)  # 256 parts: no concatenation header can number them
    try:
        results = await gw.send(batch(plain(3), texts=["【测试】好", too_long, "【测试】好"]))
    finally:
        await gw.aclose()
    assert [r.outcome for r in results] == [Outcome.ACCEPTED, Outcome.REJECTED, Outcome.ACCEPTED]
    assert results[1].code == "unencodable" and results[1].permanent
    assert len(smsc.parts) == 2
