"""The status-callback outbox in the store: events of state changes, written with the changes they describe.

A message (or a campaign's recipient) whose sender named a callback URL has each change of its
state written as an event into ``callback_outbox`` — in the transaction that records the change —
for :mod:`engine.service.callbacks` to post. A campaign started with a callback URL is in
``campaign_callbacks``; every run of it (a blast worker, ``pigeon resume``) writes its recipients'
events through :class:`CampaignCallbackSink`, which sits before the campaign's ledger among the
run recorder's sinks so its rows go into the ledger's next transaction.
"""

from __future__ import annotations

import base64
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence

import msgspec

from engine.core.messages import MessageBatch, Outcome, Reject, SubmitResult
from engine.core.phone import mask, parse_phone
from engine.state.ledger.run import CampaignLedger
from engine.state.ledger.tx import transaction

__all__ = [
    "CAMPAIGN_CALLBACKS_SCHEMA",
    "INSERT_EVENT",
    "OUTBOX_SCHEMA",
    "CallbackEvent",
    "CampaignCallbackSink",
    "campaign_callback",
    "create_tables",
    "drop_state",
    "event_row",
    "report_state",
    "result_state",
]

OUTBOX_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS callback_outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    url        TEXT NOT NULL,       -- the receiver
    event      BLOB NOT NULL,       -- the event, JSON
    created_at REAL NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT ''
)""",
    "CREATE INDEX IF NOT EXISTS callback_outbox_url ON callback_outbox (url, seq)",
    "CREATE INDEX IF NOT EXISTS callback_outbox_age ON callback_outbox (created_at)",
    """CREATE TABLE IF NOT EXISTS callback_dead (
    seq        INTEGER PRIMARY KEY,
    url        TEXT NOT NULL,
    event      BLOB NOT NULL,
    created_at REAL NOT NULL,
    attempts   INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    dead_at    REAL NOT NULL
)""",
)

INSERT_EVENT = "INSERT INTO callback_outbox (url, event, created_at) VALUES (?, ?, ?)"
"""Parameters: the receiver's URL, the event's JSON, when it was written."""


class CallbackEvent(msgspec.Struct, kw_only=True):
    """One state change of a message, as posted (``{"events": [...]}``)."""

    id: str
    """Unique per event (``evt_…``): a receiver drops an id it has seen (delivery is at least once)."""
    message_id: str
    campaign: str
    """``api-transactional`` or ``api-marketing``."""
    state: str
    """``accepted``, ``sent``, ``delivered``, ``failed``, ``unknown``, ``opted_out``, ``suppressed``
    or ``deferred``."""
    reason: str = ""
    at: float
    """Unix seconds of the change."""
    to: str
    """The recipient: masked (``138****8000``) unless the sending key has the ``numbers`` scope."""


_enc = msgspec.json.Encoder()


def create_tables(db: sqlite3.Connection) -> None:
    """Create the outbox, dead-letter and campaign-callback tables (one transaction)."""
    with transaction(db):
        for sql in (*OUTBOX_SCHEMA, CAMPAIGN_CALLBACKS_SCHEMA):
            db.execute(sql)


def _event_id() -> str:
    return "evt_" + base64.b32encode(secrets.token_bytes(12)).decode().lower().rstrip("=")


def event_row(
    url: str,
    *,
    message_id: str,
    campaign: str,
    state: str,
    reason: str,
    at: float,
    to_e164: str,
    show_numbers: bool,
) -> tuple[str, bytes, float]:
    """The :data:`INSERT_EVENT` parameters of one event."""
    ev = CallbackEvent(
        id=_event_id(),
        message_id=message_id,
        campaign=campaign,
        state=state,
        reason=reason,
        at=round(at, 3),
        to=to_e164 if show_numbers else mask(to_e164),
    )
    return (url, _enc.encode(ev), time.time())


def drop_state(r: Reject) -> str:
    """The event state of a message the stages took out."""
    if r.reason == "opted_out":
        return "opted_out"
    return str(r.state)


def result_state(r: SubmitResult) -> tuple[str, str]:
    """The event state and reason of a gateway's answer for one message."""
    if r.outcome is Outcome.ACCEPTED:
        return "sent", ""
    if r.outcome is Outcome.UNKNOWN:
        return "unknown", r.code or "unknown"
    return "failed", f"{r.outcome.value}:{r.code or r.outcome.value}"


