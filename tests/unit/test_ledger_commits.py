"""How the ledger commits: a blast's answers with the next hand-over (never left uncommitted while a
lane's worker waits — checked from a second connection, as a crash would see it), and the service's
connection waiting for another process's write lock in fine steps."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from engine.core.clock import SystemClock
from engine.core.messages import MessageBatch, Outcome, SubmitResult
from engine.observability.report import RunRecorder
from engine.sending.retry import Breaker
from engine.sending.sender import Lane
from engine.sending.testing import RecordingGateway
from engine.state.ledger.records import Fingerprint, LedgerState, LedgerWriteError
from engine.state.ledger.store import Ledger
from engine.state.ledger.tx import transaction

pytestmark = pytest.mark.anyio


class NetworkGateway(RecordingGateway):
    """Answers after a short wait, as over a network (the lane's feeder runs meanwhile)."""

    async def send(self, batch: MessageBatch) -> Sequence[SubmitResult]:
        """Wait 10 ms, then answer."""
        await anyio.sleep(0.01)
        return await super().send(batch)


def _batch(start: int, n: int) -> MessageBatch:
    rows = list(range(start, start + n))
    return MessageBatch(
        "cm",
        rows=rows,
        numbers=[f"138{r:08d}" for r in rows],
        texts=["t"] * n,
        parts=[1] * n,
        id_prefix="g-",
    )


async def test_an_answer_commits_with_the_next_hand_over_or_before_the_worker_waits(
    anyio_backend: object, tmp_path: Path
) -> None:
    store = tmp_path / "s.db"
    writer, crash_view = Ledger(store), Ledger(store)
    run = writer.open_campaign("g", kind="marketing", fingerprint=Fingerprint())
    run.group_commit = True
    durable: list[int] = []  # submitted rows another process sees, at each request's send
    commits: list[str] = []
    writer.db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)

    def answer(batch: MessageBatch) -> Sequence[SubmitResult]:
        durable.append(crash_view.rows_in("g", LedgerState.SUBMITTED).size)
        return [SubmitResult(Outcome.ACCEPTED, provider_id=f"p{r}") for r in batch.rows]

    gateway = NetworkGateway("gw", max_batch=10, answer=answer)
    recorder = RunRecorder({})
    recorder.sinks.append(run)
    lane = Lane(
        gateway,
        gateways={"cm": [gateway]},
        limiters={},
        breakers={"gw": Breaker()},
        clock=SystemClock(),
        recorder=recorder,
        on_handover=lambda b, first, gateway: run.handover(b, now=1.0, gateway=gateway),
        in_flight=1,
        on_idle=run.flush,
    )
    tx, rx = anyio.create_memory_object_stream[MessageBatch](4)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lane.run, rx)
        async with tx:
            for i in range(5):
                await tx.send(_batch(2 + 10 * i, 10))
            # The lane has nothing queued after the last answer: its worker must flush it before
            # waiting for more (nobody calls finish() here).
            for _ in range(1000):
                if crash_view.rows_in("g", LedgerState.SUBMITTED).size == 50:
                    break
                await anyio.sleep(0.01)
    # Each request's hand-over made the answer before it durable ...
    assert durable == [0, 10, 20, 30, 40]
    assert crash_view.counts("g").states == {"submitted": 50}
    # ... in its own transaction: one commit a request, and one for the last answer.
    assert len(commits) == 5 + 1
    writer.close()
    crash_view.close()


def test_a_spinning_connection_waits_for_another_writer_then_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "s.db"
    service = Ledger(store, spin_on_busy=True)
    other = sqlite3.connect(store, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # a blast worker in the middle of a transaction
    release = threading.Timer(0.05, lambda: other.execute("COMMIT"))
    release.start()
    with transaction(service.db):  # no "database is locked": it waited for the commit
        service.db.execute("INSERT INTO ledger_meta VALUES ('probe', 1)")
    release.join()
    assert service.db.execute("SELECT value FROM ledger_meta WHERE key = 'probe'").fetchone() == (1,)

    monkeypatch.setattr("engine.state.ledger.tx._SPIN_FOR", 0.05)
    other.execute("BEGIN IMMEDIATE")  # held for longer than the caller waits
    with pytest.raises(LedgerWriteError, match="locked"), transaction(service.db):
        pass
    other.execute("ROLLBACK")
    other.close()
    service.close()


def test_commit_with_commits_its_statements_and_the_buffered_drops_but_not_what_waits_for_a_hand_over(
    tmp_path: Path,
) -> None:
    from engine.core.messages import Reject

    store = tmp_path / "s.db"
    writer, crash_view = Ledger(store), Ledger(store)
    run = writer.open_campaign("api", kind="transactional", fingerprint=Fingerprint())
    writer.db.execute("CREATE TABLE side (what TEXT)")
    run.defer("INSERT INTO side VALUES (?)", ("with the hand-over",))
    run.dropped([Reject(7, "opted_out", "", phone="13800138000", state="suppressed")])
    run.commit_with([("INSERT INTO side VALUES (?)", ("now",))])
    seen = [r[0] for r in crash_view.db.execute("SELECT what FROM side")]
    assert seen == ["now"]  # the deferred statement waits for its moment
    assert crash_view.message("api-7") is not None  # the drop was committed with it
    run.handover(_batch(1, 1), now=1.0)
    assert sorted(r[0] for r in crash_view.db.execute("SELECT what FROM side")) == [
        "now",
        "with the hand-over",
    ]
    writer.close()
    crash_view.close()


def test_the_record_insert_names_every_column_of_the_schema() -> None:
    """Two writers of ``ledger_records`` once disagreed on its width after a column was added."""
    import sqlite3

    from engine.state.ledger.encoding import _INSERT_RECORD, _SCHEMA

    db = sqlite3.connect(":memory:")
    db.executescript(_SCHEMA)
    columns = len(db.execute("PRAGMA table_info(ledger_records)").fetchall())
    assert _INSERT_RECORD.count("?") == columns
