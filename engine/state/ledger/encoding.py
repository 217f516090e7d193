"""The ledger's schema and compact encodings: row ranges, part counts and interned labels."""

from __future__ import annotations

from collections.abc import Sequence
from operator import sub
from typing import Final

import msgspec
import numpy as np
import numpy.typing as npt

from engine.core.messages import (
    DeliveryStatus,
)
from engine.state.ledger.records import _Code

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
    sends_last INTEGER NOT NULL DEFAULT 0, -- submitting: rowid of the request's last `sends` row
                                     -- (one per row, in order), written in the same transaction
    variants  BLOB                   -- submitting, in an A/B test: msgpack [names, uint8 name index
                                     -- per row], or NULL (added to older files by Ledger)
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

_INSERT_RECORD: Final = "INSERT INTO ledger_records VALUES (" + ", ".join("?" * 17) + ")"
"""One ``ledger_records`` row, every column in schema order (the tuples ``CampaignLedger`` buffers)."""

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


def _pack_variants(variants: Sequence[str]) -> bytes:
    """An A/B test's variant name of each row: the names once, then one byte per row."""
    names = list(dict.fromkeys(variants))
    ix = {name: i for i, name in enumerate(names)}
    return _enc.encode([names, bytes(map(ix.__getitem__, variants))])


_dec_variants = msgspec.msgpack.Decoder(tuple[list[str], bytes])


def _unpack_variants(blob: bytes) -> tuple[list[str], npt.NDArray[np.uint8]]:
    names, ix = _dec_variants.decode(blob)
    return names, np.frombuffer(ix, dtype=_U8)


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
        self.decided_at = np.zeros(size, dtype=np.float64)
        """When a stage's drop of the row was recorded (its holdout time, for the outcomes report)."""
        self.gateway = np.zeros(size, dtype=np.int16)
        self.gateways: list[str] = [""]
        self.carrier = np.zeros(size, dtype=np.int8)
        self.carriers: list[str] = [""]
        self.parts = np.zeros(size, dtype=np.int32)
        self.variant = np.zeros(size, dtype=np.int8)
        self.variants: list[str] = [""]
        """An A/B test's variant names (0: none); ``variant`` indexes them per row."""
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
