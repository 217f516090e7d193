"""The campaign ledger: what happened to every recipient of a campaign, durable across crashes.

The ledger lives in the embedded store (the same SQLite file, WAL mode, as the send history the
frequency caps count), so a request's hand-over is recorded in *one* transaction with its cap
counts: after a crash the two never disagree.

Layout (columnar, see docs/ledger.md): a recipient is identified by its segment row number (the
segment is read deterministically; message ids are ``<campaign>-<row>``). Each write is one
*event* row holding packed arrays — the rows it is about, a state code per row (or one for all),
reason labels, provider ids — so a 1000-message request costs one ``INSERT`` of a few blobs, not
1000 rows. Per-recipient state is derived by replaying a campaign's events in order (the last
event naming a row wins), then applying delivery reports.

Events:

* ``drop`` — rows a batch's stages refused (rejected / suppressed / deferred, with reasons);
  buffered and written with the next transaction (lost ones are re-derived on resume: the
  segment and its stages are deterministic).
* ``submitting`` — a request's rows, committed *before* the request goes to the gateway (with the
  cap counts). A row left ``submitting`` by a crash is never resent under at-most-once.
* ``outcome`` — a gateway's answer: ``submitted`` (with provider ids), ``failed`` or ``unknown``
  with reasons; committed when the answer arrives. Also ``pending`` (reason ``waiting:…`` or
  ``retry:…``) for a request that never left or must go again: a row is ``submitting`` only while
  its request may be on the wire, and its cap count is taken back in the same transaction.

One process owns a running campaign at a time: a *lease* row (owner, pid, host, start, heartbeat)
taken in the transaction that opens the run, renewed every few seconds, checked in every
hand-over's transaction (a writer whose lease was taken over can never hand a request over) and
given back at the end. A second run of the campaign is refused while the lease is held (a
:class:`CampaignBusy` that says by whom); a lease whose owner died — its pid is gone on this host,
or its heartbeat is older than the lease's time to live — is taken over.

Delivery semantics per campaign: ``at-most-once`` (marketing default: a row in ``submitting`` at
a crash is reconciled from delivery reports when they arrived, else recorded ``unknown`` and not
resent) or ``at-least-once`` (transactional default: such rows are sent again on resume, with
the same message id as idempotency key, and not counted against caps twice).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from enum import IntEnum, StrEnum
from itertools import compress
from operator import sub
from pathlib import Path
from typing import Any, Final

import msgspec
import numpy as np
import numpy.typing as npt

from engine.errors import EngineError, RunHalt
from engine.messages import (
    ACCEPTED,
    DeliveryReport,
    DeliveryStatus,
    MessageBatch,
    Outcome,
    Reject,
    SubmitResult,
)

__all__ = [
    "CampaignBusy",
    "CampaignCounts",
    "CampaignLedger",
    "CampaignRecord",
    "CampaignStatus",
    "Fingerprint",
    "Lease",
    "LeaseLost",
    "Ledger",
    "LedgerError",
    "LedgerStalled",
    "LedgerState",
    "LedgerWriteError",
    "MessageRecord",
    "Semantics",
    "default_semantics",
    "file_fingerprint",
    "skip_rows",
    "transaction",
]


class LedgerError(EngineError):
    """A campaign's ledger refuses what was asked (finished, cancelled, changed segment…)."""


class CampaignBusy(LedgerError):
    """Another live process runs the campaign now (it holds the campaign's lease)."""

    def __init__(self, campaign: str, holder: LeaseHolder) -> None:
        self.campaign = campaign
        self.holder = holder
        super().__init__(
            f"campaign {campaign!r} is being sent by {holder.describe()}; nothing was sent. Wait for "
            f"it to end (`pigeon status {campaign}`), or stop it (Ctrl-C, or kill {holder.pid} on "
            f"{holder.host}) and `pigeon resume {campaign}`. A lease whose holder died is taken over "
            f"by itself (at once on this host; after {holder.ttl:g} s without a heartbeat elsewhere)"
        )


class LeaseLost(LedgerError, RunHalt):
    """Another process took this run's campaign over (this one was stopped or cut off for longer
    than the lease lives): it hands nothing more over."""

    reason = "lease_lost"


class LedgerStalled(LedgerError, RunHalt):
    """Requests in a row got no answer: the gateway is hanging or gone."""

    reason = "gateway_stalled"


class LedgerState(StrEnum):
    """The state of one recipient in a campaign's ledger."""

    PENDING = "pending"
    """Not handled yet (or held back and to be tried again)."""
    SUBMITTING = "submitting"
    """Handed to a gateway; its answer is not recorded yet."""
    SUBMITTED = "submitted"
    """Accepted by a gateway (``sent`` in a run's summary)."""
    DELIVERED = "delivered"
    """A delivery report says the handset has it."""
    FAILED = "failed"
    """Refused by a gateway, or a delivery report says it failed / expired / was rejected."""
    SUPPRESSED = "suppressed"
    REJECTED = "rejected"
    DEFERRED = "deferred"
    UNKNOWN = "unknown"
    """A gateway may or may not have taken it (a timeout, or a crash while submitting): never resent
    under at-most-once; a delivery report settles it."""


class _Code(IntEnum):
    PENDING = 0
    SUBMITTING = 1
    SUBMITTED = 2
    DELIVERED = 3
    FAILED = 4
    SUPPRESSED = 5
    REJECTED = 6
    DEFERRED = 7
    UNKNOWN = 8


_STATE_OF: Final = {c: LedgerState[c.name] for c in _Code}
_OUTCOME_CODE: Final = {Outcome.ACCEPTED: _Code.SUBMITTED, Outcome.UNKNOWN: _Code.UNKNOWN}
"""A gateway's per-message answer → the recipient's state (anything else final is ``failed``)."""
_CODE_OF: Final = {LedgerState[c.name].value: c for c in _Code}


class _Event(IntEnum):
    DROP = 1
    SUBMITTING = 2
    OUTCOME = 3


class Semantics(StrEnum):
    """What a crash may cost a campaign's recipients."""

    AT_MOST_ONCE = "at-most-once"
    """Never twice: a message whose hand-over was cut short is recorded ``unknown``, not resent."""
    AT_LEAST_ONCE = "at-least-once"
    """Never skipped: such a message is sent again on resume (with its idempotency key)."""


def default_semantics(kind: str) -> Semantics:
    """Marketing: at-most-once (a promotion twice is worse than once not); transactional:
    at-least-once (a verification code must arrive)."""
    return Semantics.AT_LEAST_ONCE if kind == "transactional" else Semantics.AT_MOST_ONCE


class CampaignStatus(StrEnum):
    """Where a campaign stands."""

    RUNNING = "running"
    """Started and not finished: ``pigeon send`` / ``pigeon resume`` continue it."""
    FINISHED = "finished"
    """Every row of the segment was handled."""
    CANCELLED = "cancelled"
    """Stopped for good by ``pigeon cancel``."""


class Fingerprint(msgspec.Struct, frozen=True, kw_only=True):
    """What a campaign's run is bound to: the segment's content and the template."""

    segment: str = ""
    """The segment file (as configured)."""
    size: int = -1
    """Its size in bytes (-1: not a file)."""
    sha256: str = ""
    """Hex SHA-256 of its content."""
    template: str = ""
    """Hex SHA-256 of the template text, signature and opt-out text."""

    def differences(self, other: Fingerprint) -> list[str]:
        """What changed from ``self`` (recorded) to ``other`` (now), in words."""
        out: list[str] = []
        if self.segment != other.segment:
            out.append(f"the segment is now {other.segment!r} (was {self.segment!r})")
        if self.size != other.size or self.sha256 != other.sha256:
            out.append(
                f"the segment's content changed (size {self.size:,} → {other.size:,} bytes, "
                f"sha256 {self.sha256[:12]}… → {other.sha256[:12]}…)"
            )
        if self.template != other.template:
            out.append("the template (text, signature or opt-out text) changed")
        return out


def file_fingerprint(path: Path | None, segment_label: str, template_parts: Sequence[str]) -> Fingerprint:
    """The :class:`Fingerprint` of a segment file (read once, 1 MiB at a time) and a template."""
    th = hashlib.sha256("\x1f".join(template_parts).encode()).hexdigest()
    if path is None or not path.is_file():
        return Fingerprint(segment=segment_label, template=th)
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return Fingerprint(segment=segment_label, size=size, sha256=h.hexdigest(), template=th)


class CampaignRecord(msgspec.Struct, kw_only=True):
    """A campaign as the ledger knows it."""

    id: str
    kind: str
    semantics: Semantics
    status: CampaignStatus
    fingerprint: Fingerprint
    created_at: float
    updated_at: float
    runs: int = 0
    """How many runs (send, resumes) worked on it."""
    campaign_file: str = ""
    """The campaign file it was last sent from (for ``pigeon resume``)."""
    engine_file: str = ""


