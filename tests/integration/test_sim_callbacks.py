"""The simulator's delivery reports and MO replies, posted to a real receiver on loopback.

Messages go through the ``http`` gateway (on both event loops); the simulator follows each
accepted one with a signed report per the webhook contract, batched, retried when the receiver
fails, and never holding up the answers to the sends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from engine.core.messages import MessageBatch, Outcome
from engine.sending.gateway import GatewayContext
from loadtests.sim_callbacks import MO_SERVICE_NUMBER, sign
from loadtests.simulator import SimConfig, SimulatorThread
from loadtests.webhook_receiver import Receiver, ReceiverThread, verify
from plugins.gateway_http.hooks import HttpConfig, HttpGateway

pytestmark = pytest.mark.anyio

SECRET = "s3cret"


def _batch(start: int, n: int) -> MessageBatch:
    rows = list(range(start, start + n))
    return MessageBatch(
        "cm",
        rows=rows,
        numbers=[f"1380013{r:04d}" for r in rows],
        texts=["【小鹅】您好，回T退订"] * n,
        parts=[1] * n,
        id_prefix="c-",
    )


async def _send(port: int, tmp_path: Path, n: int, per_request: int = 10) -> dict[str, str]:
    """Send ``n`` messages; provider id → message id of the accepted ones."""
    gw = HttpGateway(
        HttpConfig(url=f"http://127.0.0.1:{port}/send", max_batch=per_request),
        GatewayContext(name="sim", base_dir=tmp_path, run_dir=tmp_path),
    )
    accepted: dict[str, str] = {}
    try:
        for start in range(0, n, per_request):
            batch = _batch(start, per_request)
            for mid, r in zip(batch.ids, await gw.send(batch), strict=True):
                assert r.outcome is Outcome.ACCEPTED
                accepted[r.provider_id] = mid
    finally:
        await gw.aclose()
    return accepted


async def _until(done: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:  # noqa: ASYNC110 - the other side runs in a thread
        await anyio.sleep(0.01)


async def test_every_accepted_message_gets_one_signed_report(anyio_backend: object, tmp_path: Path) -> None:
    with ReceiverThread(Receiver(secret=SECRET)) as rx:
        cfg = SimConfig(
            dlr_url=f"http://127.0.0.1:{rx.port}/reports",
            dlr_secret=SECRET,
            dlr_delay_ms=5,
            p_undeliv=0.2,
            dlr_batch=7,
        )
        with SimulatorThread(cfg) as sim:
            accepted = await _send(sim.port, tmp_path, 60)
            await _until(lambda: sim.stats["dlr_sent"] >= 60)  # counted once the receiver answered
    assert rx.refused == 0
    assert sorted(r["provider_id"] for r in rx.reports) == sorted(accepted)
    assert all(r["id"] == accepted[r["provider_id"]] for r in rx.reports)
    assert {(r["status"], r["code"]) for r in rx.reports} == {("delivered", "DELIVRD"), ("failed", "UNDELIV")}
    assert all(r["to"].startswith("+86") and r["done_at"] > 0 for r in rx.reports)
    assert max(n for _, n in rx.posts) <= 7 and len(rx.posts) >= 60 // 7
    assert sim.stats["dlr_sent"] == 60 and not sim.stats["dlr_failed"]


async def test_a_failing_receiver_gets_the_reports_again(anyio_backend: object, tmp_path: Path) -> None:
    with ReceiverThread(Receiver(fail_first=2)) as rx:
        cfg = SimConfig(dlr_url=f"http://127.0.0.1:{rx.port}/reports", dlr_batch=100)
        with SimulatorThread(cfg) as sim:
            sim.callbacks.backoff = 0.01
            accepted = await _send(sim.port, tmp_path, 20)
            await _until(lambda: sim.stats["dlr_sent"] >= 20)
    assert sorted(r["provider_id"] for r in rx.reports) == sorted(accepted)
    assert sim.stats["dlr_posts_retried"] >= 2 and not sim.stats["dlr_failed"]


async def test_a_receiver_that_never_answers_does_not_hold_up_sending(
    anyio_backend: object, tmp_path: Path
) -> None:
    with ReceiverThread(Receiver(hang=True)) as rx:
        cfg = SimConfig(dlr_url=f"http://127.0.0.1:{rx.port}/reports", dlr_batch=1)
        with SimulatorThread(cfg) as sim:
            sim.callbacks.timeout = 0.2
            sim.callbacks.backoff = 0.01
            accepted = await _send(sim.port, tmp_path, 200, per_request=1)  # while every POST hangs
            await _until(lambda: sim.stats["dlr_failed"] >= 1)
    assert len(accepted) == 200
    assert rx.seen >= 1 and not rx.reports
    assert sim.stats["dlr_failed"] >= 1 and sim.stats["dlr_posts_retried"] >= 3


async def test_delivered_recipients_reply_and_injected_replies_arrive(
    anyio_backend: object, tmp_path: Path
) -> None:
    with ReceiverThread(Receiver(secret=SECRET)) as rx:
        cfg = SimConfig(
            dlr_url=f"http://127.0.0.1:{rx.port}/reports",
            mo_url=f"http://127.0.0.1:{rx.port}/replies",
            dlr_secret=SECRET,
            p_mo=1.0,
            mo_text="TD",
        )
        with SimulatorThread(cfg) as sim:
            await _send(sim.port, tmp_path, 10)
            sim.inject_mo("+8613900139000", "退订")
            await _until(lambda: sim.stats["mo_sent"] >= 11 and sim.stats["dlr_sent"] >= 10)
    replies = {r["from"]: r for r in rx.replies}
    assert replies.pop("+8613900139000")["text"] == "退订"
    assert sorted(replies) == sorted(r["to"] for r in rx.reports)
    assert all(r["text"] == "TD" and r["to"] == MO_SERVICE_NUMBER and r["at"] > 0 for r in replies.values())
    assert sim.stats["mo_sent"] == 11


def test_the_signature_is_checked_and_stale_ones_are_refused() -> None:
    body = b'{"reports": []}'
    assert verify(SECRET, sign(SECRET, body), body)
    assert not verify(SECRET, sign("other", body), body)
    assert not verify(SECRET, sign(SECRET, body), body + b" ")
    assert not verify(SECRET, sign(SECRET, body, t=int(time.time()) - 301), body)
    assert not verify(SECRET, "garbage", body)
