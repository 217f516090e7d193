"""One run's writer: hand-overs, answers and drops recorded in batched transactions under the lease."""

from __future__ import annotations

import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from itertools import compress
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from engine.core.messages import (
    ACCEPTED,
    DeliveryReport,
    MessageBatch,
    Outcome,
    Reject,
    SubmitResult,
)
from engine.state.ledger.encoding import (
    _FINAL_AT_MOST_ONCE,
    _INSERT_RECORD,
    _OPEN_MAX,
    _U16,
    INTERRUPTED,
    _Derived,
    _enc,
    _pack_parts,
    _pack_rows,
    _pack_variants,
)
from engine.state.ledger.lease import _LEASE_TOKEN, Lease
from engine.state.ledger.records import (
    _CODE_OF,
    _OUTCOME_CODE,
    CampaignStatus,
    LeaseLost,
    LedgerStalled,
    LedgerWriteError,
    Semantics,
    _Code,
    _Event,
)
from engine.state.ledger.tx import _tx

__all__ = ["CampaignLedger", "LedgerFile", "skip_rows"]


class LedgerFile(Protocol):
    """What a run's writer uses of its ledger (:class:`~engine.state.ledger.store.Ledger`)."""

    path: Path
    db: sqlite3.Connection

    def reopen(self) -> LedgerFile:
        """Another connection to the same file."""
        ...

    def set_status(self, campaign_id: str, status: CampaignStatus) -> None:
        """Record the campaign's status."""
        ...

    def _derive(self, campaign_id: str) -> _Derived: ...

    def apply_reports(
        self,
        reports: Sequence[DeliveryReport],
        unmatched: list[DeliveryReport] | None = None,
        *,
        latencies: dict[int, float] | None = None,
    ) -> int:
        """Record delivery reports; how many matched a message."""
        ...

    def recent_parts(self, since: float) -> tuple[dict[str, int], dict[str, int]]:
        """Billed parts handed over since ``since``, by carrier and by gateway."""
        ...

    def handed_parts(self, campaign_id: str) -> dict[str, int]:
        """Billed parts of the campaign handed over so far, by carrier, each recipient once."""
        ...

    def handed_since(self, campaign_id: str, since: float) -> int:
        """Recipients of the campaign handed over at ``since`` or later, each once."""
        ...

    def close(self) -> None:
        """Close the connection."""
        ...


class CampaignLedger:
    """One run's writer for a campaign's ledger: call it per batch and per request.

    Created by :meth:`Ledger.open_campaign`. Drops are buffered and written with the next
    transaction; :meth:`handover` commits before the request goes out; answers commit when they
    arrive. :meth:`close` flushes what is buffered.
    """

    def __init__(
        self, ledger: LedgerFile, campaign_id: str, kind: str, semantics: Semantics, *, resumed: bool
    ):
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
        a worker process of a sharded send (:mod:`engine.run.shards`) writes with, after ``fork``.

        It shares this run's rows to skip and to resend, never touches this writer's connection
        (SQLite connections must not cross a fork), waits its turn when another shard is writing
        (``spin_on_busy``), and numbers its requests ``index + 1``, ``index + 1 + count``, … past
        the last one recorded, so that no two shards share a request number.
        """
        own = self.ledger.reopen()
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
        variants: Sequence[str] | None = None,
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
                _pack_variants(variants) if variants is not None else None,
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

    def commit_with(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """One transaction now: ``statements`` and the records buffered so far — not the
        statements :meth:`defer` holds for the next hand-over (those keep their moment). Raises
        :class:`LedgerWriteError` when the store refuses; the buffered records stay buffered."""
        pending = self._pending[:]
        try:
            with _tx(self.db):
                for sql, params in statements:
                    self.db.execute(sql, params)
                if self._pending:
                    self.db.executemany(
                        _INSERT_RECORD,
                        self._pending,
                    )
                    self._pending = []
        except BaseException:
            self._pending = pending
            raise

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
                _INSERT_RECORD,
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
        :class:`~engine.core.errors.RunHalt`: the run halts).
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
                variants=batch.variants,
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
    :class:`~engine.pipeline.runner.Batch`, silently — no reject record: the ledger already holds their
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
