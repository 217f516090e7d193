"""``pigeon send`` through an ``smpp`` gateway, on both event loops: the receipts the bind reads while
the campaign sends settle its recipients in the ledger (``delivered`` / ``failed``), as the service's
do, and a reply "R" read on the bind opts the number out for this run and later ones."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.state.ledger.records import LedgerState
from engine.state.ledger.store import Ledger
from engine.state.store.sqlite import SqliteStore
from loadtests.smsc_sim import SmscConfig, SmscThread
from tests.integration.crash_harness import send_with_ledger

pytestmark = pytest.mark.anyio

ROWS = 600


@pytest.fixture(autouse=True)
def _password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SMPP_PASSWORD", "secret")


async def test_receipts_read_during_a_send_settle_its_recipients(
    anyio_backend: object,
    tmp_path: Path,
    write: Callable[[str, str | bytes], Path],
    campaign_file: Callable[..., Path],
) -> None:
    write("seg.csv", "phone,name,coupon\n" + "".join(f"1380013{i:04d},客{i},20\n" for i in range(ROWS)))
    campaign = campaign_file("seg.csv")
    sim_config = SmscConfig(receipt_delay_ms=10, receipt_id="decimal", receipt_tlvs=False, magic=False)
    with SmscThread(sim_config) as sim:
        (tmp_path / "engine.toml").write_text(
            f"""[store]
path = "pigeon.db"
[carriers.cm]
rate_per_second = 200
[gateways.smsc]
plugin = "smpp"
[gateways.smsc.options]
host = "127.0.0.1"
port = {sim.port}
system_id = "pigeon"
password_env = "TEST_SMPP_PASSWORD"
""",
            encoding="utf-8",
        )
        replied: list[bool] = []

        def reply() -> None:  # a customer replies R mid-blast, on the bind
            deadline = time.monotonic() + 10
            while sim.stats["submit_sm"] < 100 and time.monotonic() < deadline:
                time.sleep(0.005)
            sim.inject_mo("+8613800130007", "R")
            replied.append(True)

        replier = threading.Thread(target=reply, daemon=True)
        replier.start()
        summary = await send_with_ledger(campaign, tmp_path / "runs")
        replier.join(10)
    assert replied and summary.states == {"sent": ROWS}
    view = Ledger(tmp_path / "pigeon.db")
    try:
        delivered = view.rows_in("t", LedgerState.DELIVERED).size
        failed = view.rows_in("t", LedgerState.FAILED).size
    finally:
        view.close()
    # 200 parts a second: three windows; receipts come 10 ms after each answer, so all but the last
    # window's are read on the bind before the run ends (the rest reach a running `pigeon serve`).
    assert delivered + failed >= ROWS - 200, (delivered, failed)
    store = SqliteStore(tmp_path / "pigeon.db")
    try:
        record = store.optout_records(["+8613800130007"])["+8613800130007"]
    finally:
        store.close()
    assert record.source == "mo" and record.reason == "R"  # opted out for every later campaign
