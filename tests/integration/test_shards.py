"""``pigeon send --shards N`` against the simulator: everyone once, budgets kept, signals and kills handled.

The engine runs as a subprocess, as an operator runs it; the simulator runs in a thread of the
test process. Each test checks the simulator's log against the ledger row for row with the crash
tests' promise (:func:`check_ledger_against_log`): every eligible recipient handed over exactly
once, the duplicates suppressed across shards, the bad rows rejected once.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import pytest

from engine.cli.main import EXIT_STOPPED
from loadtests.simulator import SimConfig, Simulator, SimulatorThread
from tests.integration import crash_harness
from tests.integration.crash_harness import (
    check_ledger_against_log,
    cli,
    files,
    segment,
    start,
    wait_for,
)

RATE = 6000
"""China Mobile's configured budget, parts per second, that the shards share."""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_three_shards_send_everyone_once_within_the_carrier_budget(tmp_path: Path, backend: str) -> None:
    rows = 15_000
    eligible, dups = segment(tmp_path / "seg.csv", rows)
    store = tmp_path / "pigeon.db"
    with SimulatorThread(SimConfig()) as sim:
        campaign = files(tmp_path, sim.port, store=store, gateway="in_flight = 6")
        engine = tmp_path / "engine.toml"
        engine.write_text(
            engine.read_text("utf-8").replace(
                "[carriers.cm]\n", f"[carriers.cm]\nrate_per_second = {RATE}\n"
            ),
            encoding="utf-8",
        )
        done = cli(tmp_path, "send", str(campaign), "--shards", "3", "--backend", backend)
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        peak = sim.max_arrived_parts_per_second()
    assert peak["cm"] <= RATE  # the three shares together, over any 1 s window of what arrived
    assert peak["cm"] > RATE / 3  # …and more than one shard's share: they did send side by side
    states = check_ledger_against_log(store, sim, eligible, rows, dups)
    assert summary["rows"] == rows == sum(summary["states"].values())
    assert summary["states"] == {"sent" if k == "submitted" else k: n for k, n in states.items()}
    # One rejects file for the run, in row order, each bad row once (not one per shard).
    run_dir = tmp_path / summary["run_dir"]  # relative to where pigeon ran
    rejects_file = tmp_path / summary["files"]["rejected"]
    assert rejects_file.parent == run_dir
    with rejects_file.open(newline="", encoding="utf-8") as f:
        listed = [int(r["row"]) for r in csv.DictReader(f)]
    assert listed == sorted(set(range(2, rows + 2)) - eligible - dups)
    assert not list(run_dir.glob("shard-*/rejects.csv"))  # merged, not left twice


class _UnderWay(NamedTuple):
    proc: subprocess.Popen[str]
    sim: Simulator
    store: Path
    eligible: set[int]
    dups: set[int]


ROWS_UNDER_WAY = 30_000


@contextmanager
def _sharded_send_under_way(tmp_path: Path) -> Iterator[_UnderWay]:
    """``pigeon send --shards 2`` against a slow simulator, 3,000 messages in; the simulator stops
    when the ``with`` ends."""
    eligible, dups = segment(tmp_path / "seg.csv", ROWS_UNDER_WAY)
    store = tmp_path / "pigeon.db"
    with SimulatorThread(SimConfig(latency_ms=20)) as sim:
        campaign = files(tmp_path, sim.port, store=store, gateway="in_flight = 2")
        proc = start(["send", str(campaign), "--shards", "2"], tmp_path)
        assert wait_for(lambda: len(sim.log) >= 3_000, proc, 60)
        yield _UnderWay(proc, sim, store, eligible, dups)


def test_ctrl_c_stops_every_shard_and_resume_finishes_the_rest(tmp_path: Path) -> None:
    with _sharded_send_under_way(tmp_path) as (proc, sim, store, eligible, dups):
        proc.send_signal(signal.SIGINT)  # to the parent only, as a terminal's Ctrl-C reaches it
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == EXIT_STOPPED, err
        assert "stopping" in err and "Traceback" not in err
        summary = json.loads(out)
        assert summary["stopped"] is True
        assert sum(summary["states"].values()) == summary["rows"]  # what was read is accounted for
        assert len(sim.log) < len(eligible)  # it stopped part way
        resumed = cli(tmp_path, "resume", "crash", "--engine", str(tmp_path / "engine.toml"))
        assert resumed.returncode == 0, resumed.stderr
    check_ledger_against_log(store, sim, eligible, ROWS_UNDER_WAY, dups)


