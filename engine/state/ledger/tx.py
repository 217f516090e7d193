"""Ledger transactions on SQLite: BEGIN IMMEDIATE, waiting out a busy database, and write errors that halt."""

from __future__ import annotations

import sqlite3
import time
from contextlib import suppress
from typing import Final

from engine.state.ledger.records import LedgerWriteError

__all__ = ["transaction"]


class _tx:
    """One ``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on error); SQLite errors become a
    :class:`LedgerWriteError` that says what to do."""

    __slots__ = ("db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not _locked(exc) or not _spins(self.db):
                raise _write_error(self.db, exc) from exc
            self._spin()
        except sqlite3.Error as exc:
            raise _write_error(self.db, exc) from exc

    def _spin(self) -> None:
        """Another process holds the write lock: try again after 0.1, 0.2, 0.4 … 2 ms (SQLite's
        own handler sleeps 1, 2, 5, 10 … ms — a few of those are a latency-sensitive caller's
        whole budget), for up to :data:`_SPIN_FOR` seconds."""
        deadline = time.monotonic() + _SPIN_FOR
        pause = 0.0001
        while True:
            time.sleep(pause)
            pause = min(pause * 2, 0.002)
            try:
                self.db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _locked(exc) or time.monotonic() > deadline:
                    raise _write_error(self.db, exc) from exc

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.Error as err:
                with suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
                raise _write_error(self.db, err) from err
        with suppress(sqlite3.Error):
            self.db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise _write_error(self.db, exc) from exc


_SPIN_FOR: Final = 30.0
"""Seconds :class:`_tx` waits for the write lock on a connection opened with ``spin_on_busy``."""


def transaction(db: sqlite3.Connection) -> _tx:
    """``with transaction(db):`` — one ``BEGIN IMMEDIATE`` … ``COMMIT`` on a store connection,
    rolled back on error; waits for the write lock as the connection was opened to (see
    :class:`Ledger`'s ``spin_on_busy``)."""
    return _tx(db)


def _locked(exc: sqlite3.OperationalError) -> bool:
    name = getattr(exc, "sqlite_errorname", "")
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) if name else "locked" in str(exc)


def _spins(db: sqlite3.Connection) -> bool:
    """Whether ``db`` leaves waiting for the lock to :class:`_tx` (its busy timeout is 0)."""
    try:
        return int(db.execute("PRAGMA busy_timeout").fetchone()[0]) == 0
    except sqlite3.Error:
        return False


def _write_error(db: sqlite3.Connection, exc: sqlite3.Error) -> LedgerWriteError:
    path = ""
    with suppress(sqlite3.Error):
        path = next((r[2] for r in db.execute("PRAGMA database_list") if r[1] == "main"), "")
    hint = " (is its disk full?)" if "I/O" in str(exc) else ""
    return LedgerWriteError(
        f"cannot write to the store {path or '(unknown file)'}: {exc}{hint}. The run stopped: nothing "
        "was sent without being recorded first. Free space (or fix the file), then `pigeon resume` "
        "the campaign to finish the job"
    )
