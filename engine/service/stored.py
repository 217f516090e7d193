"""The API's messages at rest: opaque ids, and what a look-up after a restart needs (``api_messages``).

A message posted to ``POST /v1/messages`` gets an id of 96 random bits in base32 (``msg_`` + 20
characters): not sequential, nothing to guess from one id about another, no jump after a restart,
and the same id for the message's whole life. The ledger keeps rows (``api-transactional-<row>``);
this table ties each id to its row and keeps what the ledger does not — the recipient, carrier,
parts, acceptance time, the API key that sent it and its callback URL — so ``GET
/v1/messages/{id}`` from a later process shows what the first one did. It lives in the service's
store file, written in the transaction that records the message's acceptance.
"""

from __future__ import annotations

import base64
import secrets
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "API_MESSAGES_SCHEMA",
    "INSERT_MESSAGE",
    "StoredMessage",
    "by_row",
    "is_opaque",
    "load",
    "new_id",
    "numbers_of",
]

API_MESSAGES_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS api_messages (
    id           TEXT PRIMARY KEY,   -- msg_… (opaque)
    campaign     TEXT NOT NULL,      -- api-transactional | api-marketing (the ledger's campaign)
    row          INTEGER NOT NULL,   -- the ledger's row
    priority     TEXT NOT NULL,
    to_e164      TEXT NOT NULL,      -- the recipient (personal data: shown masked without `numbers`)
    carrier      TEXT NOT NULL,
    parts        INTEGER NOT NULL,
    accepted_at  REAL NOT NULL,
    api_key      TEXT NOT NULL,      -- the name of the key that sent it
    callback_url TEXT,               -- where its state changes are posted (NULL: nowhere)
    show_numbers INTEGER NOT NULL    -- its key had the `numbers` scope: callbacks carry the number
) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS api_messages_row ON api_messages (campaign, row)",
)

INSERT_MESSAGE = "INSERT OR REPLACE INTO api_messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
"""Parameters: id, campaign, row, priority, to_e164, carrier, parts, accepted_at, api_key,
callback_url, show_numbers."""

PREFIX = "msg_"


def new_id() -> str:
    """A fresh message id: ``msg_`` and 96 random bits in lower-case base32 (20 characters)."""
    return PREFIX + base64.b32encode(secrets.token_bytes(12)).decode().lower().rstrip("=")


def is_opaque(message_id: str) -> bool:
    """Whether ``message_id`` has the shape of an id from :func:`new_id`."""
    return len(message_id) == 24 and message_id.startswith(PREFIX)


@dataclass(frozen=True)
class StoredMessage:
    """One row of ``api_messages``."""

    id: str
    campaign: str
    row: int
    priority: str
    to_e164: str
    carrier: str
    parts: int
    accepted_at: float
    api_key: str
    callback_url: str | None
    show_numbers: bool

    @property
    def ledger_id(self) -> str:
        """The ledger's id of the message (``<campaign>-<row>``)."""
        return f"{self.campaign}-{self.row}"


_COLUMNS = (
    "id, campaign, row, priority, to_e164, carrier, parts, accepted_at, api_key, callback_url, show_numbers"
)


def _of(row: Sequence[object]) -> StoredMessage:
    return StoredMessage(
        str(row[0]),
        str(row[1]),
        int(row[2]),  # type: ignore[call-overload]
        str(row[3]),
        str(row[4]),
        str(row[5]),
        int(row[6]),  # type: ignore[call-overload]
        float(row[7]),  # type: ignore[arg-type]
        str(row[8]),
        None if row[9] is None else str(row[9]),
        bool(row[10]),
    )


def load(db: sqlite3.Connection, ids: Iterable[str]) -> dict[str, StoredMessage]:
    """The stored messages among ``ids`` (an older store without the table: none)."""
    out: dict[str, StoredMessage] = {}
    try:
        for mid in ids:
            if is_opaque(mid):
                row = db.execute(f"SELECT {_COLUMNS} FROM api_messages WHERE id = ?", (mid,)).fetchone()
                if row is not None:
                    out[mid] = _of(row)
    except sqlite3.OperationalError:
        return {}
    return out


def by_row(db: sqlite3.Connection, campaign: str, row: int) -> StoredMessage | None:
    """The stored message at the ledger's ``campaign`` and ``row``."""
    found = db.execute(
        f"SELECT {_COLUMNS} FROM api_messages WHERE campaign = ? AND row = ?", (campaign, row)
    ).fetchone()
    return _of(found) if found is not None else None


def numbers_of(db: sqlite3.Connection, ids: Iterable[str]) -> dict[str, str]:
    """Message id → its recipient in E.164, for the stored ones among ``ids``."""
    return {mid: m.to_e164 for mid, m in load(db, ids).items()}