class MessageRecord(msgspec.Struct, kw_only=True):
    """What the ledger knows about one message."""

    message_id: str
    campaign: str
    row: int
    state: LedgerState
    reason: str = ""
    gateway: str = ""
    provider_id: str = ""
    attempts: int = 0
    """Hand-overs to a gateway (a resume under at-least-once hands a message over again)."""
    submitted_at: float = 0.0
    """When it was first handed to a gateway (epoch seconds; 0: never)."""
    answered_at: float = 0.0
    """When the gateway's answer was recorded."""
    delivery_status: str = ""
    delivery_code: str = ""
    delivered_at: float = 0.0
    """``done_at`` of the delivery report."""


class CampaignCounts(msgspec.Struct, kw_only=True):
    """A campaign's recipients by state, and by reason within each state."""

    campaign: str
    states: dict[str, int]
    reasons: dict[str, dict[str, int]]

    @property
    def total(self) -> int:
        """Every row the ledger knows about."""
        return sum(self.states.values())


# -- the campaign lease ---------------------------------------------------------------------

LEASE_TTL: Final = 15.0
"""Seconds a lease lives without a heartbeat (``store.lease_ttl``); renewed every third of it."""
HOST: Final = socket.gethostname()


def process_start(pid: int) -> str:
    """When process ``pid`` started, as this host's kernel counts it ("" where it cannot tell):
    with the pid, it names one process even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return ""
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else ""


def _pid_alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    return not start or process_start(pid) in ("", start)


class LeaseHolder(msgspec.Struct, kw_only=True, frozen=True):
    """Who holds a campaign's lease, as the store says."""

    campaign: str
    owner: str
    host: str
    pid: int
    started_at: float
    heartbeat: float
    ttl: float
    alive: bool
    """Whether it still counts: its heartbeat is younger than ``ttl`` and, on this host, its
    process is still there."""

    def describe(self, now: float | None = None) -> str:
        """ "pigeon send (pid 4242 on host h) since 14:02:03, heartbeat 2 s ago"."""
        ago = (now if now is not None else time.time()) - self.heartbeat
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at))
        return f"{self.owner} (pid {self.pid} on host {self.host}) since {when}, heartbeat {ago:.0f} s ago"


_LEASE_ROW: Final = (
    "SELECT campaign, owner, host, pid, pid_start, started_at, heartbeat, ttl, token "
    "FROM ledger_leases WHERE campaign = ?"
)


_LEASE_TOKEN: Final = "SELECT token FROM ledger_leases WHERE campaign = ?"


def _holder(row: Sequence[Any], now: float) -> LeaseHolder:
    campaign, owner, host, pid, pid_start, started_at, heartbeat, ttl, _token = row
    fresh = now - heartbeat < ttl
    alive = fresh and (host != HOST or _pid_alive(pid, pid_start))
    return LeaseHolder(
        campaign=campaign,
        owner=owner,
        host=host,
        pid=pid,
        started_at=started_at,
        heartbeat=heartbeat,
        ttl=ttl,
        alive=alive,
    )


def _take_lease(db: sqlite3.Connection, campaign: str, owner: str, ttl: float, adopt: str, now: float) -> str:
    """Inside the caller's transaction: take the campaign's lease (or adopt the one ``adopt`` names)
    and return its token; :class:`CampaignBusy` when a live process holds it."""
    row = db.execute(_LEASE_ROW, (campaign,)).fetchone()
    if row is not None and not (adopt and row[8] == adopt):
        holder = _holder(row, now)
        if holder.alive:
            raise CampaignBusy(campaign, holder)
    token = adopt or secrets.token_hex(16)
    pid = os.getpid()
    db.execute(
        "INSERT OR REPLACE INTO ledger_leases VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (campaign, token, owner, HOST, pid, process_start(pid), now, now, ttl),
    )
    return token