def test_shards_whose_parent_is_killed_stop_and_resume_sends_nobody_twice(tmp_path: Path) -> None:
    with _sharded_send_under_way(tmp_path) as (proc, sim, store, eligible, dups):
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        # The orphaned shards notice within a progress interval and drain; the log then stops.
        deadline, last = time.monotonic() + 20, -1
        while time.monotonic() < deadline and len(sim.log) != last:
            last = len(sim.log)
            time.sleep(1.0)
        assert len(sim.log) == last, "the shards kept sending after their parent died"
        assert last < len(eligible)
        resumed = cli(tmp_path, "resume", "crash", "--engine", str(tmp_path / "engine.toml"))
        assert resumed.returncode == 0, resumed.stderr
    check_ledger_against_log(store, sim, eligible, ROWS_UNDER_WAY, dups)


def test_a_budget_too_small_to_split_fails_before_anything_is_sent(tmp_path: Path) -> None:
    segment(tmp_path / "seg.csv", 10)
    with SimulatorThread(SimConfig()) as sim:
        campaign = files(tmp_path, sim.port, store=tmp_path / "pigeon.db", gateway="rate_per_second = 2")
        done = cli(tmp_path, "send", str(campaign), "--shards", "3")
        assert not sim.log
    assert done.returncode == 2
    assert "gateways.sim.rate_per_second" in done.stderr and "at most 2 shards" in done.stderr


@pytest.mark.parametrize("shard_by", ["", "hash"], ids=["ranges-by-default", "hash"])
def test_shards_send_a_number_in_two_shards_ranges_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shard_by: str
) -> None:
    """By default each shard reads one byte range, not the whole file; the second half of the
    segment repeats the first half's numbers, so the repeated numbers lie in both shards' ranges:
    the shared table sends each once and records the other row ``duplicate``. The same with
    ``PIGEON_SHARD_BY=hash`` (each shard reads everything, keeps its numbers)."""
    monkeypatch.setitem(crash_harness.ENV, "PIGEON_SHARD_BY", shard_by)
    half = 2000
    seg = tmp_path / "seg.csv"
    with seg.open("w", encoding="utf-8") as f:
        f.write("phone,name,coupon\n")
        for i in range(2 * half):
            f.write(f"138{i % half:08d},客,20\n")
    store = tmp_path / "pigeon.db"
    with SimulatorThread(SimConfig()) as sim:
        campaign = files(tmp_path, sim.port, store=store)
        done = cli(tmp_path, "send", str(campaign), "--shards", "2", flags=("--json",))
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        log = list(sim.log)
    ranged = "each shard reads its byte range of the segment (rows 2–" in done.stderr
    assert ranged is (shard_by != "hash"), done.stderr
    received = [to for _, _, to, _, _ in log]
    assert len(received) == len(set(received)) == half, "every number once, none missing"
    assert summary["states"] == {"sent": half, "suppressed": half}
    assert summary["reasons"]["suppressed"] == {"duplicate": half}
    sent = {r["row"] for r in _ledger_rows(store, "submitted")}
    suppressed = {r["row"] for r in _ledger_rows(store, "suppressed")}
    assert len(sent) == len(suppressed) == half and sent | suppressed == set(range(2, 2 * half + 2))


def _ledger_rows(store: Path, state: str) -> list[dict[str, int]]:
    from engine.state.ledger.records import LedgerState
    from engine.state.ledger.store import Ledger

    ledger = Ledger(store)
    try:
        return [{"row": int(r)} for r in ledger.rows_in("crash", LedgerState(state)).tolist()]
    finally:
        ledger.close()


_KILL_AT = """
import os, signal, sqlite3, sys, time
from pathlib import Path

from engine.core import shared_keys

WINNER, LOSER, STORE, FLAG, MODE = {winner}, {loser}, {store!r}, {flag!r}, {mode!r}
claim = shared_keys.SharedKeys.claim


def _recorded(row, state) -> bool:
    from engine.state.ledger.records import LedgerState
    from engine.state.ledger.store import Ledger

    try:
        ledger = Ledger(STORE)
    except sqlite3.Error:
        return False
    try:
        return row in ledger.rows_in("crash", LedgerState(state)).tolist()
    finally:
        ledger.close()


def _wait(cond) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not cond():
        time.sleep(0.01)


def claim_then_die(self, keys, rows):
    rows = list(rows)
    if MODE == "after_send" and LOSER in rows and not Path(FLAG).exists():
        # Shard 0 dies as it reaches the loser's row, after shard 1 sent the number from W: the
        # number is held only by the store's log of claims now.
        _wait(lambda: _recorded(WINNER, "submitted"))
        Path(FLAG).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    if MODE == "before_log" and LOSER in rows and not Path(FLAG).exists():
        _wait(lambda: Path(FLAG).exists())  # shard 0 reaches L only once shard 1 holds the number
    lost = claim(self, keys, rows)
    if MODE == "before_log" and WINNER in rows and rows.index(WINNER) not in lost and not Path(FLAG).exists():
        # The worst moment: this shard holds the number in shared memory, its claim not logged
        # yet, and the other shard has recorded its row of the number a duplicate.
        Path(FLAG).touch()
        _wait(lambda: _recorded(LOSER, "suppressed"))
        os.kill(os.getpid(), signal.SIGKILL)
    return lost


shared_keys.SharedKeys.claim = claim_then_die
from engine.cli.main import main

sys.exit(main())
"""


