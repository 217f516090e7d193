"""Receipts that come after a run's last submit, on both event loops: with ``receipt_wait`` a
``pigeon send`` over SMPP keeps its bind open until every accepted message has its receipt (they
settle their recipients in the ledger), ending as soon as the last one is in; what does not come in
time leaves its recipient ``submitted`` and is counted in the summary. The same wait on CMPP."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.core.messages import DeliveryStatus, Outcome
from engine.sending.testing import gateway_context
from engine.state.ledger.records import LedgerState
from engine.state.ledger.store import Ledger
from loadtests.ismg_sim import IsmgConfig, IsmgThread
from loadtests.smsc_sim import SmscConfig, SmscThread
from plugins.gateway_cmpp.hooks import CmppConfig, CmppGateway
from plugins.session_core.pool import Inbox
from tests.integration.binsim_helpers import batch, plain
from tests.integration.crash_harness import send_with_ledger

pytestmark = pytest.mark.anyio

ROWS = 120


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SMPP_PASSWORD", "secret")
    monkeypatch.setenv("TEST_CMPP_SECRET", "secret")


def _states(db: Path) -> dict[str, int]:
    view = Ledger(db)
    try:
        return {
            s.value: view.rows_in("t", s).size
            for s in (LedgerState.DELIVERED, LedgerState.SUBMITTED, LedgerState.FAILED)
        }
    finally:
        view.close()


@pytest.mark.parametrize(
    ("receipt_delay_ms", "receipt_wait", "delivered"),
    [
        (1500, 20.0, ROWS),  # every receipt comes 1.5 s after the last answer: all recorded, no 20 s wait
        (4000, 0.5, 0),  # they come after the wait: every recipient stays submitted
        (1500, 0.0, 0),  # no wait asked for: the run ends with its last answer, as before
    ],
)
async def test_a_send_waits_for_the_receipts_still_due_then_leaves_the_rest_submitted(
    anyio_backend: object,
    tmp_path: Path,
    write: Callable[[str, str | bytes], Path],
    campaign_file: Callable[..., Path],
    receipt_delay_ms: int,
    receipt_wait: float,
    delivered: int,
) -> None:
    write("seg.csv", "phone,name,coupon\n" + "".join(f"1380013{i:04d},客{i},20\n" for i in range(ROWS)))
    campaign = campaign_file("seg.csv")
    with SmscThread(SmscConfig(receipt_delay_ms=receipt_delay_ms, magic=False)) as sim:
        (tmp_path / "engine.toml").write_text(
            f"""[store]
path = "pigeon.db"
[gateways.smsc]
plugin = "smpp"
[gateways.smsc.options]
host = "127.0.0.1"
port = {sim.port}
system_id = "pigeon"
password_env = "TEST_SMPP_PASSWORD"
window = 50
receipt_wait = {receipt_wait}
""",
            encoding="utf-8",
        )
        started = time.monotonic()
        summary = await send_with_ledger(campaign, tmp_path / "runs")
        took = time.monotonic() - started
        sent_receipts = sim.stats["receipts"]
    assert summary.states == {"sent": ROWS}
    states = _states(tmp_path / "pigeon.db")
    assert states == {"delivered": delivered, "submitted": ROWS - delivered, "failed": 0}
    # the summary counts those still without a receipt (none were asked for without a wait)
    assert summary.gateways["smsc"].without_receipt == (ROWS - delivered if receipt_wait else 0)
    if delivered:
        assert took < receipt_wait / 2  # it ended with the last receipt, not at the end of the wait
        assert sent_receipts == ROWS
    elif receipt_wait:
        assert took >= receipt_wait


async def test_a_cmpp_gateway_waits_for_its_reports_and_says_how_many_did_not_come() -> None:
    with IsmgThread(IsmgConfig(receipt_delay_ms=800, magic=False)) as ismg:
        cfg = CmppConfig(
            host="127.0.0.1",
            port=ismg.port,
            source_addr="901234",
            secret_env="TEST_CMPP_SECRET",
            src_id="10690001",
            receipt_wait=10.0,
        )
        gw = CmppGateway(cfg, gateway_context("ismg"))
        inbox = Inbox()
        gw.attach(inbox)
        try:
            results = await gw.send(batch(plain(30)))
            assert all(r.outcome is Outcome.ACCEPTED for r in results)
            assert gw.receipts_awaited == 30 and not inbox.delivery_reports  # (800 ms away)
            started = time.monotonic()
            left = await gw.wait_receipts()
            took = time.monotonic() - started
            second = await gw.send(batch(plain(5, 100), prefix="n-"))
            assert all(r.outcome is Outcome.ACCEPTED for r in second)
            short = await gw.wait_receipts(0.2)  # a wait shorter than the ISMG's delay
        finally:
            await gw.aclose()
    assert left == 0 and took < 5
    assert {r.message_id for r in inbox.delivery_reports} >= {f"m-{i}" for i in range(1, 31)}
    assert all(r.status is DeliveryStatus.DELIVERED for r in inbox.delivery_reports)
    assert short == 5
