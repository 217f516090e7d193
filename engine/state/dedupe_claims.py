"""Which row of a campaign owns each number, in the store: the dedupe the shards of one send share.

``pigeon send --shards N`` on byte ranges (:mod:`engine.run.shards`) gives each process a part of
the file, so the same number can be read by two processes; their ``dedupe`` stages claim every
number they see first in this table (one statement per batch, before anything of the batch can be
sent) and treat a number another row holds as a duplicate. A claim is tagged with its row, so a
resumed run finds its rows' own claims again, and the table outlives the run: a resume — sharded
or not — keeps the rows that won.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["DedupeClaims"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dedupe_claims (
  campaign TEXT NOT NULL,
  key INTEGER NOT NULL,
  row INTEGER NOT NULL,
  PRIMARY KEY (campaign, key)
) WITHOUT ROWID
"""
_CHUNK = 5000
"""Rows per statement (3 parameters each, under SQLite's 32,766)."""


class DedupeClaims:
    """The claims of one campaign in the store at ``path`` (its own connection: open it in the
    process that uses it, after ``fork``)."""

    def __init__(self, path: str | Path, campaign: str) -> None:
        self.campaign = campaign
        self.db = sqlite3.connect(str(path), timeout=60.0, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(_SCHEMA)
        self.calls = 0
        self.seconds = 0.0
        """Statements run and the time spent in them (the cost a load test reports)."""

    @staticmethod
    def exists(path: str | Path, campaign: str) -> bool:
        """Whether a run of ``campaign`` on this store claimed numbers (a resume must keep them)."""
        if not Path(path).exists():
            return False
        db = sqlite3.connect(str(path), timeout=60.0)
        try:
            row = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'dedupe_claims'"
            ).fetchone()
            return row is not None and (
                db.execute("SELECT 1 FROM dedupe_claims WHERE campaign = ? LIMIT 1", (campaign,)).fetchone()
                is not None
            )
        finally:
            db.close()

    @staticmethod
    def clear(path: str | Path, campaign: str) -> None:
        """Forget ``campaign``'s claims (a fresh run, not a resume, starts without them)."""
        if DedupeClaims.exists(path, campaign):
            db = sqlite3.connect(str(path), timeout=60.0)
            try:
                with db:
                    db.execute("DELETE FROM dedupe_claims WHERE campaign = ?", (campaign,))
            finally:
                db.close()

    def __call__(self, keys: Sequence[int], rows: Sequence[int]) -> list[int]:
        """Claim ``keys[i]`` for ``rows[i]`` (committed before it returns); the indices whose number
        another row holds."""
        if not keys:
            return []
        started = time.perf_counter()
        c = self.campaign
        won: set[int] = set()
        for at in range(0, len(keys), _CHUNK):
            ks, rs = keys[at : at + _CHUNK], rows[at : at + _CHUNK]
            values = ",".join(["(?,?,?)"] * len(ks))
            params: list[object] = []
            for k, r in zip(ks, rs, strict=True):
                params += (c, k, r)
            cur = self.db.execute(
                f"INSERT INTO dedupe_claims (campaign, key, row) VALUES {values} "
                "ON CONFLICT DO NOTHING RETURNING key",
                params,
            )
            won.update(k for (k,) in cur.fetchall())
            self.calls += 1
        out: list[int] = []
        if len(won) < len(keys):  # already claimed: by this very row (a resume), or another row
            lost = [i for i, k in enumerate(keys) if k not in won]
            owner: dict[int, int] = {}
            for at in range(0, len(lost), _CHUNK):
                ks = [keys[i] for i in lost[at : at + _CHUNK]]
                marks = ",".join("?" * len(ks))
                owner.update(
                    self.db.execute(
                        f"SELECT key, row FROM dedupe_claims WHERE campaign = ? AND key IN ({marks})",
                        [c, *ks],
                    ).fetchall()
                )
                self.calls += 1
            out = [i for i in lost if owner.get(keys[i]) != rows[i]]
        self.seconds += time.perf_counter() - started
        return out

    def close(self) -> None:
        """Close the connection."""
        self.db.close()
