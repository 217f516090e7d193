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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import pytest

from engine.cli.main import EXIT_STOPPED
from loadtests.simulator import SimConfig, Simulator, SimulatorThread
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


def test_byte_range_shards_send_a_number_in_two_shards_ranges_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``PIGEON_SHARD_BY=ranges`` (experimental): each shard reads one byte range, not the whole
    file; the second half of the segment repeats the first half's numbers, so the repeated numbers
    lie in both shards' ranges: the store's claims send each once and record the other row
    ``duplicate``."""
    from tests.integration import crash_harness

    monkeypatch.setitem(crash_harness.ENV, "PIGEON_SHARD_BY", "ranges")
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
    assert "each shard reads its byte range of the segment (rows 2–" in done.stderr, done.stderr
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
