"""Kill the engine: SIGKILL mid-blast, a store whose disk fills up, a gateway that hangs — then resume.

The engine runs as a subprocess (``pigeon send`` / ``pigeon resume``) against the simulator, which
runs in a thread of the test process and so survives every kill. Afterwards the simulator's log of
received messages is checked against the ledger row for row: every eligible recipient exactly
once (at-most-once: a recipient in flight at a kill may be recorded ``unknown`` instead, never sent
twice), and the send history the caps count holds each handed-over recipient exactly once.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from engine.state.ledger.records import LedgerState
from engine.state.ledger.store import Ledger
from loadtests.simulator import SimConfig, SimulatorThread
from tests.integration.crash_harness import (
    check_ledger_against_log,
    cli,
    files,
    resume,
    segment,
    start,
    wait_for,
)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_sends_everyone_once(tmp_path: Path) -> None:
    rows = 200_000
    eligible, dups = segment(tmp_path / "seg.csv", rows)
    rng = random.Random(6)
    store = tmp_path / "pigeon.db"
    kills = 0
    with SimulatorThread(SimConfig()) as sim:
        campaign = files(tmp_path, sim.port, store=store)
        for run in range(40):
            backend = ("asyncio", "trio")[run % 2]  # both event loops, alternately
            args = (
                ["send", str(campaign)]
                if run % 3 != 2
                else ["resume", "crash", "--engine", str(tmp_path / "engine.toml")]
            )
            proc = start([*args, "--backend", backend], tmp_path)
            if kills < 10:
                base = len(sim.log)
                target = base + rng.randint(1_000, 12_000)
                if wait_for(lambda t=target: len(sim.log) >= t, proc, 60):  # type: ignore[misc]
                    time.sleep(rng.uniform(0, 0.05))
                    proc.send_signal(signal.SIGKILL)
                    proc.communicate(timeout=10)  # closes the pipes too
                    kills += 1
                    continue
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            summary = json.loads(out)
            assert sum(summary["states"].values()) == summary["rows"]
            break
        else:
            pytest.fail("the campaign never finished")
    assert kills >= 10
    states = check_ledger_against_log(store, sim, eligible, rows, dups)
    # In flight at a kill: at most the lane's window (4 requests of 250) each time.
    assert states.get("unknown", 0) <= kills * 4 * 250
    # A finished campaign is not sent again by accident.
    again = cli(tmp_path, "send", str(campaign))
    assert again.returncode == 2 and "already finished" in again.stderr


def _can_mount_tmpfs(where: Path) -> bool:
    where.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)], capture_output=True, check=False
    )
    return r.returncode == 0


def test_a_store_whose_disk_fills_up_stops_cleanly_and_resume_finishes(tmp_path: Path) -> None:
    rows = 40_000
    eligible, dups = segment(tmp_path / "seg.csv", rows)
    disk = tmp_path / "disk"
    if not _can_mount_tmpfs(disk):
        pytest.fail("this test needs a small tmpfs (mount -t tmpfs): run it as root or in a container")
    try:
        store = disk / "pigeon.db"
        filler = disk / "filler"
        with SimulatorThread(SimConfig()) as sim:
            campaign = files(tmp_path, sim.port, store=store)
            # Fill the disk so the store has room for a few thousand sends only.
            with filler.open("wb") as f:
                f.write(b"\0" * (15 * 1024 * 1024 + 512 * 1024))
            full = cli(tmp_path, "send", str(campaign))
            assert full.returncode == 6, full.stderr  # a fault outside Pigeon, not bad input
            assert "cannot write to the store" in full.stderr and "disk is full" in full.stderr
            summary = json.loads(full.stdout)  # the --json summary is printed all the same
            assert summary["halted"] == "store_unwritable"
            assert summary["states"].get("pending", 0) > 0  # read, never handed over: sent on resume
            assert "pigeon resume" in full.stderr
            assert "Traceback" not in full.stderr
            sent_before = len(sim.log)
            assert 0 < sent_before < len(eligible)  # it stopped part way
            filler.unlink()  # space again
            done = resume(tmp_path)
            assert done.returncode == 0, done.stderr
            check_ledger_against_log(store, sim, eligible, rows, dups)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
        shutil.rmtree(disk, ignore_errors=True)


def test_a_hanging_gateway_stops_the_run_and_resume_finishes(tmp_path: Path) -> None:
    rows = 20_000
    eligible, dups = segment(tmp_path / "seg.csv", rows)
    store = tmp_path / "pigeon.db"
    with SimulatorThread(SimConfig()) as sim:
        campaign = files(tmp_path, sim.port, store=store, options="timeout = 0.5", max_batch=100)
        proc = start(["send", str(campaign)], tmp_path)
        assert wait_for(lambda: len(sim.log) >= 3_000, proc, 60)
        sim.config.p_hang, sim.config.hang_s = 1.0, 5.0  # the gateway stops answering
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 6, err
        assert "got no answer" in err and "pigeon resume crash" in err
        assert json.loads(out)["halted"] == "gateway_stalled"
        assert "Traceback" not in err
        sent_before = len(sim.log)
        assert sent_before < len(eligible)
        sim.config.p_hang = 0.0  # back
        done = resume(tmp_path)
        assert done.returncode == 0, done.stderr
        states = check_ledger_against_log(store, sim, eligible, rows, dups)
    # Only what was in flight when it hung is unknown (the window: 4 requests of 100, times the
    # 5 requests in a row it takes to call the gateway hung), never the rest of the segment.
    assert 0 < states["unknown"] <= 5 * 4 * 100 + 4 * 100


def test_at_least_once_resends_what_was_in_flight_and_the_gateway_dedupes_it(tmp_path: Path) -> None:
    rows = 30_000
    eligible, _ = segment(tmp_path / "seg.csv", rows)
    rng = random.Random(7)
    store = tmp_path / "pigeon.db"
    kills = 0
    with SimulatorThread(SimConfig(latency_ms=2)) as sim:
        campaign = files(
            tmp_path, sim.port, store=store, kind="transactional", options="idempotency_key = true"
        )
        for run in range(20):
            proc = start(["send", str(campaign), "--backend", ("trio", "asyncio")[run % 2]], tmp_path)
            if kills < 3:
                target = len(sim.log) + rng.randint(1_000, 6_000)
                if wait_for(lambda t=target: len(sim.log) >= t, proc, 60):  # type: ignore[misc]
                    proc.send_signal(signal.SIGKILL)
                    proc.communicate(timeout=10)
                    kills += 1
                    continue
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            assert "resuming campaign 'crash' (at-least-once)" in err
            break
    assert kills == 3
    logged = Counter(int(mid.rsplit("-", 1)[1]) for _, mid, *_ in sim.log)
    assert set(logged) == eligible and max(logged.values()) == 1  # everyone, once: nobody skipped
    ledger = Ledger(store)
    try:
        assert set(ledger.rows_in("crash", LedgerState.SUBMITTED).tolist()) == eligible
        assert not ledger.rows_in("crash", LedgerState.UNKNOWN).size
        retried = np.flatnonzero(ledger._derive("crash").attempts > 1)  # handed over in two runs
    finally:
        ledger.close()
    # Whatever was resent went under the same idempotency key: the simulator answered it without
    # sending it again, and the caps (1 a day here) counted it once and did not hold it back. Only
    # what was on the wire at a kill went again (the simulator's dedupe alone would hide a resume
    # that sent everything again: the count of resent messages must stay within the windows).
    assert 0 < sim.stats["deduplicated"] <= len(retried) <= kills * 4 * 250
    db = sqlite3.connect(store)
    try:
        per_key = Counter(k for (k,) in db.execute("SELECT key FROM sends"))
    finally:
        db.close()
    assert len(per_key) == sum(per_key.values()) == len(eligible)
