"""The embedded store: SQLite in WAL mode, one file, no server; batched writes in one transaction."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from engine.core.errors import ConfigError
from engine.core.messages import number_key
from engine.state.optout import OptOutSet
from engine.state.store import CONSENT_RETENTION_SECONDS, ConsentRecord, OptOutRecord

__all__ = ["SqliteStore"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS optouts (
    key        INTEGER PRIMARY KEY,  -- number_key(): the E.164 number as an int; sorted scans are free
    number     TEXT NOT NULL,        -- E.164
    source     TEXT NOT NULL,
    reason     TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    seq        INTEGER NOT NULL DEFAULT 0  -- grows with each insert: a shared copy lacks seq > its mark
);
-- The sorted keys of all opt-outs as one int64 blob, rebuilt on load when writes made it stale:
-- a load is then one read, not millions of rows.
CREATE TABLE IF NOT EXISTS optout_snapshot (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL,
    keys       BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- Messages handed to a gateway, for frequency caps across campaigns and runs.
CREATE TABLE IF NOT EXISTS sends (
    kind    TEXT NOT NULL,              -- marketing / transactional: separate budgets
    key     INTEGER NOT NULL,           -- number_key()
    ts      REAL NOT NULL,
    content INTEGER NOT NULL DEFAULT 0  -- crc32 of the text, for "same content at most once per …"
);
CREATE INDEX IF NOT EXISTS sends_by_kind_time ON sends (kind, ts);
-- Proof that people agreed to marketing messages; kept at least 5 months.
CREATE TABLE IF NOT EXISTS consents (
    key        INTEGER PRIMARY KEY,
    number     TEXT NOT NULL,
    source     TEXT NOT NULL,
    proof      TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL
);
-- MO replies (numbers as keys only, no text), for the replies column of the outcomes report.
CREATE TABLE IF NOT EXISTS replies (
    key    INTEGER NOT NULL,  -- number_key()
    at     REAL NOT NULL,
    optout INTEGER NOT NULL   -- 1: an opt-out keyword
);
CREATE INDEX IF NOT EXISTS replies_by_time ON replies (at);
INSERT OR IGNORE INTO meta VALUES ('optouts_generation', 0);
INSERT OR IGNORE INTO meta VALUES ('store_id', abs(random()));
"""
_SEQ_MIGRATION: Final = """
ALTER TABLE optouts ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
UPDATE optouts SET seq = key;
"""
"""A store made before ``seq``: its rows take their key as their sequence (distinct, in key order,
one rewrite of the table), and later inserts count on from the largest."""
_FETCH: Final = 1 << 18


def _key(e164: str) -> int:
    return number_key(e164[3:] if e164.startswith("+86") else e164)


