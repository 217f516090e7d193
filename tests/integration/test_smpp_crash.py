"""The ledger's crash harness over SMPP: ``pigeon send`` through an ``smpp`` bind, SIGKILLed at
random moments and resumed (asyncio and trio in turn), against the SMSC simulator in this process.

Afterwards what the SMSC accepted is checked against the ledger, number by number (SMPP carries no
message id: every recipient of the segment has a number of its own): nobody twice, everyone
eligible either accepted or — in flight at a kill — ``unknown``, never resent.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from engine.state.ledger.records import CampaignStatus, LedgerState
from engine.state.ledger.store import Ledger
from loadtests.smsc_sim import SmscConfig, SmscThread
from tests.integration.crash_harness import files, segment, wait_for

ENV = {**os.environ, "PYTHONUTF8": "1", "TEST_SMPP_PASSWORD": "secret"}
MAX_BATCH = 200
"""Messages a request hands over at once: what a kill can leave ``unknown`` is the lane's requests
in flight (``in_flight`` × ``max_batch``), those the bind had not written yet included — a request
is one hand-over, pipelined over the bind's window of 10."""


def _files(tmp: Path, port: int) -> Path:
    """The crash harness's campaign (``crash``), sent through an ``smpp`` bind to ``port``."""
    campaign = files(tmp, port, store=tmp / "pigeon.db")
    (tmp / "engine.toml").write_text(
        f"""[store]
path = "pigeon.db"
[carriers.cm]
rate_per_second = 8000
[gateways.smsc]
plugin = "smpp"
carriers = ["cm", "cu", "ct", "cbn", "intl"]
in_flight = 4
[gateways.smsc.options]
host = "127.0.0.1"
port = {port}
system_id = "pigeon"
password_env = "TEST_SMPP_PASSWORD"
max_batch = {MAX_BATCH}
""",
        encoding="utf-8",
    )
    return campaign


def _pigeon(tmp: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "engine", *args, "--json", "-q"],
        cwd=tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def test_sigkill_mid_blast_over_smpp_then_resume_sends_everyone_once(tmp_path: Path) -> None:
    rows = 30_000
    eligible, dups = segment(tmp_path / "seg.csv", rows)
    number_of = {row: f"138{row - 2:08d}" for row in eligible}  # the segment's numbers, one per row
    rng = random.Random(15)
    kills = 0
    with SmscThread(SmscConfig(magic=False, receipts=False)) as smsc:
        campaign = _files(tmp_path, smsc.port)
        for run in range(12):
            args = ["send", str(campaign)] if run % 2 == 0 else ["resume", "crash", "--engine", "engine.toml"]
            proc = _pigeon(tmp_path, *args, "--backend", ("asyncio", "trio")[run % 2])
            if kills < 4:
                target = len(smsc.parts) + rng.randint(2_000, 6_000)
                if wait_for(lambda t=target: len(smsc.parts) >= t, proc, 60):  # type: ignore[misc]
                    time.sleep(rng.uniform(0, 0.02))
                    proc.send_signal(signal.SIGKILL)
                    proc.communicate(timeout=10)
                    kills += 1
                    continue
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            break
        else:
            pytest.fail("the campaign never finished")
        received = Counter(p.dest[-11:] for p in smsc.parts)
    assert kills == 4
    twice = [n for n, k in received.items() if k > 1]
    assert not twice, f"{len(twice)} numbers received twice, e.g. {twice[:3]}"
    ledger = Ledger(tmp_path / "pigeon.db")
    try:
        rec = ledger.campaign("crash")
        assert rec is not None and rec.status is CampaignStatus.FINISHED
        submitted = set(ledger.rows_in("crash", LedgerState.SUBMITTED).tolist())
        unknown = set(ledger.rows_in("crash", LedgerState.UNKNOWN).tolist())
        suppressed = set(ledger.rows_in("crash", LedgerState.SUPPRESSED).tolist())
    finally:
        ledger.close()
    assert suppressed == dups
    assert submitted | unknown == eligible and not submitted & unknown  # everyone handed over, once
    got = set(received)
    assert {number_of[r] for r in submitted} <= got  # the ledger says sent: the SMSC has it
    assert got - {number_of[r] for r in submitted} <= {number_of[r] for r in unknown}  # else in flight
    assert len(unknown) <= kills * 4 * MAX_BATCH  # at most the lane's requests in flight at each kill
