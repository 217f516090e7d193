"""The ``smpp`` gateway against an SMPP server we did not write: ``smpp34.Server`` (Rust core), on both
event loops. Bind (transceiver), submit, throttle, receipts (TLV), and a 3-part UCS-2 message that
the server's side joins back into the text sent.

smpp34 1.5.0's known quirks (issue 15): it accepts any password, answers deliver_sm_resp on a
receiver-only bind with generic_nack, and sometimes drops the unbind_resp — hence transceiver
binds and a short unbind timeout here."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import smpp34

from engine.core.messages import DeliveryStatus, Outcome
from engine.sending.testing import gateway_context
from plugins.gateway_smpp.hooks import SmppConfig, SmppGateway
from plugins.session_core.longsms import read_udh
from plugins.session_core.pool import Inbox
from tests.integration.binsim_helpers import batch, plain, serving, wait_for

pytestmark = pytest.mark.anyio


@dataclass
class ThirdParty:
    """smpp34.Server on its own asyncio loop in a thread, answering the way each test needs."""

    port: int = 0
    submits: list[smpp34.SubmitSmEvent] = field(default_factory=list)
    esmes: dict[str, smpp34.Esme] = field(default_factory=dict)
    receipts: bool = True
    loop: asyncio.AbstractEventLoop | None = None
    errors: list[BaseException] = field(default_factory=list)

    async def serve(self, started: threading.Event, stop: asyncio.Event) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        server = smpp34.Server("127.0.0.1", self.port, system_id="thirdparty")
        await server.start()
        self.loop = asyncio.get_running_loop()
        started.set()
        n = 0
        pending: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                ev = await server.next()
                if isinstance(ev, smpp34.Esme):
                    self.esmes[ev.session_id] = ev
                elif isinstance(ev, smpp34.SubmitSmEvent):
                    self.submits.append(ev)
                    if ev.destination_addr.endswith("444"):
                        ev.reject(smpp34.ESME_RTHROTTLED)
                        continue
                    n += 1
                    mid = f"{n:08X}"
                    ev.accept(mid)
                    if self.receipts and ev.registered_delivery & 1:
                        t = asyncio.create_task(self._receipt(ev.session_id, ev.destination_addr, mid, n))
                        pending.add(t)
                        t.add_done_callback(pending.discard)
        finally:
            await server.stop()

    async def _receipt(self, session: str, dest: str, mid: str, n: int) -> None:
        # the server may hand over a bind's first submits before the bind itself: wait for it
        for _ in range(500):
            esme = self.esmes.get(session)
            if esme is not None:
                break
            await asyncio.sleep(0.01)
        else:
            self.errors.append(RuntimeError(f"no Esme for session {session}"))
            return
        stat, state = ("UNDELIV", 5) if dest.endswith("666") else ("DELIVRD", 2)
        text = (
            f"id:{n} sub:001 dlvrd:001 submit date:2612031200 done date:2612031201 stat:{stat} err:000 text:"
        )
        try:
            await esme.deliver_sm(
                "10690000",
                text.encode(),
                source_addr=dest,
                source_addr_ton=1,
                esm_class=0x04,
                tlvs=[
                    smpp34.Tlv(smpp34.TLV_RECEIPTED_MESSAGE_ID, mid.lower().encode() + b"\x00"),
                    smpp34.Tlv(smpp34.TLV_MESSAGE_STATE, bytes((state,))),
                ],
            )
        except Exception as exc:  # recorded: the test fails on it
            self.errors.append(exc)


@pytest.fixture
def third_party() -> Iterator[ThirdParty]:
    tp = ThirdParty()
    started = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    task: list[asyncio.Task[None]] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        task.append(loop.create_task(tp.serve(started, stop)))
        try:
            loop.run_until_complete(task[0])
        except (asyncio.CancelledError, Exception):
            pass
        finally:
            loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10), "smpp34.Server did not start"
    yield tp
    loop.call_soon_threadsafe(task[0].cancel)
    thread.join(10)


def gateway(port: int, **options: object) -> SmppGateway:
    os.environ.setdefault("TEST_SMPP34_PASSWORD", "any")
    cfg = SmppConfig(
        host="127.0.0.1",
        port=port,
        system_id="pigeon",
        password_env="TEST_SMPP34_PASSWORD",
        unbind_timeout=0.3,
        **options,
    )  # type: ignore[arg-type]
    return SmppGateway(cfg, gateway_context("thirdparty"))


async def test_bind_submit_throttle_and_receipts(third_party: ThirdParty) -> None:
    gw = gateway(third_party.port, window=10)
    inbox = Inbox()
    gw.attach(inbox)
    numbers = [*plain(20), "13900000444", "13900000666"]
    async with serving(gw):
        results = await gw.send(batch(numbers))
        await wait_for(lambda: len(inbox.delivery_reports) == 21, inbox, limit=10)
    assert [r.outcome for r in results[:20]] == [Outcome.ACCEPTED] * 20
    assert results[20].outcome is Outcome.THROTTLED and results[20].code == "0x58"
    assert results[21].outcome is Outcome.ACCEPTED
    assert not third_party.errors
    by_id = {r.message_id: r for r in inbox.delivery_reports}
    assert all(by_id[f"m-{i}"].status is DeliveryStatus.DELIVERED for i in range(1, 21))
    assert by_id["m-22"].status is DeliveryStatus.FAILED
    for i, res in enumerate(results[:20], 1):
        assert by_id[f"m-{i}"].provider_id == res.provider_id


async def test_a_three_part_ucs2_message_arrives_whole_at_the_third_party(third_party: ThirdParty) -> None:
    third_party.receipts = False
    text = "【鸽子商城】双十一专属：" + "尊敬的会员您好😀，" * 16 + "拒收请回复R"
    gw = gateway(third_party.port)
    try:
        (result,) = await gw.send(batch(["13900000001"], text))
    finally:
        await gw.aclose()
    assert result.outcome is Outcome.ACCEPTED
    parts = third_party.submits
    assert len(parts) == 3
    pieces: dict[int, str] = {}
    refs = set()
    for ev in parts:
        assert ev.data_coding == 8 and ev.esm_class & 0x40 and ev.destination_addr == "8613900000001"
        info, n = read_udh(ev.short_message)
        assert info is not None and info.total == 3
        refs.add(info.ref)
        pieces[info.seq] = ev.short_message[n:].decode("utf-16-be")  # strict: no surrogate pair was cut
    # joined as a handset does, by the UDH's part numbers (the server's Python side may see the
    # three PDUs in any order; the order on the wire is checked against our simulator)
    assert sorted(pieces) == [1, 2, 3] and len(refs) == 1
    assert "".join(pieces[k] for k in (1, 2, 3)) == text