class Lease:
    """This process's hold on a campaign: a thread renews it every ``ttl / 3`` seconds on a
    connection of its own (whatever the event loop is doing); every hand-over checks it in its
    transaction (:meth:`CampaignLedger.handover`), so a process whose lease was taken over — it was
    stopped or cut off for longer than ``ttl`` — never hands another request over.
    """

    def __init__(self, path: Path, campaign: str, token: str, ttl: float) -> None:
        self.path = path
        self.campaign = campaign
        self.token = token
        self.ttl = ttl
        self.lost = False
        """Set when a renewal found the lease taken over."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Lease:
        """Start renewing (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="pigeon-lease", daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5)
        try:
            while not self._stop.wait(self.ttl / 3):
                try:
                    cur = db.execute(
                        "UPDATE ledger_leases SET heartbeat = ? WHERE campaign = ? AND token = ?",
                        (time.time(), self.campaign, self.token),
                    )
                except sqlite3.Error:
                    continue  # busy or a full disk: the next beat tries again; the hand-overs check too
                if cur.rowcount == 0:
                    self.lost = True
                    return
        finally:
            db.close()

    def hand_off(self) -> str:
        """Stop renewing and keep the lease for another process that adopts it (its token, given
        to :meth:`Ledger.open_campaign`'s ``adopt``): the service for the blast worker it starts."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        return self.token

    def release(self) -> None:
        """Stop renewing and give the lease back (when this process still holds it)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        with suppress(sqlite3.Error):
            db = sqlite3.connect(self.path, isolation_level=None, timeout=5)
            try:
                db.execute(
                    "DELETE FROM ledger_leases WHERE campaign = ? AND token = ?", (self.campaign, self.token)
                )
            finally:
                db.close()


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS ledger_campaigns (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    semantics  TEXT NOT NULL,
    status     TEXT NOT NULL,
    fingerprint BLOB NOT NULL,   -- msgspec JSON of Fingerprint
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    runs       INTEGER NOT NULL DEFAULT 0,
    campaign_file TEXT NOT NULL DEFAULT '',
    engine_file   TEXT NOT NULL DEFAULT '',
    next_row   INTEGER NOT NULL DEFAULT 1  -- for streams without a segment (API): the next row to give
);
-- One row per batch / request: packed arrays, see the module docstring. A rowid table: blobs of a
-- few KB stay on the row's page (WITHOUT ROWID tables would spill them to overflow pages).
CREATE TABLE IF NOT EXISTS ledger_records (
    seq       INTEGER PRIMARY KEY,
    campaign  TEXT NOT NULL,
    event     INTEGER NOT NULL,      -- 1 drop, 2 submitting, 3 outcome
    ts        REAL NOT NULL,
    gateway   TEXT NOT NULL DEFAULT '',
    carrier   TEXT NOT NULL DEFAULT '',
    fill      INTEGER NOT NULL,      -- the state code of every row when `states` is NULL
    req       INTEGER NOT NULL DEFAULT 0,  -- submitting: the request's number in the campaign;
                                     -- outcome with empty `rows`: about that request's rows
    rows      BLOB NOT NULL,         -- row numbers, packed (see _pack_rows)
    states    BLOB,                  -- uint8 state code per row, or NULL (all `fill`)
    labels    BLOB,                  -- msgpack list of reason strings, or NULL (no reasons)
    reasons   BLOB,                  -- uint16 index into labels per row, or NULL (all labels[0])
    provider_ids BLOB,               -- msgpack list of str aligned with rows, or NULL
    parts     BLOB,                  -- billed parts per row, packed (submitting events)
    ids       BLOB,                  -- msgpack list of message ids when not <campaign>-<row>
    sends_last INTEGER NOT NULL DEFAULT 0  -- submitting: rowid of the request's last `sends` row
                                     -- (one per row, in order), written in the same transaction
);
CREATE INDEX IF NOT EXISTS ledger_records_by_campaign ON ledger_records (campaign, seq);
CREATE TABLE IF NOT EXISTS ledger_providers (
    provider_id TEXT PRIMARY KEY,
    campaign    TEXT NOT NULL,
    row         INTEGER NOT NULL,
    ts          REAL NOT NULL
) WITHOUT ROWID;
-- How far the provider-id index has been brought (``Ledger.index_providers``): the last
-- ledger_records.seq it has read.
CREATE TABLE IF NOT EXISTS ledger_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_reports (
    campaign    TEXT NOT NULL,
    row         INTEGER NOT NULL,
    status      TEXT NOT NULL,
    code        TEXT NOT NULL,
    done_at     REAL NOT NULL,
    received_at REAL NOT NULL,
    provider_id TEXT NOT NULL,
    latency     REAL NOT NULL        -- done_at (or received_at) minus the submit time; -1 unknown
);
CREATE INDEX IF NOT EXISTS ledger_reports_by_row ON ledger_reports (campaign, row);
-- Who runs a campaign now (one row while a run owns it; see Lease).
CREATE TABLE IF NOT EXISTS ledger_leases (
    campaign   TEXT PRIMARY KEY,
    token      TEXT NOT NULL,
    owner      TEXT NOT NULL,      -- what holds it: "pigeon send", "pigeon serve (blast worker)"…
    host       TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    pid_start  TEXT NOT NULL,      -- the process's start time on its host (pids are reused)
    started_at REAL NOT NULL,
    heartbeat  REAL NOT NULL,
    ttl        REAL NOT NULL
) WITHOUT ROWID;
"""

_I64: Final = np.dtype("<i8")
_U8: Final = np.dtype("u1")
_U16: Final = np.dtype("<u2")
_I32: Final = np.dtype("<i4")
_enc = msgspec.msgpack.Encoder()
_dec_strs = msgspec.msgpack.Decoder(list[str])
_REPORT_STATE: Final = {
    DeliveryStatus.DELIVERED: _Code.DELIVERED,
    DeliveryStatus.FAILED: _Code.FAILED,
    DeliveryStatus.EXPIRED: _Code.FAILED,
    DeliveryStatus.REJECTED: _Code.FAILED,
}
_FINAL_AT_MOST_ONCE: Final = frozenset(
    {
        _Code.SUBMITTING,
        _Code.SUBMITTED,
        _Code.DELIVERED,
        _Code.FAILED,
        _Code.SUPPRESSED,
        _Code.REJECTED,
        _Code.UNKNOWN,
    }
)
_INDEX_CHUNK: Final = 50
"""Outcome records per transaction of :meth:`Ledger.index_providers` (≤ 5,000 ids at batch 100)."""
_OPEN_MAX: Final = 4096
INTERRUPTED: Final = "interrupted"
"""Reason of an ``unknown`` left by a crash while submitting (at-most-once)."""


def _pack_rows(rows: Sequence[int]) -> bytes:
    """Row numbers as bytes: ascending rows (the usual case) as the first one and 1- or 2-byte
    gaps, else 8 bytes each."""
    n = len(rows)
    if not n:
        return b""
    first = int(rows[0])
    if n == 1:
        return b"D" + first.to_bytes(8, "little", signed=True)
    if n <= 256:  # an HTTP request's rows: without numpy's per-call costs (~4× faster at 100)
        try:  # ascending with gaps under 256, almost always
            return b"D" + first.to_bytes(8, "little", signed=True) + bytes(map(sub, rows[1:], rows[:-1]))
        except (ValueError, TypeError):
            pass
    arr = np.fromiter(rows, dtype=_I64, count=n)
    gaps = np.diff(arr)
    if not gaps.size or gaps.min() >= 0:
        top = int(gaps.max()) if gaps.size else 0
        if top < 256:
            return b"D" + arr[:1].tobytes() + gaps.astype(_U8).tobytes()
        if top < 65536:
            return b"W" + arr[:1].tobytes() + gaps.astype(_U16).tobytes()
    return b"Q" + arr.tobytes()


def _unpack_rows(blob: bytes) -> npt.NDArray[np.int64]:
    if not blob:
        return np.zeros(0, dtype=np.int64)
    tag, body = blob[:1], memoryview(blob)[1:]
    if tag == b"Q":
        return np.frombuffer(body, dtype=_I64).astype(np.int64)
    first = np.frombuffer(body[:8], dtype=_I64)
    gaps = np.frombuffer(body[8:], dtype=_U8 if tag == b"D" else _U16)
    return np.cumsum(np.concatenate([first, gaps.astype(np.int64)]))


def _pack_parts(parts: Sequence[int]) -> bytes:
    """Billed parts per message: one value when all are equal, else 1 or 2 bytes each."""
    if not len(parts):
        return b""
    first = parts[0]
    if parts.count(first) == len(parts) and first < 65536:
        return b"C" + int(first).to_bytes(2, "little")
    top = max(parts)
    if top < 256:
        return b"B" + bytes(parts)
    if top < 65536:
        return b"H" + np.fromiter(parts, dtype=_U16, count=len(parts)).tobytes()
    return b"I" + np.fromiter(parts, dtype=_I32, count=len(parts)).tobytes()


def _unpack_parts(blob: bytes, n: int) -> npt.NDArray[np.int32]:
    tag, body = blob[:1], blob[1:]
    if tag == b"C":
        return np.full(n, int.from_bytes(body, "little"), dtype=np.int32)
    if tag == b"B":
        return np.frombuffer(body, dtype=np.uint8).astype(np.int32)
    if tag == b"H":
        return np.frombuffer(body, dtype="<u2").astype(np.int32)
    return np.frombuffer(body, dtype="<i4").astype(np.int32)


class _Derived:
    """Per-row state of a campaign, replayed from its events and reports."""

    def __init__(self, size: int) -> None:
        self.state = np.zeros(size, dtype=_U8)
        self.reason = np.zeros(size, dtype=np.int32)  # index into labels (0 = none)
        self.labels: list[str] = [""]
        self._label_ix: dict[str, int] = {"": 0}
        self.attempts = np.zeros(size, dtype=np.int16)
        self.submitted_at = np.zeros(size, dtype=np.float64)
        self.answered_at = np.zeros(size, dtype=np.float64)
        self.gateway = np.zeros(size, dtype=np.int16)
        self.gateways: list[str] = [""]
        self.carrier = np.zeros(size, dtype=np.int8)
        self.carriers: list[str] = [""]
        self.parts = np.zeros(size, dtype=np.int32)
        self.send_rowid = np.zeros(size, dtype=np.int64)
        """The row's ``sends`` entry (its cap count) from its latest counting hand-over; 0: none."""
        self.send_ts = np.zeros(size, dtype=np.float64)
        """That entry's time: a rowid SQLite reused for another send after this one was taken back
        does not match it."""
        self.provider: dict[int, str] = {}
        self.dlr_code: dict[int, tuple[str, str, float]] = {}
        self.latencies: list[float] = []

    def label(self, text: str) -> int:
        ix = self._label_ix.get(text)
        if ix is None:
            ix = self._label_ix[text] = len(self.labels)
            self.labels.append(text)
        return ix


def _intern(table: list[str], text: str) -> int:
    try:
        return table.index(text)
    except ValueError:
        table.append(text)
        return len(table) - 1


