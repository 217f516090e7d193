"""SIGKILL of ``pigeon serve`` holding 1,000,000 pending flow timers, in the middle of firing the due ones; a
restart loses none and doubles none (checked message by message against the gateway simulator's log).

The service runs as a subprocess (a kill must be a real one); the simulator runs in this process, so
its log of every message that reached it survives the kill. Asyncio only: the subprocess's loop is
the engine file's (the kill, not the loop, is under test; the runner on trio is covered by
test_flows_service.py).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from engine.state.ledger.store import Ledger
from engine.state.timers import TimerStore
from loadtests.simulator import SimConfig, SimulatorThread
from tests.integration.service_harness import write_engine

PENDING = 1_000_000
DUE = 20_000
"""Timers due at start (the rest are due in 30 days: they must come through untouched)."""

FLOW = """
trigger = "custom_tick"
[[steps]]
wait = "0s"
text = "您的订单{order|}有新进展"
"""

EXTRA = """
[service.flows]
batch = 500
max_per_second = 4000
poll = 0.05
"""


def _fill(store: Path, now: float) -> None:
    """1,000,000 pending timers with distinct numbers, ``DUE`` of them due now (one transaction)."""
    ts = TimerStore(store)
    with ts.batch():
        ts.db.executemany(
            "INSERT INTO flow_timers (flow, step, customer, subject, due) VALUES ('tick', 0, ?, ?, ?)",
            (
                (f"+86139{i:08d}", f"o{i}", now - DUE / 1000 + i / 1000 if i < DUE else now + 30 * 86400 + i)
                for i in range(PENDING)
            ),
        )
    ts.close()


def _serve(cwd: Path, n: int) -> subprocess.Popen[bytes]:
    with (cwd / f"serve{n}.log").open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", "--engine", "engine.toml", "--port", "0"],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUTF8": "1"},
        )


def _count(store: Path, sql: str) -> int:
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30)
    try:
        return int(db.execute(sql).fetchone()[0])
    finally:
        db.close()


def test_a_sigkill_mid_firing_with_a_million_pending_timers_loses_none_and_doubles_none(
    tmp_path: Path,
) -> None:
    with SimulatorThread(SimConfig()) as sim:
        write_engine(tmp_path, sim.port, templates=EXTRA)
        (tmp_path / "flows").mkdir()
        (tmp_path / "flows" / "tick.toml").write_text(FLOW, encoding="utf-8")
        store = tmp_path / "pigeon.db"
        now = time.time()
        _fill(store, now)
        assert _count(store, "SELECT count(*) FROM flow_timers WHERE state = 0") == PENDING

        first = _serve(tmp_path, 1)
        try:
            deadline = time.monotonic() + 120
            while len(sim.log) < DUE // 5 and time.monotonic() < deadline and first.poll() is None:
                time.sleep(0.002)
            first.send_signal(signal.SIGKILL)  # mid-firing: claims, hand-overs and answers in flight
            first.wait(30)
        finally:
            if first.poll() is None:
                first.kill()
        at_kill = len(sim.log)
        assert DUE // 5 <= at_kill < DUE, (at_kill, (tmp_path / "serve1.log").read_text("utf-8")[-3000:])
        left_firing = _count(store, "SELECT count(*) FROM flow_timers WHERE state = 1")

        second = _serve(tmp_path, 2)
        try:
            deadline = time.monotonic() + 240
            done_sql = f"SELECT count(*) FROM flow_timers WHERE state = 2 AND due <= {now + 1}"
            while time.monotonic() < deadline and second.poll() is None:
                if _count(store, done_sql) == DUE:
                    break
                time.sleep(0.2)
            time.sleep(0.5)  # answers still on their way to the simulator
        finally:
            second.send_signal(signal.SIGTERM)
            try:
                second.wait(60)
            except subprocess.TimeoutExpired:
                second.kill()
        log = (tmp_path / "serve2.log").read_text("utf-8")
        assert _count(store, done_sql) == DUE, log[-3000:]

        # none doubled: no message id and no number reached the gateway twice
        ids = Counter(mid for _, mid, *_ in sim.log)
        tos = Counter(to for _, _, to, *_ in sim.log)
        assert max(ids.values()) == 1 and max(tos.values()) == 1
        assert sim.stats["deduplicated"] == 0

        # none lost: each due timer's message reached the gateway, or the ledger holds it as handed
        # over when the kill came (at-most-once: never resent blind, reconciled by receipts)
        db = sqlite3.connect(store)
        rows = db.execute(
            "SELECT customer, message FROM flow_timers WHERE due <= ? ORDER BY id", (now + 1,)
        ).fetchall()
        pending_after = int(db.execute("SELECT count(*) FROM flow_timers WHERE state = 0").fetchone()[0])
        db.close()
        assert len(rows) == DUE and all(m for _, m in rows)
        arrived = set(tos)
        missing = [(c, m) for c, m in rows if c not in arrived]
        ledger = Ledger(store)
        try:
            in_flight = {
                r.message_id: r.state.value for c, m in missing if (r := ledger.message(m)) is not None
            }
        finally:
            ledger.close()
        assert set(in_flight) == {m for _, m in missing}
        assert set(in_flight.values()) <= {"submitting", "unknown"}
        assert len(missing) <= 6 * 100  # at most the requests on the wire: in_flight windows × max_batch
        assert len(arrived) + len(missing) == DUE
        # the other 980,000 came through the kill untouched
        assert pending_after == PENDING - DUE
        print(f"killed after {at_kill} messages; {left_firing} timers left firing, {len(missing)} in flight")
        assert "flows.recovered" in log or left_firing == 0