def report_state(status: str, code: str) -> tuple[str, str]:
    """The event state and reason of a delivery report's status."""
    if status == "delivered":
        return "delivered", ""
    return "failed", f"dlr:{code or status}"


CAMPAIGN_CALLBACKS_SCHEMA = """CREATE TABLE IF NOT EXISTS campaign_callbacks (
    campaign     TEXT PRIMARY KEY,
    url          TEXT NOT NULL,     -- where its recipients' state changes are posted
    show_numbers INTEGER NOT NULL,  -- the starting key had the `numbers` scope
    api_key      TEXT NOT NULL
)"""


def campaign_callback(db: sqlite3.Connection, campaign: str) -> tuple[str, bool] | None:
    """Where a campaign's recipients' events go (URL, numbers unmasked), or None."""
    try:
        row = db.execute(
            "SELECT url, show_numbers FROM campaign_callbacks WHERE campaign = ?", (campaign,)
        ).fetchone()
    except sqlite3.OperationalError:  # (no service has made the table)
        return None
    return (str(row[0]), bool(row[1])) if row is not None else None


class CampaignCallbackSink:
    """A run recorder sink for a campaign with a callback URL: every recipient's change becomes an
    event (``message_id`` ``<campaign>-<row>``) in the ledger's next transaction."""

    def __init__(self, url: str, show_numbers: bool, campaign: str, ledger: CampaignLedger) -> None:
        self.url, self.show, self.campaign, self.ledger = url, show_numbers, campaign, ledger

    def _row(self, mid: str, state: str, reason: str, to: str, at: float) -> tuple[str, bytes, float]:
        return event_row(
            self.url,
            message_id=mid,
            campaign=self.campaign,
            state=state,
            reason=reason,
            at=at,
            to_e164=to,
            show_numbers=self.show,
        )

    def _write(self, rows: list[tuple[str, bytes, float]]) -> None:
        for row in rows:
            self.ledger.defer(INSERT_EVENT, row)

    def _batch(self, batch: MessageBatch, state_of: Callable[[int], tuple[str, str]]) -> None:
        now = time.time()
        self._write(
            [
                self._row(mid, *state_of(i), to, now)
                for i, (mid, to) in enumerate(zip(batch.ids, batch.tos, strict=True))
            ]
        )

    def dropped(self, records: Sequence[Reject]) -> None:
        """Rejected, suppressed and deferred rows."""
        now = time.time()
        prefix = f"{self.campaign}-"
        self._write(
            [
                self._row(
                    f"{prefix}{r.row}", drop_state(r), r.reason, parse_phone(r.phone).e164 or r.phone, now
                )
                for r in records
            ]
        )

    def results(self, gateway: str, batch: MessageBatch, results: Sequence[SubmitResult]) -> None:
        """A request's answers."""
        if len(results) != len(batch):
            self.failed(gateway, batch, "gateway_contract")
            return
        self._batch(batch, lambda i: result_state(results[i]))

    def failed(self, gateway: str, batch: MessageBatch, reason: str) -> None:
        """A whole request failed."""
        self._batch(batch, lambda i: ("failed", reason))

    def unknown(self, gateway: str, batch: MessageBatch, reason: str) -> None:
        """A request without a clear answer."""
        self._batch(batch, lambda i: ("unknown", reason))

    def released(self, gateway: str, batch: MessageBatch, reason: str) -> None:
        """Queued again: no change to tell."""
