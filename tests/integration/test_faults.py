"""The faults operators and providers produce every day, each tried against the promise.

Two runs of one campaign at once; a gateway down from the start, down for 30 s mid-run, down while
a transactional campaign sends; a SIGKILL while requests wait on a refusing gateway; the rate at
the receiver with a CPU hog beside the send. The engine runs as a subprocess (as an operator runs
it) on both event loops; the simulator runs in a thread of the test process, goes down as a server
shutting down gracefully (new connections refused; the next request on an open one answered with
``Connection: close``) and comes back on the same port. (A connection cut without an answer is the
ambiguous case: tests/integration/test_http_transport.py.) Afterwards its
log is checked against the ledger row for row (:func:`check_ledger_against_log`).
"""

from __future__ import annotations

import json
import multiprocessing
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from engine.cli.main import EXIT_BUSY, EXIT_HALTED
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

BACKENDS = ["asyncio", "trio"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_second_run_of_a_running_campaign_is_refused_and_nobody_gets_two(
    tmp_path: Path, backend: str
) -> None:
    rows = 20_000
    eligible, dups = segment(tmp_path / "seg.csv", rows)
    store = tmp_path / "pigeon.db"
    with SimulatorThread(SimConfig()) as sim:
        # 2,500/s: the 18,000 left take 7 s, time for three more processes to start on a busy machine
        campaign = files(tmp_path, sim.port, store=store, max_batch=100, cm="rate_per_second = 2500")
        first = start(["send", str(campaign), "--backend", backend], tmp_path)
        assert wait_for(lambda: len(sim.log) >= 2_000, first, 60)
        # all three at once, while the first runs ("my SSH session dropped")
        engine = str(tmp_path / "engine.toml")
        again = start(["send", str(campaign), "--backend", backend], tmp_path)
        resumed = start(["resume", "crash", "--engine", engine], tmp_path)
        status = start(["status", "crash", "--engine", engine], tmp_path, quiet=False)
        answers = [p.communicate(timeout=120) for p in (again, resumed, status)]
        still_running = first.poll() is None
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert still_running, "the first run ended before the others were answered: the test proves nothing"
    for refused, (_, stderr) in zip((again, resumed), answers, strict=False):
        assert refused.returncode == EXIT_BUSY, stderr
        assert f"is being sent by pigeon send (pid {first.pid} on host" in stderr
        assert "nothing was sent" in stderr
    assert json.loads(answers[2][0])["lease"]["pid"] == first.pid  # who holds it, while it runs
    states = check_ledger_against_log(store, sim, eligible, rows, dups, unknown_only_if_received=True)
    assert "unknown" not in states


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_lease_of_a_killed_run_is_taken_over_at_once(tmp_path: Path, backend: str) -> None:
    rows = 20_000
    eligible, dups = segment(tmp_path / "seg.csv", rows)
    store = tmp_path / "pigeon.db"
    with SimulatorThread(SimConfig()) as sim:
        campaign = files(tmp_path, sim.port, store=store, max_batch=100, cm="rate_per_second = 5000")
        first = start(["send", str(campaign), "--backend", backend], tmp_path)
        assert wait_for(lambda: len(sim.log) >= 2_000, first, 60)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
        started = time.monotonic()
        done = cli(tmp_path, "send", str(campaign), "--backend", backend)  # not "busy": the pid is gone
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started < 60
    check_ledger_against_log(store, sim, eligible, rows, dups)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_gateway_down_from_the_start_stops_the_run_and_resume_sends_everyone(
    tmp_path: Path, backend: str
) -> None:
    rows = 5_000
    eligible, dups = segment(tmp_path / "seg.csv", rows)
    store = tmp_path / "pigeon.db"
    limit = 3.0
    with SimulatorThread(SimConfig()) as sim:
        sim.go_down()
        campaign = files(tmp_path, sim.port, store=store, max_batch=100, extra=f"[outage]\nlimit = {limit}")
        began = time.monotonic()
        halted = cli(tmp_path, "send", str(campaign), "--backend", backend)
        took = time.monotonic() - began
        assert halted.returncode == EXIT_HALTED, halted.stderr
        assert took < limit + 10  # stops promptly: seconds, not minutes of retries
        summary = json.loads(halted.stdout)
        assert summary["halted"] == "gateway_unreachable"
        assert "unreachable since" in summary["message"] and "pigeon resume crash" in summary["message"]
        assert summary["states"]["pending"] > 0
        assert set(summary["states"]) <= {"pending", "rejected", "suppressed"}  # none failed, none unknown
        ledger = Ledger(store)
        try:
            assert not ledger.rows_in("crash", LedgerState.FAILED, LedgerState.UNKNOWN).size
            assert not ledger.rows_in("crash", LedgerState.SUBMITTING).size
        finally:
            ledger.close()
        assert (tmp_path / summary["run_dir"] / "summary.json").is_file()
        sim.come_up()
        done = resume(tmp_path)
        assert done.returncode == 0, done.stderr
    states = check_ledger_against_log(store, sim, eligible, rows, dups, unknown_only_if_received=True)
    assert "unknown" not in states and "failed" not in states


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_gateway_down_for_30_s_mid_run_pauses_it_and_everyone_arrives_once(
    tmp_path: Path, backend: str
) -> None:
    rows = 20_000
    eligible, dups = segment(tmp_path / "seg.csv", rows)
    store = tmp_path / "pigeon.db"
    with SimulatorThread(SimConfig()) as sim:
        campaign = files(
            tmp_path,
            sim.port,
            store=store,
            max_batch=100,
            cm="rate_per_second = 4000",
            extra="[outage]\nlimit = 60",
        )
        proc = start(["send", str(campaign), "--backend", backend], tmp_path, quiet=False)
        assert wait_for(lambda: len(sim.log) >= 4_000, proc, 60)
        sim.go_down()
        time.sleep(30)
        assert proc.poll() is None  # paused, not failed
        arrived = len(sim.log)
        sim.come_up()
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert arrived < len(eligible)  # it was part way when the gateway went
    assert err.count("unreachable since") >= 4  # a line every 5 s while paused …
    assert "answers again: sending resumed" in err
    outage_lines = [line for line in err.splitlines() if line.startswith("[") and "waiting" in line]
    assert len(outage_lines) >= 4  # … and the progress line kept coming
    summary = json.loads(out)
    assert "failed" not in summary["states"]
    states = check_ledger_against_log(store, sim, eligible, rows, dups, unknown_only_if_received=True)
    assert "unknown" not in states and "failed" not in states


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_transactional_campaign_whose_gateway_goes_down_reaches_everyone_after_resume(
    tmp_path: Path, backend: str
) -> None:
    rows = 20_000
    eligible, _ = segment(tmp_path / "seg.csv", rows)
    store = tmp_path / "pigeon.db"
    with SimulatorThread(SimConfig()) as sim:
        campaign = files(
            tmp_path,
            sim.port,
            store=store,
            kind="transactional",
            options="idempotency_key = true",
            max_batch=100,
            cm="rate_per_second = 5000",
            extra="[outage]\nlimit = 2",
        )
        proc = start(["send", str(campaign), "--backend", backend], tmp_path)
        assert wait_for(lambda: len(sim.log) >= 3_000, proc, 60)
        sim.go_down()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == EXIT_HALTED, err
        assert json.loads(out)["halted"] == "gateway_unreachable"
        sim.come_up()
        done = resume(tmp_path)
        assert done.returncode == 0, done.stderr
    logged = Counter(int(mid.rsplit("-", 1)[1]) for _, mid, *_ in sim.log)
    assert set(logged) == eligible  # never skipped
    ledger = Ledger(store)
    try:
        assert set(ledger.rows_in("crash", LedgerState.SUBMITTED).tolist()) == eligible
        assert not ledger.rows_in("crash", LedgerState.FAILED, LedgerState.UNKNOWN).size
    finally:
        ledger.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_sigkill_while_requests_wait_on_a_refusing_gateway_leaves_nothing_unknown(
    tmp_path: Path, backend: str
) -> None:
    rows = 20_000
    eligible, dups = segment(tmp_path / "seg.csv", rows)
    store = tmp_path / "pigeon.db"
    with SimulatorThread(SimConfig()) as sim:
        campaign = files(tmp_path, sim.port, store=store, max_batch=100, cm="rate_per_second = 5000")
        proc = start(["send", str(campaign), "--backend", backend], tmp_path)
        assert wait_for(lambda: len(sim.log) >= 3_000, proc, 60)
        sim.go_down()
        time.sleep(2)  # requests given back, the route probed: waiting
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        ledger = Ledger(store)
        try:  # what a crash leaves: requests that may be on the wire only — none is; the requests
            # refused since the gateway went down were never handed over (no connection, no record)
            assert not ledger.rows_in("crash", LedgerState.SUBMITTING).size
            assert not ledger.counts("crash").reasons.get("pending")
        finally:
            ledger.close()
        sim.come_up()
        done = resume(tmp_path)
        assert done.returncode == 0, done.stderr
    states = check_ledger_against_log(store, sim, eligible, rows, dups, unknown_only_if_received=True)
    assert "unknown" not in states


def _hog() -> None:  # pragma: no cover - runs in a child process
    end = time.monotonic() + 60
    while time.monotonic() < end:
        pass


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_rate_holds_at_the_receiver_with_a_cpu_hog_beside_the_send(tmp_path: Path, backend: str) -> None:
    rows = 3_000
    eligible, dups = segment(tmp_path / "seg.csv", rows)
    store = tmp_path / "pigeon.db"
    rate = 600
    hogs = [multiprocessing.get_context("fork").Process(target=_hog, daemon=True) for _ in range(2)]
    for h in hogs:
        h.start()
    try:
        with SimulatorThread(SimConfig(latency_ms=2, jitter_ms=20)) as sim:
            campaign = files(tmp_path, sim.port, store=store, max_batch=1000, cm=f"rate_per_second = {rate}")
            done = cli(tmp_path, "send", str(campaign), "--backend", backend)
            assert done.returncode == 0, done.stderr
    finally:
        for h in hogs:
            h.kill()
            h.join(10)
    peak = sim.max_arrived_parts_per_second()["cm"]
    assert peak <= rate  # where the provider meters: arrivals, in any 1 s window
    assert peak > rate / 2  # and the send was not simply slow
    check_ledger_against_log(store, sim, eligible, rows, dups)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_rate_holds_at_the_receiver_across_a_kill_and_an_immediate_resume(
    tmp_path: Path, backend: str
) -> None:
    """A resumed run counts what the killed one handed over in its last seconds (from the ledger):
    the provider never sees both runs' requests in one second over the rate."""
    rows, rate = 12_000, 2_000
    eligible, dups = segment(tmp_path / "seg.csv", rows)
    store = tmp_path / "pigeon.db"
    with SimulatorThread(SimConfig(latency_ms=2)) as sim:
        campaign = files(tmp_path, sim.port, store=store, max_batch=100, cm=f"rate_per_second = {rate}")
        proc = start(["send", str(campaign), "--backend", backend], tmp_path)
        assert wait_for(lambda: len(sim.log) >= 3_000, proc, 60)  # in its second second: budget in use
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        done = resume(tmp_path)  # at once
        assert done.returncode == 0, done.stderr
    assert sim.max_arrived_parts_per_second()["cm"] <= rate
    check_ledger_against_log(store, sim, eligible, rows, dups)
