"""Which row of a campaign owns each number: the dedupe the shards of one send share, and its log.

``pigeon send --shards N`` on byte ranges (:mod:`engine.run.shards`) gives each process a part of
the file, so the same number can be read by two processes. Their ``dedupe`` stages claim every
number they see first in a table in shared memory (:class:`engine.core.shared_keys.SharedKeys`,
one compare-and-swap per number) and treat a number another row holds as a duplicate.

When the run keeps a ledger, the numbers a batch won are also appended to the store, one row of
packed arrays per batch (``dedupe_claim_log``), committed before anything of the batch can reach a
lane, so that a claim is durable before its message can leave. A resume (sharded or not) fills a
fresh table from that log before it reads anything: the rows that won keep their numbers. During
a resume the rows the ledger already holds as final are invisible to dedupe (see
:class:`DedupeClaims`): a row recorded ``duplicate`` whose winner died before its claim was logged
must not claim the number itself. Without a ledger nothing is logged: such a run cannot resume.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from engine.core.shared_keys import LocalKeys, SharedKeys

__all__ = ["DedupeClaims", "KeyTable"]

KeyTable = SharedKeys | LocalKeys
"""Where the claims are held while a run lasts."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dedupe_claim_log (
  campaign TEXT NOT NULL,
  keys BLOB NOT NULL,   -- int64 number keys, native order
  rows BLOB NOT NULL    -- int64 rows, aligned with keys
)
"""
_INDEX = "CREATE INDEX IF NOT EXISTS dedupe_claim_log_by_campaign ON dedupe_claim_log (campaign)"
_OLD = "dedupe_claims"
"""The table of earlier versions (one row per number): still read by a resume, cleared with the log."""


def _tables(db: sqlite3.Connection) -> set[str]:
    return {
        name
        for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('dedupe_claim_log', ?)",
            (_OLD,),
        )
    }


class DedupeClaims:
    """The claims of one campaign: ``table`` (shared by the processes of the run, or this one's),
    and — with ``store`` — their log in that SQLite file (its own connection: make this in the
    process that uses it, after ``fork``)."""

    def __init__(self, table: KeyTable, campaign: str, store: str | Path | None = None) -> None:
        self.table = table
        self.campaign = campaign
        self.db: sqlite3.Connection | None = None
        if store is not None:
            self.db = sqlite3.connect(str(store), timeout=60.0, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute(_SCHEMA)
            self.db.execute(_INDEX)
        self.skip: npt.NDArray[np.bool_] | None = None
        """The ledger's final rows (indexed by row) during a resume: dedupe leaves them out — the
        log holds the numbers those of them that won own — and the run skips them anyway."""
        self.calls = 0
        self.seconds = 0.0
        """Batches claimed and the time spent in them (the cost a load test reports)."""

    @staticmethod
    def exists(path: str | Path, campaign: str) -> bool:
        """Whether a run of ``campaign`` on this store logged claims (a resume must keep them)."""
        if not Path(path).exists():
            return False
        db = sqlite3.connect(str(path), timeout=60.0)
        try:
            for table in _tables(db):
                if db.execute(f"SELECT 1 FROM {table} WHERE campaign = ? LIMIT 1", (campaign,)).fetchone():
                    return True
            return False
        finally:
            db.close()

    @staticmethod
    def clear(path: str | Path, campaign: str) -> None:
        """Forget ``campaign``'s claims (a fresh run, not a resume, starts without them)."""
        if DedupeClaims.exists(path, campaign):
            db = sqlite3.connect(str(path), timeout=60.0)
            try:
                with db:
                    for table in _tables(db):
                        db.execute(f"DELETE FROM {table} WHERE campaign = ?", (campaign,))
            finally:
                db.close()

    @staticmethod
    def logged(path: str | Path, campaign: str) -> tuple[list[int], list[int]]:
        """The keys and rows ``campaign``'s runs claimed, in the order they were logged."""
        keys: list[int] = []
        rows: list[int] = []
        if not Path(path).exists():
            return keys, rows
        db = sqlite3.connect(str(path), timeout=60.0)
        try:
            tables = _tables(db)
            if _OLD in tables:
                for k, r in db.execute(f"SELECT key, row FROM {_OLD} WHERE campaign = ?", (campaign,)):
                    keys.append(k)
                    rows.append(r)
            if "dedupe_claim_log" in tables:
                for kb, rb in db.execute(
                    "SELECT keys, rows FROM dedupe_claim_log WHERE campaign = ? ORDER BY rowid", (campaign,)
                ):
                    keys += np.frombuffer(kb, dtype=np.int64).tolist()
                    rows += np.frombuffer(rb, dtype=np.int64).tolist()
        finally:
            db.close()
        return keys, rows

    @staticmethod
    def fill(table: KeyTable, path: str | Path, campaign: str) -> int:
        """Claim in ``table`` what ``campaign``'s runs logged (a resume, before anything is read);
        how many claims were read. A number logged twice keeps its first row."""
        keys, rows = DedupeClaims.logged(path, campaign)
        table.claim(keys, rows)
        return len(keys)

    def __call__(self, keys: Sequence[int], rows: Sequence[int]) -> list[int]:
        """Claim ``keys[i]`` for ``rows[i]`` (logged and committed before it returns, with a
        store); the indices whose number another row holds."""
        if not keys:
            return []
        started = time.perf_counter()
        lost = self.table.claim(keys, rows)
        if self.db is not None and len(lost) < len(keys):
            if lost:
                out = set(lost)
                won = [i for i in range(len(keys)) if i not in out]
                ks, rs = [keys[i] for i in won], [rows[i] for i in won]
            else:
                ks, rs = list(keys), list(rows)
            self.db.execute(
                "INSERT INTO dedupe_claim_log (campaign, keys, rows) VALUES (?, ?, ?)",
                (
                    self.campaign,
                    np.asarray(ks, dtype=np.int64).tobytes(),
                    np.asarray(rs, dtype=np.int64).tobytes(),
                ),
            )  # (autocommit: committed when it returns)
        self.calls += 1
        self.seconds += time.perf_counter() - started
        return lost

    def close(self) -> None:
        """Close the log's connection (the table is its owner's to close)."""
        if self.db is not None:
            self.db.close()
