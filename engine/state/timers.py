"""The durable timer store of flows: pending steps by due time in SQLite, claimed and settled in batches.

One row per flow step to send later. A row moves ``pending`` → ``firing`` (claimed: given the id
of the message it becomes, in one transaction for the whole batch) → ``fired`` (its message is
recorded in the ledger, or it ended without a message: suppressed, failed…), or ``pending`` →
``cancelled`` (a cancel event came first) or ``expired`` (caught up too late to be worth sending).
A row left ``firing`` by a crash is settled on the next start by what the ledger knows about its
message id: recorded → ``fired``, never recorded → sent again with the same id (see
:mod:`engine.flows.runner`). So a step is never sent twice and never lost.

Built for millions of pending rows: a partial index on ``due`` over pending rows only (a fetch of
the next due batch is an index range scan, whatever the table's size), another on the customer and
the subject for cancels and look-ups; writes are ``executemany`` in one transaction per batch.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Final

from engine.state.ledger.tx import transaction

__all__ = ["DueTimer", "NewTimer", "TimerState", "TimerStore", "TimerView"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS flow_timers (
    id       INTEGER PRIMARY KEY,
    flow     TEXT NOT NULL,
    step     INTEGER NOT NULL,          -- index of the step in its flow
    customer TEXT NOT NULL,             -- E.164
    subject  TEXT NOT NULL DEFAULT '',  -- the order id ('' for customer events)
    due      REAL NOT NULL,             -- epoch seconds
    state    INTEGER NOT NULL DEFAULT 0,
    fields   BLOB,                      -- the template's fields, JSON
    message  TEXT,                      -- the message id, once claimed
    reason   TEXT NOT NULL DEFAULT '',
    done_at  REAL NOT NULL DEFAULT 0,
    planned  REAL                       -- its first due time, once held to a later one (else NULL)
);
CREATE INDEX IF NOT EXISTS flow_timers_due ON flow_timers (due) WHERE state = 0;
CREATE INDEX IF NOT EXISTS flow_timers_who ON flow_timers (customer, subject);
CREATE INDEX IF NOT EXISTS flow_timers_firing ON flow_timers (id) WHERE state = 1;
CREATE TABLE IF NOT EXISTS flow_events (
    id TEXT PRIMARY KEY,  -- the sender's event id: an event is taken once
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS flow_starts (
    flow     TEXT NOT NULL,
    customer TEXT NOT NULL,
    at       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS flow_starts_who ON flow_starts (flow, customer, at);
CREATE TABLE IF NOT EXISTS flow_paused (flow TEXT PRIMARY KEY, at REAL NOT NULL);
"""


class TimerState(IntEnum):
    """Where a timer is."""

    PENDING = 0
    FIRING = 1
    """Claimed: its message id is written; the message may or may not be in the ledger yet."""
    FIRED = 2
    CANCELLED = 3
    EXPIRED = 4


@dataclass(frozen=True, slots=True)
class NewTimer:
    """A step to schedule."""

    flow: str
    step: int
    customer: str
    subject: str
    due: float
    fields: bytes | None = None


@dataclass(frozen=True, slots=True)
class DueTimer:
    """A pending (or firing) timer as fetched for firing."""

    id: int
    flow: str
    step: int
    customer: str
    subject: str
    due: float
    fields: bytes | None
    message: str | None = None
    planned: float = 0.0
    """The step's own time: ``due`` until it was held to a later one (a send window, a cap), then
    the first ``due`` (what a flow's ``expire_after`` counts from)."""


@dataclass(frozen=True, slots=True)
class TimerView:
    """One timer of a customer, for people and the API."""

    id: int
    flow: str
    step: int
    subject: str
    due: float
    state: str
    message: str | None
    reason: str


_COLS: Final = "id, flow, step, customer, subject, due, fields, message, COALESCE(planned, due)"


