"""Helpers of the crash and fault tests: a segment with known eligible rows, engine and campaign
files on the simulator, the ``pigeon`` command as a subprocess, and the promise checked row for row
(the simulator's log of received messages against the campaign's ledger and the caps' history)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from engine.core.clock import SystemClock
from engine.observability.report import RunSummary
from engine.run.blast import _send
from engine.run.plan import _open_ledger, new_run_dir, prepare
from engine.state.ledger.records import CampaignStatus, LedgerState
from engine.state.ledger.store import Ledger
from loadtests.simulator import Simulator

ENV = {**os.environ, "PYTHONUTF8": "1"}


def segment(path: Path, rows: int) -> tuple[set[int], set[int]]:
    """A segment of ``rows`` data rows; every 997th phone is invalid, every 499th repeats the number
    three rows up (written another way). Returns the eligible row numbers and the duplicates'."""
    eligible: set[int] = set()
    dups: set[int] = set()
    with path.open("w", encoding="utf-8") as f:
        f.write("phone,name,coupon\n")
        for i in range(rows):
            row = i + 2  # the header is row 1
            if i % 997 == 5:
                f.write(f"12{i:05d},坏号,10\n")
            elif i % 499 == 7 and (i - 3) % 997 != 5:
                f.write(f"+86 138-{i - 3:08d},又是,20\n")
                dups.add(row)
            else:
                f.write(f"138{i:08d},客{i % 100},20\n")
                eligible.add(row)
    return eligible, dups


def files(
    tmp: Path,
    port: int,
    *,
    store: Path,
    kind: str = "marketing",
    options: str = "",
    gateway: str = "in_flight = 4",
    max_batch: int = 250,
    extra: str = "",
    cm: str = "",
) -> Path:
    """``engine.toml`` (a daily cap of 1, so a double hand-over shows in the caps' history) and
    ``campaign.toml`` (id ``crash``) over ``seg.csv``; ``extra`` is added to the engine file, ``cm``
    to its ``[carriers.cm]`` table."""
    (tmp / "engine.toml").write_text(
        f"""batch_size = 1024
runs_dir = "runs"
[store]
path = "{store}"
[retry]
max_attempts = 3
base = 0.01
cap = 0.05
[caps.{kind}]
windows = [{{ limit = 1, period = "calendar_day" }}]
[carriers.cm]
price_per_part = 0.05
{cm}
[gateways.sim]
plugin = "http"
carriers = ["cm", "cu", "ct", "cbn", "intl"]
breaker_cooldown = 0.05
{gateway}
[gateways.sim.options]
url = "http://127.0.0.1:{port}/send"
max_batch = {max_batch}
{options}
{extra}
""",
        encoding="utf-8",
    )
    campaign = tmp / "campaign.toml"
    campaign.write_text(
        f"""id = "crash"
kind = "{kind}"
engine = "engine.toml"
[segment]
source = "csv"
path = "seg.csv"
[template]
signature = "小鹅优选"
text = "{{name}}，您的{{coupon}}元券已到账"
[policy]
send_window = ""
""",
        encoding="utf-8",
    )
    return campaign


def start(args: list[str], cwd: Path, *, quiet: bool = True) -> subprocess.Popen[str]:
    """``pigeon ARGS --json`` in the background (``-q`` unless ``quiet`` is False)."""
    return subprocess.Popen(
        [sys.executable, "-m", "engine", *args, "--json", *(["-q"] if quiet else [])],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def cli(cwd: Path, *args: str, flags: tuple[str, ...] = ("--json", "-q")) -> subprocess.CompletedProcess[str]:
    """``pigeon ARGS --json -q`` (``flags``), waited for."""
    return subprocess.run(
        [sys.executable, "-m", "engine", *args, *flags],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )


def resume(tmp: Path) -> subprocess.CompletedProcess[str]:
    """``pigeon resume crash``."""
    return cli(tmp, "resume", "crash", "--engine", str(tmp / "engine.toml"))


def wait_for(cond: Callable[[], bool], proc: subprocess.Popen[str], timeout: float) -> bool:
    """Poll ``cond`` until it holds (True), ``proc`` ends or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    return False


def check_ledger_against_log(
    store: Path,
    sim: Simulator,
    eligible: set[int],
    rows: int,
    dups: set[int],
    *,
    unknown_only_if_received: bool = False,
) -> dict[str, int]:
    """The promise, checked row for row; returns the ledger's counts.

    ``unknown_only_if_received``: every ``unknown`` row reached the simulator (no request that never
    left may end ``unknown``) — true of every fault but a kill between a hand-over's commit and the
    write of its request."""
    logged = Counter(int(mid.rsplit("-", 1)[1]) for _, mid, *_ in sim.log)
    twice = [r for r, n in logged.items() if n > 1]
    assert not twice, f"{len(twice)} recipients received twice, e.g. rows {twice[:5]}"
    ledger = Ledger(store)
    try:
        rec = ledger.campaign("crash")
        assert rec is not None and rec.status is CampaignStatus.FINISHED
        submitted = set(ledger.rows_in("crash", LedgerState.SUBMITTED).tolist())
        unknown = set(ledger.rows_in("crash", LedgerState.UNKNOWN).tolist())
        rejected = set(ledger.rows_in("crash", LedgerState.REJECTED).tolist())
        suppressed = set(ledger.rows_in("crash", LedgerState.SUPPRESSED).tolist())
        pending = set(ledger.rows_in("crash", LedgerState.PENDING, LedgerState.SUBMITTING).tolist())
        counts = ledger.counts("crash")
    finally:
        ledger.close()
    assert not pending & set(range(2, rows + 2)), "every row of the segment ends in a final state"
    assert suppressed == dups  # dedupe sees the whole segment on every resume
    assert rejected == set(range(2, rows + 2)) - eligible - suppressed
    assert submitted | unknown == eligible  # every eligible recipient handed over, once
    assert not submitted & unknown
    assert submitted == submitted & set(logged)  # the ledger says sent: the gateway has it
    assert set(logged) - submitted <= unknown  # logged but not recorded sent: only those in flight
    assert set(logged) <= eligible
    if unknown_only_if_received:
        never = unknown - set(logged)
        assert not never, (
            f"{len(never)} rows unknown that never reached the gateway, e.g. {sorted(never)[:5]}: "
            f"{counts.reasons.get('unknown')}"
        )
    # Cap counts: one send per handed-over recipient, none lost, none twice.
    db = sqlite3.connect(store)
    try:
        per_key = Counter(k for (k,) in db.execute("SELECT key FROM sends"))
    finally:
        db.close()
    assert sum(per_key.values()) == len(submitted | unknown) == len(per_key)
    assert counts.total == rows
    assert counts.reasons["suppressed"] == {"duplicate": len(suppressed)}
    return counts.states


async def send_with_ledger(campaign: Path, runs: Path) -> RunSummary:
    """Send ``campaign`` in this process with its ledger (lease included), as ``pigeon send`` does
    (``pigeon send`` itself runs ``anyio.run``, which a test on both loops cannot nest)."""
    plan = prepare(campaign)
    ledger = _open_ledger(plan, force=False, again=False, notify=None)
    try:
        return await _send(plan, new_run_dir(plan, runs), None, SystemClock(), ledger=ledger)
    finally:
        ledger.close()