class Ledger:
    """The ledgers of every campaign in one store file.

    Opens its own connection to the store's SQLite file (WAL: the engine's writes and a service's
    reads do not block each other). Use :meth:`open_campaign` to run a campaign; the query methods
    (:meth:`campaign`, :meth:`counts`, :meth:`message`, :meth:`report`) and :meth:`apply_reports`
    work on any campaign.
    """

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL", spin_on_busy: bool = False) -> None:
        """``spin_on_busy``: a transaction that finds another process writing tries again every
        0.1–2 ms instead of after SQLite's 1, 2, 5, 10 … ms sleeps (the service's connection:
        each of those sleeps stops its event loop); every write of the connection must then go
        through :func:`transaction`."""
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={synchronous}")
            self.db.executescript(_SCHEMA)
            # The store's own tables (the send history) are created by SqliteStore; make sure they
            # exist so a hand-over can count caps in the same transaction.
            from engine.store.sqlite import SqliteStore

            SqliteStore.ensure_schema(self.db)
            if spin_on_busy:
                self.db.execute("PRAGMA busy_timeout = 0")  # _tx waits, finer than SQLite does
        except (sqlite3.Error, OSError) as exc:
            raise LedgerError(f"{self.path}: cannot open the store for the campaign ledger: {exc}") from exc

    # -- campaigns -------------------------------------------------------------------------

    def campaign(self, campaign_id: str) -> CampaignRecord | None:
        """The campaign's record, or None if it never ran."""
        row = self.db.execute(
            "SELECT id, kind, semantics, status, fingerprint, created_at, updated_at, runs, "
            "campaign_file, engine_file FROM ledger_campaigns WHERE id = ?",
            (campaign_id,),
        ).fetchone()
        if row is None:
            return None
        return CampaignRecord(
            id=row[0],
            kind=row[1],
            semantics=Semantics(row[2]),
            status=CampaignStatus(row[3]),
            fingerprint=msgspec.json.decode(row[4], type=Fingerprint),
            created_at=row[5],
            updated_at=row[6],
            runs=row[7],
            campaign_file=row[8],
            engine_file=row[9],
        )

    def campaigns(self) -> list[CampaignRecord]:
        """Every campaign in the store, most recently updated first."""
        ids = [r[0] for r in self.db.execute("SELECT id FROM ledger_campaigns ORDER BY updated_at DESC")]
        return [c for i in ids if (c := self.campaign(i)) is not None]

    def open_campaign(
        self,
        campaign_id: str,
        *,
        kind: str,
        fingerprint: Fingerprint,
        semantics: Semantics | None = None,
        force: bool = False,
        again: bool = False,
        campaign_file: str = "",
        engine_file: str = "",
        owner: str = "",
        lease_ttl: float = LEASE_TTL,
        adopt: str = "",
    ) -> CampaignLedger:
        """Start or resume ``campaign_id`` and return its writer for this run.

        A campaign that never ran starts. One that is ``running`` (a crash, a stop, a pause) resumes:
        rows already in a final state are skipped, rows left ``submitting`` are reconciled (see
        :meth:`CampaignLedger.reconcile`). A changed segment or template refuses to resume unless
        ``force`` — or unless no request of the campaign was ever handed to a gateway: nobody was
        contacted, so it starts afresh. A ``finished`` or ``cancelled`` campaign refuses unless
        ``again``: its ledger is then kept under ``<id>~<n>`` and the campaign starts afresh.

        With ``owner`` the run takes the campaign's lease in the same transaction (see
        :class:`Lease`; :class:`CampaignBusy` when a live process holds it). ``adopt``: the token
        of a lease another process took for this one (the service for its blast worker).
        """
        sem = semantics or default_semantics(kind)
        now = time.time()
        fp = msgspec.json.encode(fingerprint)
        with _tx(self.db):
            token = _take_lease(self.db, campaign_id, owner, lease_ttl, adopt, now) if owner else ""
            rec = self.campaign(campaign_id)
            fresh = False
            if rec is not None and rec.status is not CampaignStatus.RUNNING:
                if not again:
                    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.updated_at))
                    raise LedgerError(
                        f"campaign {campaign_id!r} is already {rec.status.value} ({when}); nothing was sent. "
                        f"`pigeon report {campaign_id}` shows what happened. To send it again, give the "
                        "campaign a new id (the `id` key of the campaign file) or pass --again"
                    )
                self._archive(campaign_id)
                rec = None
            if rec is not None:
                changes = rec.fingerprint.differences(fingerprint)
                if (changes or rec.semantics is not sem) and not force and not self._handed_over(campaign_id):
                    # Nobody was contacted yet (the last run stopped on bad rows, or before its
                    # first request): start afresh with the files as they are now.
                    for table in ("ledger_records", "ledger_reports", "ledger_providers"):
                        self.db.execute(f"DELETE FROM {table} WHERE campaign = ?", (campaign_id,))
                    fresh = True
                elif changes and not force:
                    raise LedgerError(
                        f"campaign {campaign_id!r} has an unfinished run, but "
                        + "; ".join(changes)
                        + ". Nothing was sent. Resuming would skip or repeat the wrong people: restore "
                        "the original files, or pass --force to resume anyway (rows are matched by row "
                        "number), or give the campaign a new id"
                    )
                elif rec.semantics is not sem and not force:
                    raise LedgerError(
                        f"campaign {campaign_id!r} started as {rec.semantics.value}, now {sem.value}: "
                        "pass --force to change it on resume"
                    )
            if rec is None:
                self.db.execute(
                    "INSERT INTO ledger_campaigns (id, kind, semantics, status, fingerprint, created_at, "
                    "updated_at, runs, campaign_file, engine_file) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
                    (
                        campaign_id,
                        kind,
                        sem.value,
                        CampaignStatus.RUNNING.value,
                        fp,
                        now,
                        now,
                        campaign_file,
                        engine_file,
                    ),
                )
            else:
                self.db.execute(
                    "UPDATE ledger_campaigns SET runs = runs + 1, updated_at = ?, fingerprint = ?, "
                    "semantics = ?, campaign_file = ?, engine_file = ? WHERE id = ?",
                    (now, fp, sem.value, campaign_file, engine_file, campaign_id),
                )
        cl = CampaignLedger(self, campaign_id, kind, sem, resumed=rec is not None and not fresh)
        cl.restarted = fresh
        if token:
            cl.lease = Lease(self.path, campaign_id, token, lease_ttl)
        return cl

    def _handed_over(self, campaign_id: str) -> bool:
        """Whether any request of the campaign was ever handed to a gateway."""
        found = self.db.execute(
            "SELECT 1 FROM ledger_records WHERE campaign = ? AND event = ? LIMIT 1",
            (campaign_id, int(_Event.SUBMITTING)),
        ).fetchone()
        return found is not None

    def lease(self, campaign_id: str) -> LeaseHolder | None:
        """Who holds the campaign's lease now (None: nobody; it may be stale — see ``alive``)."""
        row = self.db.execute(_LEASE_ROW, (campaign_id,)).fetchone()
        return _holder(row, time.time()) if row is not None else None

    def _archive(self, campaign_id: str) -> str:
        """Keep a finished campaign's ledger under ``<id>~<n>`` (inside the caller's transaction)."""
        n = 1
        while self.campaign(f"{campaign_id}~{n}") is not None:
            n += 1
        new = f"{campaign_id}~{n}"
        for table, col in (
            ("ledger_campaigns", "id"),
            ("ledger_records", "campaign"),
            ("ledger_providers", "campaign"),
            ("ledger_reports", "campaign"),
        ):
            self.db.execute(f"UPDATE {table} SET {col} = ? WHERE {col} = ?", (new, campaign_id))
        return new

    def check_free(self, campaign_id: str) -> None:
        """Raise :class:`CampaignBusy` when a live process holds the campaign's lease."""
        holder = self.lease(campaign_id)
        if holder is not None and holder.alive:
            raise CampaignBusy(campaign_id, holder)

    def set_status(self, campaign_id: str, status: CampaignStatus) -> None:
        """Mark a campaign finished, cancelled or running again."""
        with _tx(self.db):
            cur = self.db.execute(
                "UPDATE ledger_campaigns SET status = ?, updated_at = ? WHERE id = ?",
                (status.value, time.time(), campaign_id),
            )
        if cur.rowcount == 0:
            raise LedgerError(f"no campaign {campaign_id!r} in {self.path}")

    def cancel(self, campaign_id: str) -> CampaignCounts:
        """Cancel a campaign: no run continues it (a running engine stops at its next check).

        Rows not yet handed to a gateway stay ``pending``; returns the counts at that moment.
        """
        self.set_status(campaign_id, CampaignStatus.CANCELLED)
        return self.counts(campaign_id)

    # -- state -----------------------------------------------------------------------------

    def _derive(self, campaign_id: str) -> _Derived:
        """Replay the campaign's events and reports into per-row arrays."""
        top = self.db.execute(
            "SELECT max(next_row) FROM ledger_campaigns WHERE id = ?", (campaign_id,)
        ).fetchone()[0]
        events = self.db.execute(
            "SELECT event, ts, gateway, carrier, fill, req, rows, states, labels, reasons, provider_ids, "
            "parts, sends_last FROM ledger_records WHERE campaign = ? ORDER BY seq",
            (campaign_id,),
        ).fetchall()
        size = int(top or 1)
        requests: dict[int, npt.NDArray[np.int64]] = {}
        unpacked: list[npt.NDArray[np.int64]] = []
        for ev in events:
            rows = _unpack_rows(ev[6])
            if ev[0] == _Event.SUBMITTING:
                requests[ev[5]] = rows
            elif not rows.size and ev[0] == _Event.OUTCOME:
                rows = requests.get(ev[5], rows)
            unpacked.append(rows)
            if rows.size:
                size = max(size, int(rows.max()) + 1)
        d = _Derived(size)
        for rows, (
            event,
            ts,
            gateway,
            carrier,
            fill,
            _req,
            _rows_b,
            states_b,
            labels_b,
            reasons_b,
            pids_b,
            parts_b,
            sends_last,
        ) in zip(unpacked, events, strict=True):
            if not rows.size:
                continue
            codes = np.frombuffer(states_b, dtype=_U8) if states_b is not None else fill
            d.state[rows] = codes
            if labels_b is not None:
                labels = _dec_strs.decode(labels_b)
                lut = np.array([d.label(s) for s in labels], dtype=np.int32)
                d.reason[rows] = (
                    lut[np.frombuffer(reasons_b, dtype=_U16)] if reasons_b is not None else lut[0]
                )
            else:
                d.reason[rows] = 0
            if event == _Event.SUBMITTING:
                d.attempts[rows] += 1
                first = d.submitted_at[rows] == 0
                d.submitted_at[rows[first]] = ts
                d.carrier[rows] = _intern(d.carriers, carrier)
                if parts_b:
                    d.parts[rows] = _unpack_parts(parts_b, rows.size)
                if sends_last:  # a retry's hand-over counts nothing: the first count stays the row's
                    d.send_rowid[rows] = np.arange(sends_last - rows.size + 1, sends_last + 1, dtype=np.int64)
                    d.send_ts[rows] = ts
            elif event == _Event.OUTCOME:
                d.answered_at[rows] = ts
                d.gateway[rows] = _intern(d.gateways, gateway)
                if pids_b is not None:
                    for r, p in zip(rows.tolist(), _dec_strs.decode(pids_b), strict=True):
                        if p:
                            d.provider[r] = p
        for row, status, code, done_at, latency in self.db.execute(
            "SELECT row, status, code, done_at, latency FROM ledger_reports WHERE campaign = ? "
            "ORDER BY received_at",
            (campaign_id,),
        ):
            if row >= size:
                continue
            new = _REPORT_STATE.get(DeliveryStatus(status))
            d.dlr_code[row] = (status, code, done_at)
            if new is not None:
                d.state[row] = new
                d.reason[row] = d.label(f"dlr:{code or status}") if new == _Code.FAILED else 0
            if latency < 0 and done_at > 0 and d.submitted_at[row] > 0:  # matched by message id
                latency = done_at - float(d.submitted_at[row])
            if latency >= 0 and status == DeliveryStatus.DELIVERED:
                d.latencies.append(latency)
        return d

    def counts(self, campaign_id: str) -> CampaignCounts:
        """Recipients by state and reason (rows the ledger has not seen yet are not counted)."""
        d = self._derive(campaign_id)
        return _counts(campaign_id, d)

    def rows_in(self, campaign_id: str, *states: LedgerState) -> npt.NDArray[np.int64]:
        """The row numbers of the campaign's recipients now in one of ``states``, ascending."""
        d = self._derive(campaign_id)
        want = np.array([_CODE_OF[s] for s in states], dtype=_U8)
        rows = np.flatnonzero(np.isin(d.state, want)).astype(np.int64)
        return rows[rows > 0] if LedgerState.PENDING in states else rows

    def last_handovers(
        self, campaign_id: str, rows: Sequence[int]
    ) -> dict[int, tuple[float, str, npt.NDArray[np.int64]]]:
        """For each of ``rows``: its last hand-over — the time, the gateway, and every row of that
        request (what ``pigeon settle`` asks a provider about). Rows never handed over are left out."""
        want = np.zeros(int(max(rows, default=0)) + 1, dtype=np.bool_)
        want[np.asarray(rows, dtype=np.int64)] = True
        out: dict[int, tuple[float, str, npt.NDArray[np.int64]]] = {}
        for ts, gateway, rows_b in self.db.execute(
            "SELECT ts, gateway, rows FROM ledger_records WHERE campaign = ? AND event = ? ORDER BY seq",
            (campaign_id, int(_Event.SUBMITTING)),
        ):
            req = _unpack_rows(rows_b)
            inside = req[req < want.size]
            hit = inside[want[inside]]
            if hit.size:
                entry = (float(ts), str(gateway), req)
                for r in hit.tolist():
                    out[r] = entry
        return out

    def known_providers(self, provider_ids: Sequence[str]) -> set[str]:
        """Those of ``provider_ids`` some campaign's message was accepted under (the index brought
        up to date first)."""
        self.index_providers()
        found: set[str] = set()
        ids = list(dict.fromkeys(p for p in provider_ids if p))
        for k in range(0, len(ids), 500):
            chunk = ids[k : k + 500]
            marks = ",".join("?" * len(chunk))
            found.update(
                r[0]
                for r in self.db.execute(
                    f"SELECT provider_id FROM ledger_providers WHERE provider_id IN ({marks})", chunk
                )
            )
        return found

    def message(self, message_id: str) -> MessageRecord | None:
        """What the ledger knows about one message (by Pigeon's id ``<campaign>-<row>``)."""
        found = self._locate(message_id)
        if found is None:
            return None
        campaign_id, row = found
        d = self._derive(campaign_id)
        if row >= d.state.size:
            return None
        code = _Code(int(d.state[row]))
        if code == _Code.PENDING and d.attempts[row] == 0 and d.reason[row] == 0:
            return None
        status, dcode, done_at = d.dlr_code.get(row, ("", "", 0.0))
        return MessageRecord(
            message_id=message_id,
            campaign=campaign_id,
            row=row,
            state=_STATE_OF[code],
            reason=d.labels[int(d.reason[row])],
            gateway=d.gateways[int(d.gateway[row])],
            provider_id=d.provider.get(row, ""),
            attempts=int(d.attempts[row]),
            submitted_at=float(d.submitted_at[row]),
            answered_at=float(d.answered_at[row]),
            delivery_status=status,
            delivery_code=dcode,
            delivered_at=done_at,
        )

    def _locate(self, message_id: str) -> tuple[str, int] | None:
        campaign_id, sep, tail = message_id.rpartition("-")
        known = "SELECT 1 FROM ledger_campaigns WHERE id = ?"
        if sep and tail.isdigit() and self.db.execute(known, (campaign_id,)).fetchone():
            return campaign_id, int(tail)
        return None

    def recent_parts(self, since: float) -> tuple[dict[str, int], dict[str, int]]:
        """Billed parts handed over since ``since`` (epoch seconds), by any campaign in this store:
        by carrier and by gateway. A run that starts counts them against its rate budgets, so that
        a restart (a resume right after a kill) cannot put two runs' requests in one second at
        the provider."""
        by_carrier: Counter[str] = Counter()
        by_gateway: Counter[str] = Counter()
        old = 0
        for ts, carrier, gateway, rows_b, parts_b in self.db.execute(
            "SELECT ts, carrier, gateway, rows, parts FROM ledger_records WHERE event = ? ORDER BY seq DESC",
            (int(_Event.SUBMITTING),),
        ):
            if ts < since:
                old += 1
                if old > 256:  # records are appended in time order (shards interleave a little)
                    break
                continue
            n = int(_unpack_rows(rows_b).size)
            parts = int(_unpack_parts(parts_b, n).sum()) if parts_b else n
            by_carrier[carrier] += parts
            if gateway:
                by_gateway[gateway] += parts
        return dict(by_carrier), dict(by_gateway)

    # -- delivery reports ------------------------------------------------------------------

    def apply_reports(
        self, reports: Sequence[DeliveryReport], unmatched: list[DeliveryReport] | None = None
    ) -> int:
        """Record delivery reports (matched by provider id, else by Pigeon's message id), in one
        transaction; returns how many matched a message of some campaign. Unmatched ones are
        ignored (another system's messages, a campaign archived since, or a message whose submit
        answer is not recorded yet) — and appended to ``unmatched`` when it is given."""
        now = time.time()
        rows: list[tuple[str, int, str, str, float, float, str, float]] = []
        find = self.db.execute
        by_provider = "SELECT campaign, row, ts FROM ledger_providers WHERE provider_id = ?"
        hits: list[tuple[int, DeliveryReport, tuple[str, int, float]]] = []
        missed: list[tuple[int, DeliveryReport]] = []
        for i, r in enumerate(reports):
            hit = find(by_provider, (r.provider_id,)).fetchone() if r.provider_id else None
            if hit is None and r.message_id:
                loc = self._locate(r.message_id)
                if loc is not None:
                    hit = (*loc, 0.0)
            if hit is not None:
                hits.append((i, r, hit))
            elif r.provider_id:
                missed.append((i, r))
            elif unmatched is not None:
                unmatched.append(r)
        if missed and self.index_providers():  # ids of requests answered since the last reports
            still: list[tuple[int, DeliveryReport]] = []
            for i, r in missed:
                hit = find(by_provider, (r.provider_id,)).fetchone()
                if hit is not None:
                    hits.append((i, r, hit))
                else:
                    still.append((i, r))
            missed = still
            hits.sort(key=lambda h: h[0])  # in the order they came (a row's later report wins)
        if unmatched is not None:
            unmatched += [r for _, r in missed]
        for _, r, (campaign_id, row, ts) in hits:
            done = r.done_at or now
            latency = done - ts if ts > 0 else -1.0
            rows.append((campaign_id, row, r.status.value, r.code, r.done_at, now, r.provider_id, latency))
        if rows:
            with _tx(self.db):
                self.db.executemany("INSERT INTO ledger_reports VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return len(rows)

    def index_providers(self) -> int:
        """Bring the provider-id index up to date with the outcome records written since the last
        call, by any process; returns how many ids it added.

        The send path does not index provider ids (a random-key B-tree insert per message would be
        the costliest write of a blast); a delivery report that carries only a provider id calls
        this first. It works in short transactions of :data:`_INDEX_CHUNK` records (a few
        milliseconds of the store's write lock each), so a running blast's hand-overs never wait
        long behind it.
        """
        added = 0
        while True:
            with _tx(self.db):
                row = self.db.execute("SELECT value FROM ledger_meta WHERE key = 'providers_seq'").fetchone()
                last = int(row[0]) if row else 0
                records = self.db.execute(
                    "SELECT seq, campaign, ts, rows, provider_ids FROM ledger_records "
                    "WHERE seq > ? AND event = ? AND provider_ids IS NOT NULL ORDER BY seq LIMIT ?",
                    (last, int(_Event.OUTCOME), _INDEX_CHUNK),
                ).fetchall()
                index: list[tuple[str, str, int, float]] = []
                for _seq, campaign, ts, rows_b, pids_b in records:
                    if rows_b:  # (records of older versions have none: their ids were indexed then)
                        rows = _unpack_rows(rows_b).tolist()
                        pids = _dec_strs.decode(pids_b)
                        index += [(p, campaign, r, ts) for p, r in zip(pids, rows, strict=True) if p]
                if index:
                    self.db.executemany("INSERT OR REPLACE INTO ledger_providers VALUES (?, ?, ?, ?)", index)
                full = len(records) == _INDEX_CHUNK
                upto = (
                    records[-1][0]
                    if full
                    else int(
                        self.db.execute("SELECT coalesce(max(seq), 0) FROM ledger_records").fetchone()[0]
                    )
                )
                if upto > last:
                    self.db.execute("INSERT OR REPLACE INTO ledger_meta VALUES ('providers_seq', ?)", (upto,))
                added += len(index)
            if not full:
                return added

    # -- report ----------------------------------------------------------------------------

    def report(self, campaign_id: str, prices: Mapping[str, float] | None = None) -> dict[str, Any]:
        """The campaign's report: counts by state and reason, billed parts and cost per carrier,
        delivery rate (delivered among the messages gateways accepted), submit-to-delivery latency
        percentiles (seconds)."""
        rec = self.campaign(campaign_id)
        if rec is None:
            raise LedgerError(f"no campaign {campaign_id!r} in {self.path}")
        d = self._derive(campaign_id)
        counts = _counts(campaign_id, d)
        billed_codes = np.isin(d.state, [_Code.SUBMITTED, _Code.DELIVERED, _Code.UNKNOWN, _Code.FAILED])
        billed_codes &= d.submitted_at > 0
        carriers: dict[str, dict[str, float | int]] = {}
        prices = prices or {}
        for ci, name in enumerate(d.carriers):
            if not name:
                continue
            sel = billed_codes & (d.carrier == ci)
            sent = sel & np.isin(d.state, [_Code.SUBMITTED, _Code.DELIVERED])
            parts = int(d.parts[sent].sum())
            carriers[name] = {
                "messages": int(np.count_nonzero(sent)),
                "parts": parts,
                "cost": round(parts * prices.get(name, 0.0), 4),
            }
        dlr_failed = sum(n for r, n in counts.reasons.get("failed", {}).items() if r.startswith("dlr:"))
        submitted = counts.states.get("submitted", 0) + counts.states.get("delivered", 0) + dlr_failed
        delivered = counts.states.get("delivered", 0)
        lat = np.array(d.latencies, dtype=np.float64)
        pct = (
            {k: round(float(np.percentile(lat, q)), 3) for k, q in (("p50", 50), ("p90", 90), ("p99", 99))}
            if lat.size
            else {}
        )
        return {
            "campaign": campaign_id,
            "kind": rec.kind,
            "semantics": rec.semantics.value,
            "status": rec.status.value,
            "runs": rec.runs,
            "recipients": counts.total,
            "states": counts.states,
            "reasons": counts.reasons,
            "carriers": carriers,
            "total_parts": sum(int(c["parts"]) for c in carriers.values()),
            "total_cost": round(sum(float(c["cost"]) for c in carriers.values()), 4),
            "delivery_reports": len(d.dlr_code),
            "delivery_rate": round(delivered / submitted, 4) if submitted else 0.0,
            "latency_seconds": pct,
        }

    def close(self) -> None:
        """Close the connection."""
        self.db.close()


def _counts(campaign_id: str, d: _Derived) -> CampaignCounts:
    seen = d.state[1:] if d.state.size > 1 else d.state[:0]
    reason = d.reason[1:] if d.reason.size > 1 else d.reason[:0]
    attempts = d.attempts[1:] if d.attempts.size > 1 else d.attempts[:0]
    # pending rows the ledger never saw (not yet read) are not counted: only rows with an event
    known = (seen != _Code.PENDING) | (reason != 0) | (attempts != 0)
    states: dict[str, int] = {}
    for code, n in zip(*np.unique(seen[known], return_counts=True), strict=True):
        states[_STATE_OF[_Code(int(code))].value] = int(n)
    reasons: dict[str, dict[str, int]] = {}
    has = known & (reason != 0)
    if has.any():
        pairs = Counter(zip(seen[has].tolist(), reason[has].tolist(), strict=True))
        for (code, ri), n in pairs.most_common():
            reasons.setdefault(_STATE_OF[_Code(code)].value, {})[d.labels[ri]] = n
    return CampaignCounts(campaign=campaign_id, states=states, reasons=reasons)


class CampaignLedger:
    """One run's writer for a campaign's ledger: call it per batch and per request.

    Created by :meth:`Ledger.open_campaign`. Drops are buffered and written with the next
    transaction; :meth:`handover` commits before the request goes out; answers commit when they
    arrive. :meth:`close` flushes what is buffered.
    """

    def __init__(self, ledger: Ledger, campaign_id: str, kind: str, semantics: Semantics, *, resumed: bool):
        self.ledger = ledger
        self.db = ledger.db
        self.id = campaign_id
        self.kind = kind
        self.semantics = semantics
        self.resumed = resumed
        self._req = int(
            self.db.execute(
                "SELECT coalesce(max(req), 0) FROM ledger_records WHERE campaign = ?", (campaign_id,)
            ).fetchone()[0]
        )
        self._open: OrderedDict[int, tuple[int, MessageBatch, bytes]] = OrderedDict()
        """id() of a request's batch handed over and not answered yet → its request number, the
        batch (so the id cannot be reused meanwhile) and its packed rows. Bounded: requests
        answered in parts (retries) leave theirs, the oldest go first."""
        self._pending: list[tuple[Any, ...]] = []
        self._deferred: list[tuple[str, Sequence[Any]]] = []
        self.group_commit = False
        """Answers wait for the next transaction — the next hand-over, which a lane's worker makes
        in the same step of the event loop, or a :meth:`flush` that the lanes call before any of
        their workers waits (``Lane.on_idle``) — instead of a commit each: one transaction per
        request instead of two. Durability is the same: an answer is never left uncommitted
        while its worker waits. ``pigeon send`` and blast workers set it."""
        self.skip: npt.NDArray[np.bool_] | None = None
        """Rows to skip in this run (already final), indexed by row number; None: skip none."""
        self.resend: set[int] = set()
        """Rows handed over before and left ``submitting`` (at-least-once resume): sent again, their
        earlier cap count taken back by :meth:`reconcile` (see :attr:`recounted`)."""
        self.reconciled = 0
        """Rows this run's :meth:`reconcile` settled."""
        self.recounted = 0
        """Rows whose cap count :meth:`reconcile` took back, to be counted when they are sent again
        (load the caps after it)."""
        self.stall_after = 5
        """Requests in a row that end ``unknown`` or failed by a gateway error (timeouts, no
        connection) — with no answer in between — after which the run stops: the gateway is hanging
        or gone; queued messages stay ``pending`` for a resume instead of piling up as ``unknown``."""
        self._stalled = 0
        self._stall_reason = ""
        self._checked = 0.0
        self._cancelled = False
        self._req_step = 1
        self.lease: Lease | None = None
        """This run's hold on the campaign (None: the caller did not take one)."""
        self.write_error: LedgerWriteError | None = None
        """The store refused the last flush: what it held is still buffered (see :meth:`flush`)."""
        self.restarted = False
        """The campaign had an unfinished run that never handed a request over, and its files
        changed: it started afresh instead of refusing (:meth:`Ledger.open_campaign`)."""

    def close(self) -> None:
        """Give the lease back and close the connection (the end of the run)."""
        if self.lease is not None:
            self.lease.release()
        self.ledger.close()

    def attach(self, index: int, count: int) -> CampaignLedger:
        """A writer for shard ``index`` of ``count`` of this run, on a connection of its own: what
        a worker process of a sharded send (:mod:`engine.shards`) writes with, after ``fork``.

        It shares this run's rows to skip and to resend, never touches this writer's connection
        (SQLite connections must not cross a fork), waits its turn when another shard is writing
        (``spin_on_busy``), and numbers its requests ``index + 1``, ``index + 1 + count``, … past
        the last one recorded, so that no two shards share a request number.
        """
        own = Ledger(self.ledger.path, spin_on_busy=True)
        cl = CampaignLedger(own, self.id, self.kind, self.semantics, resumed=self.resumed)
        cl.skip, cl.resend, cl.stall_after = self.skip, self.resend, self.stall_after
        cl.lease = self.lease  # the parent renews it; each shard's hand-overs check it
        cl._req += index + 1 - count
        cl._req_step = count
        return cl

    # -- resume ----------------------------------------------------------------------------

    def reconcile(self) -> int:
        """Settle rows a previous run left ``submitting`` and compute the rows to skip.

        At-most-once: those with a delivery report take its state; the rest become ``unknown``
        (reason ``interrupted``), never resent. At-least-once: they are sent again (their message
        id is the idempotency key). Returns how many rows were left ``submitting``.
        """
        d = self.ledger._derive(self.id)
        left = np.flatnonzero(d.state == _Code.SUBMITTING)
        # Handed over before, then given back (the request never left, or had to go again): they are
        # sent on resume like any pending row, and counted again then.
        again = np.flatnonzero((d.state == _Code.PENDING) & (d.attempts > 0))
        if self.semantics is Semantics.AT_MOST_ONCE:
            if left.size:
                self._write(_Event.OUTCOME, left.tolist(), _Code.UNKNOWN, reasons=INTERRUPTED)
                self.flush()
                d.state[left] = _Code.UNKNOWN
            final = np.isin(d.state, list(_FINAL_AT_MOST_ONCE))
        else:
            final = np.isin(d.state, list(_FINAL_AT_MOST_ONCE - {_Code.SUBMITTING}))
            self.resend = set(left.tolist())
            again = np.concatenate([again, left])
        # Sent again below, counted again then: take back their first count (same transaction
        # discipline), so the caps see each message once — and do not hold back its resend.
        counted = again[d.send_rowid[again] > 0]
        if counted.size:
            with _tx(self.db):  # (a resume that dies before sending them again takes back nothing more)
                cur = self.db.executemany(
                    "DELETE FROM sends WHERE rowid = ? AND ts = ?",
                    zip(d.send_rowid[counted].tolist(), d.send_ts[counted].tolist(), strict=True),
                )
                self.recounted = cur.rowcount
        else:
            self.recounted = 0
        self.skip = final if final.any() else None
        self.reconciled = int(left.size)
        return self.reconciled

    def reserve_rows(self, n: int) -> range:
        """Row numbers for ``n`` messages that do not come from a segment (a service's API stream,
        e.g. campaign ``api-transactional``): build their :class:`MessageBatch` with these rows and
        ids ``<campaign>-<row>``. Durable: a restart never hands out the same rows again."""
        with _tx(self.db):
            self.db.execute("UPDATE ledger_campaigns SET next_row = next_row + ? WHERE id = ?", (n, self.id))
            end = int(
                self.db.execute("SELECT next_row FROM ledger_campaigns WHERE id = ?", (self.id,)).fetchone()[
                    0
                ]
            )
        return range(end - n, end)

    def should_stop(self) -> bool:
        """Whether the campaign was cancelled meanwhile (the store is looked at once a second)."""
        now = time.monotonic()
        if now - self._checked >= 1.0:
            self._checked = now
            self._cancelled = self.is_cancelled()
        return self._cancelled

    def _ambiguous(self, gateway: str, reason: str) -> None:
        self._stalled += 1
        self._stall_reason = f"{gateway}: {reason}"

    def is_cancelled(self) -> bool:
        """Whether ``pigeon cancel`` marked the campaign cancelled meanwhile."""
        row = self.db.execute("SELECT status FROM ledger_campaigns WHERE id = ?", (self.id,)).fetchone()
        return row is not None and row[0] == CampaignStatus.CANCELLED.value

    # -- writes ----------------------------------------------------------------------------

    def _write(
        self,
        event: _Event,
        rows: Sequence[int],
        fill: int,
        *,
        states: bytes | None = None,
        reasons: Sequence[str] | str | None = None,
        provider_ids: Sequence[str] | None = None,
        gateway: str = "",
        carrier: str = "",
        parts: Sequence[int] | None = None,
        ts: float | None = None,
        req: int = 0,
        sends_last: int = 0,
        packed: bytes | None = None,
    ) -> None:
        labels_b = reasons_b = None
        if isinstance(reasons, str):
            labels_b = _enc.encode([reasons])
        elif reasons is not None:
            labels = list(dict.fromkeys(reasons))
            labels_b = _enc.encode(labels)
            if len(labels) > 1:
                ix = {s: i for i, s in enumerate(labels)}
                reasons_b = np.fromiter(map(ix.__getitem__, reasons), dtype=_U16, count=len(rows)).tobytes()
        self._pending.append(
            (
                None,
                self.id,
                int(event),
                ts if ts is not None else time.time(),
                gateway,
                carrier,
                fill,
                req,
                # An answer to the very request handed over refers to its record instead of
                # repeating the rows — unless it carries provider ids, which the index pairs with
                # rows (Ledger.index_providers reads outcome records alone).
                b""
                if req and event == _Event.OUTCOME and provider_ids is None
                else packed
                if packed is not None
                else _pack_rows(rows),
                states,
                labels_b,
                reasons_b,
                _enc.encode(list(provider_ids)) if provider_ids is not None else None,
                _pack_parts(parts) if parts is not None else None,
                None,
                sends_last,
            )
        )

    def flush(self) -> None:
        """Commit what is buffered (one transaction). When the store refuses (a full disk…) the
        records stay buffered for the next transaction, and the next hand-over raises the error
        (the run halts; nothing is handed over unrecorded) — a lane never crashes on a flush."""
        if self._pending or self._deferred:
            try:
                self._commit()
            except LedgerWriteError as exc:
                self.write_error = exc

    def _commit(self, before: Callable[[], None] | None = None) -> None:
        """One transaction: ``before`` (the caller's statements), then what is buffered. On failure
        nothing is lost from the buffer (it is committed with the next transaction)."""
        pending, deferred = self._pending[:], self._deferred[:]
        try:
            with _tx(self.db):
                if before is not None:
                    before()
                self._insert()
        except BaseException:
            self._pending, self._deferred = pending, deferred
            raise
        self.write_error = None

    def defer(self, sql: str, params: Sequence[Any]) -> None:
        """Run a statement of the caller's in this ledger's next transaction — the next hand-over,
        answer or :meth:`flush` — so that it becomes durable with what is recorded then (the
        service's idempotency keys: with the hand-over of their messages)."""
        self._deferred.append((sql, params))

    def _insert(self) -> None:
        if self._deferred:
            deferred, self._deferred = self._deferred, []
            for sql, params in deferred:
                self.db.execute(sql, params)
        if self._pending:
            self.db.executemany(
                "INSERT INTO ledger_records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                self._pending,
            )
            self._pending = []

    def dropped(self, records: Sequence[Reject]) -> None:
        """A batch's rejected, suppressed and deferred rows (buffered)."""
        if not records:
            return
        states = [r.state for r in records]
        one = states[0] if states.count(states[0]) == len(states) else None
        self._write(
            _Event.DROP,
            [r.row for r in records],
            _CODE_OF[one] if one is not None else 0,
            states=None if one is not None else bytes(_CODE_OF[s] for s in states),
            reasons=[r.reason for r in records],
        )

    def handover(
        self,
        batch: MessageBatch,
        *,
        now: float,
        keys: Sequence[int] | None = None,
        contents: Sequence[int] | None = None,
        gateway: str = "",
    ) -> None:
        """Commit a request's rows as ``submitting`` before it goes to ``gateway`` — in the same
        transaction as its cap counts (``keys``/``contents``: the store's send history), with the
        drops buffered so far.

        Raises instead — and the request is not sent — :class:`LedgerStalled` when the gateways
        stalled (see :attr:`stall_after`), :class:`LeaseLost` when another process took the
        campaign over, :class:`LedgerWriteError` when the store cannot be written (all are
        :class:`~engine.errors.RunHalt`: the run halts).
        """
        if self.write_error is not None:
            self._commit()  # what the store refused before goes first (raises if it still refuses)
        if self._stalled >= self.stall_after:
            resent = (
                "at-least-once: sent again on resume, with the same message ids"
                if self.semantics is Semantics.AT_LEAST_ONCE
                else "at-most-once: unknown, never resent"
            )
            raise LedgerStalled(
                f"campaign {self.id!r}: {self._stalled} requests in a row got no answer "
                f"(last {self._stall_reason}); the gateway is hanging or down, so the run stopped "
                f"before sending more. Those requests are recorded ({resent}); the rest are pending: "
                f"`pigeon resume {self.id}` when the gateway is back"
            )
        lease = self.lease
        if lease is not None and lease.lost:
            raise self._lease_lost()
        rows = batch.rows
        packed = _pack_rows(rows)
        req = self._req + self._req_step

        def record() -> None:
            if lease is not None:
                held = self.db.execute(_LEASE_TOKEN, (self.id,)).fetchone()
                if held is None or held[0] != lease.token:
                    lease.lost = True
                    raise self._lease_lost()
            last = 0
            if keys is not None:
                kind = self.kind
                self.db.executemany(
                    "INSERT INTO sends VALUES (?, ?, ?, ?)",
                    [(kind, k, now, c) for k, c in zip(keys, contents or [0] * len(keys), strict=True)],
                )
                last = int(self.db.execute("SELECT max(rowid) FROM sends").fetchone()[0] or 0)
            self._write(
                _Event.SUBMITTING,
                rows,
                _Code.SUBMITTING,
                carrier=batch.carrier,
                gateway=gateway,
                parts=batch.parts,
                ts=now,
                req=req,
                sends_last=last,
                packed=packed,
            )

        self._commit(record)
        self._req = req
        self._open[id(batch)] = (self._req, batch, packed)
        if len(self._open) > _OPEN_MAX:
            self._open.popitem(last=False)

    def _lease_lost(self) -> LeaseLost:
        return LeaseLost(
            f"campaign {self.id!r} was taken over by another process (this one was stopped or cut off "
            f"for longer than its lease lives): it hands nothing more over. `pigeon status {self.id}` "
            "shows who runs it now"
        )

    def released(self, gateway: str, batch: MessageBatch, reason: str) -> None:
        """A request handed over that did not go through — it never left this machine, or its
        messages must go again: its rows are ``pending`` again (``reason``: ``waiting:…`` or
        ``retry:…``) and their cap count is taken back, in one transaction, before the lane waits.
        A crash meanwhile leaves them pending (sent on resume), never ``unknown``. Their cap count
        stays from the first hand-over (a retry's hand-over counts nothing new); a resume that sends
        them again takes it back (:meth:`reconcile`)."""
        entry = self._open.pop(id(batch), None)
        req, packed = (entry[0], entry[2]) if entry is not None and entry[1] is batch else (0, None)
        self._write(
            _Event.OUTCOME, batch.rows, _Code.PENDING, reasons=reason, gateway=gateway, req=req, packed=packed
        )
        self.flush()

    def results(self, gateway: str, batch: MessageBatch, results: Sequence[SubmitResult]) -> None:
        """A gateway's answers for a request (index-aligned with ``batch``); commits."""
        rows = batch.rows
        if len(results) != len(rows):
            self.failed(gateway, batch, "gateway_contract")
            return
        self._stalled = 0
        now = time.time()
        # The usual case, the very request handed over: its rows are those of the hand-over record.
        entry = self._open.pop(id(batch), None)
        req, packed = (entry[0], entry[2]) if entry is not None and entry[1] is batch else (0, None)
        if results.count(ACCEPTED) == len(results):
            self._write(_Event.OUTCOME, rows, _Code.SUBMITTED, gateway=gateway, ts=now, req=req)
            self._answered()
            return
        pids = [r.provider_id for r in results]
        if all(r.outcome is Outcome.ACCEPTED for r in results):
            self._write(
                _Event.OUTCOME,
                rows,
                _Code.SUBMITTED,
                gateway=gateway,
                provider_ids=pids,
                ts=now,
                req=req,
                packed=packed,
            )
        else:
            codes = bytes(_OUTCOME_CODE.get(r.outcome, _Code.FAILED) for r in results)
            reasons = [
                ""
                if r.outcome is Outcome.ACCEPTED
                else r.code or r.outcome.value
                if r.outcome is Outcome.UNKNOWN
                else f"{r.outcome.value}:{r.code or r.outcome.value}"
                for r in results
            ]
            self._write(
                _Event.OUTCOME,
                rows,
                0,
                states=codes,
                reasons=reasons,
                gateway=gateway,
                provider_ids=pids,
                ts=now,
            )
        # No provider-id index here: it is a B-tree insert of a random key per message, the
        # costliest write of a blast. Ledger.index_providers builds it from these records, in bulk
        # and off the send path, when a delivery report needs it.
        self._answered()

    def _answered(self) -> None:
        """An answer is buffered: commit it now, or with the next hand-over (:attr:`group_commit`)."""
        if not self.group_commit:
            self.flush()

    def failed(self, gateway: str, batch: MessageBatch, reason: str) -> None:
        """A whole request failed (after its retries, or permanently); commits."""
        if reason.startswith(("gateway_error:", "retries_exhausted:Gateway")):
            self._ambiguous(gateway, reason)
        self._write(_Event.OUTCOME, batch.rows, _Code.FAILED, reasons=reason, gateway=gateway)
        self.flush()

    def unknown(self, gateway: str, batch: MessageBatch, reason: str) -> None:
        """A gateway may or may not have taken the request (ambiguous timeout); commits."""
        self._ambiguous(gateway, reason)
        self._write(_Event.OUTCOME, batch.rows, _Code.UNKNOWN, reasons=reason, gateway=gateway)
        self.flush()

    def finish(self, *, complete: bool) -> None:
        """End this run: flush, and mark the campaign ``finished`` when the whole segment was handled.
        Raises :class:`LedgerWriteError` when the store still refuses what is buffered."""
        if self._pending or self._deferred:
            self._commit()
        if complete and not self.is_cancelled():
            self.ledger.set_status(self.id, CampaignStatus.FINISHED)


def skip_rows(batch: Any, skip: npt.NDArray[np.bool_]) -> int:
    """Take the rows marked in ``skip`` (already final in the ledger) out of a stage
    :class:`~engine.pipeline.Batch`, silently — no reject record: the ledger already holds their
    state. Returns how many were taken out."""
    size = skip.size
    rejects = batch.rejects
    if rejects:
        keep = [r for r in rejects if r.row >= size or not skip[r.row]]
        dropped = len(rejects) - len(keep)
        batch.rejects[:] = keep
    else:
        dropped = 0
    nums = batch.nums
    if nums:
        arr = np.asarray(nums, dtype=np.int64)
        inside = arr < size
        hit = np.zeros(arr.size, dtype=bool)
        hit[inside] = skip[arr[inside]]
        n = int(np.count_nonzero(hit))
        if n:
            mask = (~hit).tolist()
            for name in ("nums", "rows", "numbers", "keys", "carriers", "texts", "parts"):
                col = getattr(batch, name)
                if col:
                    col[:] = compress(col, mask)
            dropped += n
    return dropped


class LedgerWriteError(LedgerError, RunHalt):
    """The store refused a ledger write (disk full, read-only, I/O error): the run stops; every
    transaction committed before is intact."""

    reason = "store_unwritable"


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


def open_for_run(
    store_path: Path,
    campaign: Any,
    template_parts: Sequence[str],
    *,
    semantics: Semantics | None = None,
    force: bool = False,
    again: bool = False,
    engine_file: str = "",
    owner: str = "pigeon send",
    lease_ttl: float = LEASE_TTL,
    adopt: str = "",
) -> CampaignLedger:
    """Open (or resume) the ledger of a loaded campaign (:class:`~engine.config.LoadedCampaign`)
    for one run — taking the campaign's lease for ``owner`` (renewed from now on) — fingerprinting
    its segment file and template, and reconcile what a previous run left ``submitting``."""
    seg_path = campaign.source_options.get("path")
    path = None
    if isinstance(seg_path, str):
        p = Path(seg_path)
        path = p if p.is_absolute() else campaign.base_dir / p
    fp = file_fingerprint(path, str(seg_path or campaign.segment.source), template_parts)
    ledger = Ledger(store_path)
    cl: CampaignLedger | None = None
    try:
        cl = ledger.open_campaign(
            campaign.id,
            kind=campaign.config.kind,
            fingerprint=fp,
            semantics=semantics,
            force=force,
            again=again,
            campaign_file=str(Path(campaign.file).resolve()),
            engine_file=engine_file,
            owner=owner,
            lease_ttl=lease_ttl,
            adopt=adopt,
        )
        if cl.lease is not None:
            cl.lease.start()
        cl.reconcile()
    except BaseException:
        if cl is not None:
            cl.close()
        else:
            ledger.close()
        raise
    return cl
