"""The campaign lease: one owner per running campaign, taken over only from the dead, and a writer
whose lease was taken over can never hand another request over (fencing)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.core.messages import MessageBatch
from engine.state.ledger.lease import HOST, CampaignBusy, process_start
from engine.state.ledger.records import Fingerprint, LeaseLost, LedgerState
from engine.state.ledger.run import CampaignLedger
from engine.state.ledger.store import Ledger

FP = Fingerprint(segment="seg.csv", size=1, sha256="00", template="t")


def _batch(rows: list[int]) -> MessageBatch:
    return MessageBatch(
        "cm", rows=rows, numbers=[f"138{r:08d}" for r in rows], texts=["t"] * len(rows), parts=[1] * len(rows)
    )


def _open(path: Path, lease_ttl: float = 15.0) -> CampaignLedger:
    """Campaign ``c``'s run on a connection of its own, holding the lease (``run.ledger``)."""
    return Ledger(path).open_campaign(
        "c", kind="marketing", fingerprint=FP, owner="pigeon send", lease_ttl=lease_ttl
    )


def test_a_second_run_is_refused_while_the_first_holds_the_lease(tmp_path: Path) -> None:
    run = _open(tmp_path / "s.db")
    second = Ledger(tmp_path / "s.db")
    with pytest.raises(CampaignBusy, match=rf"pigeon send \(pid {os.getpid()} on host {HOST}\)") as busy:
        second.open_campaign("c", kind="marketing", fingerprint=FP, owner="pigeon send")
    assert busy.value.holder.alive and "nothing was sent" in str(busy.value)
    run.close()  # the lease goes back with the run
    assert second.lease("c") is None
    second.open_campaign("c", kind="marketing", fingerprint=FP, owner="pigeon send").close()
    second.close()


def test_the_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "s.db")
    ledger.open_campaign("c", kind="marketing", fingerprint=FP)  # the campaign exists
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    now = time.time()
    ledger.db.execute(
        "INSERT INTO ledger_leases VALUES ('c', 'old', 'pigeon send', ?, ?, '1', ?, ?, 15)",
        (HOST, gone.pid, now, now),  # a fresh heartbeat, but its process is gone
    )
    holder = ledger.lease("c")
    assert holder is not None and not holder.alive
    run = ledger.open_campaign("c", kind="marketing", fingerprint=FP, owner="pigeon send")
    assert run.lease is not None and ledger.lease("c").pid == os.getpid()  # type: ignore[union-attr]
    run.close()


def test_a_reused_pid_does_not_keep_a_dead_lease(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "s.db")
    now = time.time()
    ledger.db.execute(
        "INSERT INTO ledger_leases VALUES ('c', 'old', 'pigeon send', ?, ?, 'not-its-start', ?, ?, 15)",
        (HOST, os.getpid(), now, now),  # this pid is alive, but it is not the process that took it
    )
    assert not ledger.lease("c").alive  # type: ignore[union-attr]
    assert process_start(os.getpid())  # (Linux tells when a process started)
    ledger.close()


@pytest.mark.parametrize(("age", "busy"), [(5.0, True), (20.0, False)])
def test_on_another_host_only_the_heartbeat_tells(tmp_path: Path, age: float, busy: bool) -> None:
    ledger = Ledger(tmp_path / "s.db")
    ledger.open_campaign("c", kind="marketing", fingerprint=FP)
    then = time.time() - age
    ledger.db.execute(
        "INSERT INTO ledger_leases VALUES ('c', 'other', 'pigeon worker', 'elsewhere', 1, '1', ?, ?, 15)",
        (then, then),
    )
    if busy:
        with pytest.raises(CampaignBusy, match="on host elsewhere"):
            ledger.open_campaign("c", kind="marketing", fingerprint=FP, owner="pigeon send")
    else:
        ledger.open_campaign("c", kind="marketing", fingerprint=FP, owner="pigeon send").close()


def test_a_writer_whose_lease_was_taken_over_hands_nothing_over(tmp_path: Path) -> None:
    run = _open(tmp_path / "s.db")
    run.handover(_batch([2, 3]), now=1.0)
    # Another process takes the campaign over (this one was stopped longer than the lease lives).
    other = Ledger(tmp_path / "s.db")
    other.db.execute("UPDATE ledger_leases SET token = 'theirs', heartbeat = 0 WHERE campaign = 'c'")
    with pytest.raises(LeaseLost, match="taken over"):
        run.handover(_batch([4, 5]), now=2.0)
    assert other.rows_in("c", LedgerState.SUBMITTING).tolist() == [2, 3]  # 4 and 5 never recorded
    assert run.lease is not None and run.lease.lost
    run.close()
    assert other.lease("c") is not None  # theirs stays: it only gives back its own
    other.close()


def test_the_heartbeat_renews_the_lease_from_a_thread(tmp_path: Path) -> None:
    run = _open(tmp_path / "s.db", lease_ttl=3.0)
    ledger = run.ledger
    first = ledger.lease("c").heartbeat  # type: ignore[union-attr]
    assert run.lease is not None
    run.lease.start()
    time.sleep(1.3)  # one beat (every ttl / 3)
    assert ledger.lease("c").heartbeat > first  # type: ignore[union-attr]
    run.close()


def test_a_lease_handed_off_is_adopted_by_the_worker_that_gets_its_token(tmp_path: Path) -> None:
    run = _open(tmp_path / "s.db")
    assert run.lease is not None
    token = run.lease.hand_off()
    run.ledger.close()
    worker = Ledger(tmp_path / "s.db")
    with pytest.raises(CampaignBusy):  # not to anyone else
        worker.open_campaign("c", kind="marketing", fingerprint=FP, owner="x")
    adopted = worker.open_campaign("c", kind="marketing", fingerprint=FP, owner="blast worker", adopt=token)
    assert worker.lease("c").owner == "blast worker"  # type: ignore[union-attr]
    adopted.handover(_batch([2]), now=1.0)
    adopted.close()


@pytest.mark.parametrize(
    ("semantics", "says"),
    [("at-most-once", "at-most-once: unknown, never resent"), ("at-least-once", "sent again on resume")],
)
def test_the_stop_after_requests_without_an_answer_names_the_campaigns_semantics(
    tmp_path: Path, semantics: str, says: str
) -> None:
    from engine.state.ledger.records import LedgerStalled, Semantics

    ledger = Ledger(tmp_path / "s.db")
    run = ledger.open_campaign("c", kind="marketing", fingerprint=FP, semantics=Semantics(semantics))
    for row in range(2, 7):  # five requests in a row, no answer
        batch = _batch([row])
        run.handover(batch, now=float(row))
        run.unknown("gw", batch, "ambiguous:GatewayTimeout")
    with pytest.raises(LedgerStalled, match="5 requests in a row got no answer") as stalled:
        run.handover(_batch([7]), now=7.0)
    assert says in str(stalled.value) and "pigeon resume c" in str(stalled.value)
    assert ledger.rows_in("c", LedgerState.SUBMITTING).size == 0  # row 7 was not handed over
    ledger.close()