class TimerStore:
    """The timers, processed events, flow starts and paused flows in one SQLite file (the store's).

    Not thread-safe: one connection, used by one thread (the service's loop, or a CLI command).
    """

    def __init__(self, path: str | Path | sqlite3.Connection) -> None:
        if isinstance(path, sqlite3.Connection):
            self.db, self._own = path, False
        else:
            self.db = sqlite3.connect(str(path), isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._own = True
        self.db.executescript(_SCHEMA)
        if "planned" not in {r[1] for r in self.db.execute("PRAGMA table_info(flow_timers)")}:
            self.db.execute("ALTER TABLE flow_timers ADD COLUMN planned REAL")  # a store from before it

    def close(self) -> None:
        """Close the connection (if this store opened it)."""
        if self._own:
            self.db.close()

    # -- writing -------------------------------------------------------------------------

    def schedule(self, timers: Iterable[NewTimer]) -> int:
        """Add ``timers`` (one transaction); how many."""
        rows = [(t.flow, t.step, t.customer, t.subject, t.due, t.fields) for t in timers]
        with transaction(self.db):
            self._insert(rows)
        return len(rows)

    def _insert(self, rows: Sequence[tuple[object, ...]]) -> None:
        self.db.executemany(
            "INSERT INTO flow_timers (flow, step, customer, subject, due, fields) VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )

    def take_events(self, ids: Sequence[str], now: float) -> list[bool]:
        """Per event id: whether it is new (and is now recorded as taken). Call inside
        :meth:`batch` so the events and what they schedule commit together."""
        fresh: list[bool] = []
        for eid in ids:
            cur = self.db.execute("INSERT OR IGNORE INTO flow_events VALUES (?, ?)", (eid, now))
            fresh.append(cur.rowcount == 1)
        return fresh

    def forget_events(self, before: float) -> int:
        """Forget event ids taken before ``before`` (an id sent again after that is taken again)."""
        with transaction(self.db):
            return self.db.execute("DELETE FROM flow_events WHERE at < ?", (before,)).rowcount

    def batch(self) -> AbstractContextManager[None]:
        """``with store.batch():`` one transaction around several calls (events, schedules, cancels)."""
        return transaction(self.db)

    def schedule_in_batch(self, timers: Sequence[NewTimer]) -> None:
        """:meth:`schedule` inside a :meth:`batch` the caller holds."""
        self._insert([(t.flow, t.step, t.customer, t.subject, t.due, t.fields) for t in timers])

    def cancel(self, customer: str, subject: str, flow: str, steps: Sequence[int] | None, now: float) -> int:
        """Cancel ``flow``'s pending steps (``steps``: those only; None: all) for the customer's
        ``subject``, inside a :meth:`batch`; how many. A step already claimed is not called back."""
        if steps is not None and not steps:
            return 0
        only = f" AND step IN ({','.join(str(int(s)) for s in steps)})" if steps is not None else ""
        cur = self.db.execute(
            f"UPDATE flow_timers SET state = {int(TimerState.CANCELLED)}, done_at = ?, reason = 'cancelled' "
            f"WHERE customer = ? AND subject = ? AND state = 0 AND flow = ?{only}",
            (now, customer, subject, flow),
        )
        return cur.rowcount

    def has_pending(self, flow: str, customer: str, subject: str) -> bool:
        """Whether ``flow`` has a pending or firing step for the customer's ``subject``."""
        row = self.db.execute(
            "SELECT 1 FROM flow_timers WHERE customer = ? AND subject = ? AND flow = ? AND state IN (0, 1) "
            "LIMIT 1",
            (customer, subject, flow),
        ).fetchone()
        return row is not None

    def starts_since(self, flow: str, customer: str, since: float) -> int:
        """How many times ``flow`` started for the customer since ``since``."""
        row = self.db.execute(
            "SELECT count(*) FROM flow_starts WHERE flow = ? AND customer = ? AND at >= ?",
            (flow, customer, since),
        ).fetchone()
        return int(row[0])

    def started(self, flow: str, customer: str, at: float) -> None:
        """Record that ``flow`` started for the customer (inside a :meth:`batch`)."""
        self.db.execute("INSERT INTO flow_starts VALUES (?, ?, ?)", (flow, customer, at))

    # -- firing --------------------------------------------------------------------------

    def due(self, now: float, limit: int, *, skip_flows: Sequence[str] = ()) -> list[DueTimer]:
        """Up to ``limit`` pending timers due at ``now`` or before, the earliest first (paused
        ``skip_flows`` left out)."""
        skip = ""
        if skip_flows:
            skip = f" AND flow NOT IN ({','.join('?' * len(skip_flows))})"
        rows = self.db.execute(
            f"SELECT {_COLS} FROM flow_timers WHERE state = 0 AND due <= ?{skip} ORDER BY due, id LIMIT ?",
            (now, *skip_flows, limit),
        ).fetchall()
        return [DueTimer(*r) for r in rows]

    def next_due(self, *, skip_flows: Sequence[str] = ()) -> float | None:
        """When the earliest pending timer is due (None: none is pending)."""
        skip = ""
        if skip_flows:
            skip = f" AND flow NOT IN ({','.join('?' * len(skip_flows))})"
        row = self.db.execute(
            f"SELECT due FROM flow_timers WHERE state = 0{skip} ORDER BY due LIMIT 1", tuple(skip_flows)
        ).fetchone()
        return None if row is None else float(row[0])

    def claim(self, claims: Sequence[tuple[int, str]]) -> list[int]:
        """Mark ``(timer id, message id)`` pairs ``firing`` in one transaction; the ids claimed (a
        timer cancelled meanwhile is not: it stays cancelled and is left out)."""
        got: list[int] = []
        with transaction(self.db):
            for tid, mid in claims:
                cur = self.db.execute(
                    "UPDATE flow_timers SET state = 1, message = ? WHERE id = ? AND state = 0", (mid, tid)
                )
                if cur.rowcount:
                    got.append(tid)
        return got

    def settle(self, outcomes: Sequence[tuple[int, str]], now: float, state: TimerState) -> None:
        """End ``(timer id, reason)`` pairs in ``state`` (``fired`` or ``expired``), one transaction."""
        with transaction(self.db):
            self.db.executemany(
                "UPDATE flow_timers SET state = ?, reason = ?, done_at = ? WHERE id = ? AND state IN (0, 1)",
                [(int(state), reason, now, tid) for tid, reason in outcomes],
            )

    def reschedule(self, moves: Sequence[tuple[int, float, str]]) -> None:
        """Put ``(timer id, due, reason)`` back to ``pending`` at a later time (a marketing step held
        to its send window or past a cap), its message id forgotten, its first due time kept."""
        with transaction(self.db):
            self.db.executemany(
                "UPDATE flow_timers SET state = 0, planned = COALESCE(planned, due), due = ?, reason = ?, "
                "message = NULL WHERE id = ? AND state IN (0, 1)",
                [(due, reason, tid) for tid, due, reason in moves],
            )

    def firing(self, limit: int = 100_000, *, after: int = 0) -> list[DueTimer]:
        """Timers left ``firing`` (by a crash, or still on their way), by id, past id ``after``."""
        rows = self.db.execute(
            f"SELECT {_COLS} FROM flow_timers WHERE state = 1 AND id > ? ORDER BY id LIMIT ?", (after, limit)
        ).fetchall()
        return [DueTimer(*r) for r in rows]

    # -- flows paused --------------------------------------------------------------------

    def paused(self) -> list[str]:
        """The paused flows."""
        return [r[0] for r in self.db.execute("SELECT flow FROM flow_paused ORDER BY flow")]

    def pause(self, flow: str, now: float) -> None:
        """Pause ``flow``: its steps stay pending (its triggers still schedule) until it resumes."""
        with transaction(self.db):
            self.db.execute("INSERT OR IGNORE INTO flow_paused VALUES (?, ?)", (flow, now))

    def resume(self, flow: str) -> None:
        """Resume ``flow``: its late steps are caught up in due order."""
        with transaction(self.db):
            self.db.execute("DELETE FROM flow_paused WHERE flow = ?", (flow,))

    # -- looking ---------------------------------------------------------------------------

    def counts(self) -> dict[str, dict[str, int]]:
        """Flow → state name → timers."""
        out: dict[str, dict[str, int]] = {}
        for flow, state, n in self.db.execute(
            "SELECT flow, state, count(*) FROM flow_timers GROUP BY flow, state"
        ):
            out.setdefault(flow, {})[TimerState(state).name.lower()] = int(n)
        return out

    def pending_count(self) -> int:
        """Timers pending, all flows (an index count)."""
        return int(self.db.execute("SELECT count(*) FROM flow_timers WHERE state = 0").fetchone()[0])

    def late_count(self, now: float) -> int:
        """Pending timers already due."""
        return int(
            self.db.execute(
                "SELECT count(*) FROM flow_timers WHERE state = 0 AND due <= ?", (now,)
            ).fetchone()[0]
        )

    def of_customer(self, customer: str, *, limit: int = 200) -> list[TimerView]:
        """The customer's timers, the latest due first."""
        rows = self.db.execute(
            "SELECT id, flow, step, subject, due, state, message, reason FROM flow_timers "
            "WHERE customer = ? ORDER BY due DESC, id DESC LIMIT ?",
            (customer, limit),
        ).fetchall()
        return [
            TimerView(r[0], r[1], r[2], r[3], r[4], TimerState(r[5]).name.lower(), r[6], r[7]) for r in rows
        ]