class SqliteStore:
    """Opt-outs in a SQLite file (WAL: readers never block the writer)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self.ensure_schema(self._db)
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(str(self.path), "store.path", f"cannot open the store: {exc}") from exc

    @staticmethod
    def ensure_schema(db: sqlite3.Connection) -> None:
        """Create the store's tables on ``db`` if they are missing (the ledger shares the file), and
        give an older store's opt-outs their sequence column (once; see :data:`_SEQ_MIGRATION`)."""
        db.executescript(_SCHEMA)
        if db.execute("SELECT 1 FROM meta WHERE name = 'optouts_seq'").fetchone() is not None:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT 1 FROM meta WHERE name = 'optouts_seq'").fetchone() is None:
                columns = {row[1] for row in db.execute("PRAGMA table_info(optouts)")}
                if "seq" not in columns:
                    for statement in _SEQ_MIGRATION.strip().split(";\n"):
                        db.execute(statement.rstrip(";"))
                db.execute("CREATE INDEX IF NOT EXISTS optouts_by_seq ON optouts (seq)")
                db.execute(
                    "INSERT INTO meta VALUES ('optouts_seq', (SELECT coalesce(max(seq), 0) FROM optouts))"
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def add_optouts(self, records: Iterable[OptOutRecord]) -> int:
        """Record opt-outs in one transaction; an existing number keeps its first record."""
        now = time.time()
        rows = [(_key(r.number), r.number, r.source, r.reason, r.created_at or now) for r in records]
        rows.sort()  # in key order, inserts append to the b-tree instead of splitting it
        with self._tx():
            seq = self.optouts_seq()  # under the write lock: each insert's seq above every earlier one
            before = self.count_optouts()
            self._db.executemany(
                "INSERT OR IGNORE INTO optouts (key, number, source, reason, created_at, seq) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(*row, seq + i) for i, row in enumerate(rows, 1)],
            )
            added = self.count_optouts() - before
            if added:
                self._bump()
                self._db.execute("UPDATE meta SET value = ? WHERE name = 'optouts_seq'", (seq + len(rows),))
        return added

    def optouts_seq(self) -> int:
        """The largest sequence number an opt-out was given (0: none yet): every opt-out added later
        has a larger one, so a copy that holds every row up to it needs only the rows after."""
        return int(self._db.execute("SELECT value FROM meta WHERE name = 'optouts_seq'").fetchone()[0])

    def store_id(self) -> int:
        """A random number the store drew when it was made: another file (or one made again at the
        same path) has another."""
        return int(self._db.execute("SELECT value FROM meta WHERE name = 'store_id'").fetchone()[0])

    def optout_keys_between(self, after: int, upto: int) -> npt.NDArray[np.int64]:
        """The keys of the opt-outs whose sequence is in ``(after, upto]`` (the index on ``seq``:
        reads only those rows)."""
        cur = self._db.execute("SELECT key FROM optouts WHERE seq > ? AND seq <= ?", (after, upto))
        chunks: list[npt.NDArray[np.int64]] = []
        while rows := cur.fetchmany(_FETCH):
            chunks.append(np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)))
        return np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)

    def add_replies(self, replies: Iterable[tuple[str, float, bool]]) -> int:
        """Record MO replies (E.164 number, epoch seconds, whether an opt-out) in one transaction."""
        rows = [(_key(n), at, int(optout)) for n, at, optout in replies]
        if rows:
            with self._tx():
                self._db.executemany("INSERT INTO replies VALUES (?, ?, ?)", rows)
        return len(rows)

    def remove_optouts(self, numbers: Iterable[str]) -> int:
        """Forget opt-outs; returns how many there were."""
        keys = [(_key(n),) for n in numbers]
        with self._tx():
            before = self.count_optouts()
            self._db.executemany("DELETE FROM optouts WHERE key = ?", keys)
            removed = before - self.count_optouts()
            if removed:
                self._bump()
        return removed

    def optout_records(self, numbers: Sequence[str]) -> dict[str, OptOutRecord]:
        """The records of those of ``numbers`` that opted out."""
        out: dict[str, OptOutRecord] = {}
        for n in numbers:
            row = self._db.execute(
                "SELECT number, source, reason, created_at FROM optouts WHERE key = ?", (_key(n),)
            ).fetchone()
            if row is not None:
                out[n] = OptOutRecord(*row)
        return out

    def iter_optouts(self) -> Iterator[OptOutRecord]:
        """Every opt-out, in number order."""
        cur = self._db.execute("SELECT number, source, reason, created_at FROM optouts ORDER BY key")
        while rows := cur.fetchmany(10_000):
            for row in rows:
                yield OptOutRecord(*row)

    def count_optouts(self) -> int:
        """How many numbers opted out."""
        return int(self._db.execute("SELECT count(*) FROM optouts").fetchone()[0])

    def load_optouts(self) -> OptOutSet:
        """Every opted-out number as a sorted int64 array.

        From the snapshot when it is current (one read: 10M numbers in well under a second);
        otherwise rebuilt from the table in 1M-row chunks (flat memory) and saved as the new
        snapshot.
        """
        generation = self._generation()
        row = self._db.execute("SELECT generation, length(keys) FROM optout_snapshot WHERE id = 1").fetchone()
        if row is not None and row[0] == generation:
            # Read the blob straight into the array, 16 MiB at a time: no second full copy.
            keys = np.empty(row[1] // 8, dtype=np.int64)
            view = keys.data.cast("B")
            with self._db.blobopen("optout_snapshot", "keys", 1, readonly=True) as blob:
                for off in range(0, row[1], 1 << 24):
                    chunk = blob.read(1 << 24)
                    view[off : off + len(chunk)] = chunk
            return OptOutSet(keys)
        # Rebuild: fill one preallocated array from the table, 256k rows at a time (no second copy,
        # no million-tuple lists), then write it as the snapshot blob the same way.
        with self._tx():  # one consistent read: count and rows from the same snapshot
            total = self.count_optouts()
            keys = np.empty(total, dtype=np.int64)
            cur = self._db.execute("SELECT key FROM optouts ORDER BY key")
            filled = 0
            while rows := cur.fetchmany(_FETCH):
                keys[filled : filled + len(rows)] = [r[0] for r in rows]
                filled += len(rows)
                del rows
            keys = keys[:filled]
            if self._generation() == generation:  # nobody wrote meanwhile
                self._db.execute(
                    "INSERT OR REPLACE INTO optout_snapshot VALUES (1, ?, zeroblob(?))",
                    (generation, keys.nbytes),
                )
                view = keys.data.cast("B")
                with self._db.blobopen("optout_snapshot", "keys", 1) as blob:
                    for off in range(0, keys.nbytes, 1 << 24):
                        blob.write(view[off : off + (1 << 24)])
        return OptOutSet(keys)

    def _generation(self) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE name = 'optouts_generation'").fetchone()[0])

    def _bump(self) -> None:
        self._db.execute("UPDATE meta SET value = value + 1 WHERE name = 'optouts_generation'")

    def record_sends(
        self, kind: str, keys: Sequence[int], ts: float, contents: Sequence[int] | None = None
    ) -> None:
        """Remember messages handed to a gateway (one transaction for the whole batch)."""
        rows = [(kind, k, ts, c) for k, c in zip(keys, contents or [0] * len(keys), strict=True)]
        with self._tx():
            self._db.executemany("INSERT INTO sends VALUES (?, ?, ?, ?)", rows)

    def recent_contents(self, kind: str, since: float) -> dict[int, set[int]]:
        """Number key → crc32s of the texts it was sent since ``since`` (a short window: small)."""
        out: dict[int, set[int]] = {}
        for key, content in self._db.execute(
            "SELECT key, content FROM sends WHERE kind = ? AND ts >= ? AND content != 0", (kind, since)
        ):
            out.setdefault(key, set()).add(content)
        return out

    def load_sends(self, kind: str, since: float) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Keys and times of the ``kind`` messages sent since ``since`` (for caps)."""
        cur = self._db.execute("SELECT key, ts FROM sends WHERE kind = ? AND ts >= ?", (kind, since))
        keys: list[npt.NDArray[np.int64]] = []
        times: list[npt.NDArray[np.float64]] = []
        while rows := cur.fetchmany(_FETCH):
            arr = np.array(rows, dtype=np.float64).reshape(-1, 2)  # keys < 2**53: exact as floats
            keys.append(arr[:, 0].astype(np.int64))
            times.append(arr[:, 1])
        if not keys:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
        return np.concatenate(keys), np.concatenate(times)

    def prune_sends(self, before: float) -> int:
        """Forget sends older than any cap window; returns how many."""
        with self._tx():
            return self._db.execute("DELETE FROM sends WHERE ts < ?", (before,)).rowcount

    def add_consents(self, records: Iterable[ConsentRecord]) -> int:
        """Record consents in one transaction; a number's latest consent replaces the earlier one."""
        now = time.time()
        rows = sorted((_key(r.number), r.number, r.source, r.proof, r.created_at or now) for r in records)
        with self._tx():
            self._db.executemany("INSERT OR REPLACE INTO consents VALUES (?, ?, ?, ?, ?)", rows)
        return len(rows)

    def load_consents(self) -> OptOutSet:
        """The numbers with a consent record, as a sorted key set (its ``contains`` finds them)."""
        cur = self._db.execute("SELECT key FROM consents ORDER BY key")
        chunks: list[npt.NDArray[np.int64]] = []
        while rows := cur.fetchmany(_FETCH):
            chunks.append(np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)))
        return OptOutSet(np.concatenate(chunks) if chunks else None)

    def consented(self, keys: Sequence[int]) -> list[int]:
        """Indices of the :func:`number_key` ``keys`` that have a consent record (a query per 500)."""
        found: set[int] = set()
        for i in range(0, len(keys), 500):
            chunk = list(keys[i : i + 500])
            marks = ",".join("?" * len(chunk))
            found.update(
                r[0] for r in self._db.execute(f"SELECT key FROM consents WHERE key IN ({marks})", chunk)
            )
        return [i for i, k in enumerate(keys) if k in found]

    def consent_records(self, numbers: Sequence[str]) -> dict[str, ConsentRecord]:
        """The consents of those of ``numbers`` that gave one."""
        out: dict[str, ConsentRecord] = {}
        for n in numbers:
            row = self._db.execute(
                "SELECT number, source, proof, created_at FROM consents WHERE key = ?", (_key(n),)
            ).fetchone()
            if row is not None:
                out[n] = ConsentRecord(*row)
        return out

    def prune_consents(self, before: float, now: float | None = None) -> int:
        """Forget consents given before ``before``; never those younger than 5 months."""
        limit = (now if now is not None else time.time()) - CONSENT_RETENTION_SECONDS
        if before > limit:
            raise ValueError("consent proof must be kept at least 5 months (150 days)")
        with self._tx():
            return self._db.execute("DELETE FROM consents WHERE created_at < ?", (before,)).rowcount

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