@pytest.mark.parametrize("resume_shards", [1, 2])
@pytest.mark.parametrize("mode", ["before_log", "after_send"])
def test_a_shard_killed_at_the_worst_moment_of_a_shared_number_resumes_it_once(
    tmp_path: Path, mode: str, resume_shards: int
) -> None:
    """Byte ranges: row W (the first of shard 1's range) and row L (the middle of shard 0's)
    share a number, and a shard is SIGKILLed at the worst moment for it. ``before_log``: shard 1
    claims the number for W in shared memory and dies before its claim reaches the store's log,
    after shard 0 has recorded L ``duplicate`` — the resume must leave L (final) out of dedupe, so
    that it neither claims the number nor makes W a repeat on one process, where L comes first.
    ``after_send``: shard 1 sent W, and shard 0 dies as it reaches L, so the number is held only by
    the log — the resume must fill its table from it and make L the duplicate. Either way, resumed
    on one process or on two shards: the number sent once, from W; nobody else sent twice or
    skipped."""
    from engine.run.plan import prepare
    from engine.run.shards import shard_ranges

    rows = 20_000
    seg = tmp_path / "seg.csv"
    lines = [f"138{i:08d},客{i % 100},20\n" for i in range(rows)]  # row i + 2; every number once
    seg.write_text("phone,name,coupon\n" + "".join(lines), encoding="utf-8")
    store = tmp_path / "pigeon.db"
    with SimulatorThread(SimConfig()) as sim:
        campaign = files(tmp_path, sim.port, store=store)
        engine = tmp_path / "engine.toml"  # a cap of 5 a day: only dedupe stops a second send
        engine.write_text(engine.read_text("utf-8").replace("limit = 1,", "limit = 5,"), encoding="utf-8")
        parts = shard_ranges(prepare(campaign), 2)
        assert parts is not None
        winner = parts[1].first_row
        loser = parts[0].first_row + parts[0].rows // 2
        lines[loser - 2] = lines[winner - 2]  # the same bytes long: the ranges do not move
        seg.write_text("phone,name,coupon\n" + "".join(lines), encoding="utf-8")
        flag = tmp_path / "killed"
        script = tmp_path / "kill_after_claim.py"
        script.write_text(
            _KILL_AT.format(winner=winner, loser=loser, store=str(store), flag=str(flag), mode=mode),
            encoding="utf-8",
        )
        crashed = subprocess.run(
            [sys.executable, str(script), "send", str(campaign), "--shards", "2", "--json", "-q"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=crash_harness.ENV,
            timeout=120,
        )
        assert flag.exists(), crashed.stderr
        killed = 1 if mode == "before_log" else 0
        assert crashed.returncode != 0
        assert f"shard {killed} of 2 ended without a summary" in crashed.stderr, crashed.stderr
        number = "+86" + lines[winner - 2].split(",")[0]
        sent = [to for _, _, to, _, _ in sim.log].count(number)
        assert sent == (0 if mode == "before_log" else 1)
        assert (loser in {r["row"] for r in _ledger_rows(store, "suppressed")}) is (mode == "before_log")
        args = ["send", str(campaign)] + (["--shards", "2"] if resume_shards > 1 else [])
        resumed = cli(tmp_path, *args)
        assert resumed.returncode == 0, resumed.stderr
        received = [to for _, _, to, _, _ in sim.log]
    assert received.count(number) == 1, "the number sent once, not lost"
    eligible = set(range(2, rows + 2)) - {loser}
    check_ledger_against_log(store, sim, eligible, rows, {loser})
    assert winner in {r["row"] for r in _ledger_rows(store, "submitted")}
