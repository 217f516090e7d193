"""The ledger of every campaign in one SQLite file: open, status, derived counts, receipts, reports."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from engine.core.messages import (
    DeliveryReport,
    DeliveryStatus,
)
from engine.core.timestamps import epoch_seconds
from engine.state.ledger.encoding import (
    _INDEX_CHUNK,
    _REPORT_STATE,
    _SCHEMA,
    _U8,
    _U16,
    _dec_strs,
    _Derived,
    _intern,
    _unpack_parts,
    _unpack_rows,
    _unpack_variants,
)
from engine.state.ledger.lease import (
    _LEASE_ROW,
    LEASE_TTL,
    CampaignBusy,
    Lease,
    LeaseHolder,
    _holder,
    _take_lease,
)
from engine.state.ledger.records import (
    _CODE_OF,
    _STATE_OF,
    CampaignCounts,
    CampaignRecord,
    CampaignStatus,
    Fingerprint,
    LedgerError,
    LedgerState,
    MessageRecord,
    RowOutcomes,
    Semantics,
    _Code,
    _Event,
    default_semantics,
    file_fingerprint,
)
from engine.state.ledger.run import CampaignLedger
from engine.state.ledger.tx import _tx

__all__ = [
    "Ledger",
    "open_for_run",
]


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
            _add_missing_columns(self.db)
            # The store's own tables (the send history) are created by SqliteStore; make sure they
            # exist so a hand-over can count caps in the same transaction.
            from engine.state.store.sqlite import SqliteStore

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

    def reopen(self) -> Ledger:
        """Another connection to this ledger's file (a shard's own after ``fork``), spinning when busy."""
        return Ledger(self.path, spin_on_busy=True)

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
            "parts, sends_last, variants FROM ledger_records WHERE campaign = ? ORDER BY seq",
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
            variants_b,
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
            if event == _Event.DROP:
                d.decided_at[rows] = ts
            elif event == _Event.SUBMITTING:
                d.attempts[rows] += 1
                first = d.submitted_at[rows] == 0
                d.submitted_at[rows[first]] = ts
                d.carrier[rows] = _intern(d.carriers, carrier)
                if parts_b:
                    d.parts[rows] = _unpack_parts(parts_b, rows.size)
                if variants_b is not None:
                    names, ix = _unpack_variants(variants_b)
                    lut = np.array([_intern(d.variants, n) for n in names], dtype=np.int8)
                    d.variant[rows] = lut[ix]
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
        now = time.time()
        for row, status, code, done_at, latency in self.db.execute(
            "SELECT row, status, code, done_at, latency FROM ledger_reports WHERE campaign = ? "
            "ORDER BY received_at",
            (campaign_id,),
        ):
            if row >= size:
                continue
            seconds = epoch_seconds(done_at, now)  # a row stored before timestamps were checked
            if seconds != done_at:
                # the same hand-over time, "done" in seconds
                latency = seconds - (done_at - latency) if latency >= 0 and done_at > 0 and seconds else -1.0
                done_at = seconds or 0.0
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

    def row_outcomes(self, campaign_id: str) -> RowOutcomes:
        """Every row's state, carrier, parts and times as arrays (see :class:`RowOutcomes`)."""
        d = self._derive(campaign_id)
        delivered_at = np.zeros(d.state.size, dtype=np.float64)
        for row, (status, _code, done_at) in d.dlr_code.items():
            if status == DeliveryStatus.DELIVERED.value:
                delivered_at[row] = done_at or 0.0
        seen = (d.state != _Code.PENDING) | (d.reason != 0) | (d.attempts != 0)
        seen[:1] = False
        return RowOutcomes(
            state=d.state,
            reason=d.reason,
            labels=list(d.labels),
            seen=seen,
            carrier=d.carrier,
            carriers=list(d.carriers),
            parts=d.parts,
            submitted_at=d.submitted_at,
            decided_at=d.decided_at,
            delivered_at=delivered_at,
        )

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
            carrier=d.carriers[int(d.carrier[row])],
            parts=int(d.parts[row]),
        )

    def _locate(self, message_id: str) -> tuple[str, int] | None:
        campaign_id, sep, tail = message_id.rpartition("-")
        known = "SELECT 1 FROM ledger_campaigns WHERE id = ?"
        if sep and tail.isdigit() and self.db.execute(known, (campaign_id,)).fetchone():
            return campaign_id, int(tail)
        return None

    def handed_parts(self, campaign_id: str) -> dict[str, int]:
        """Billed parts of the campaign handed to a gateway so far, over all its runs, by carrier:
        each recipient counted once (its first hand-over), as ``policy.spend_cap`` counts them."""
        rows_l: list[npt.NDArray[np.int64]] = []
        parts_l: list[npt.NDArray[np.int64]] = []
        which: list[npt.NDArray[np.int64]] = []
        carriers: dict[str, int] = {}
        for carrier, rows_b, parts_b in self.db.execute(
            "SELECT carrier, rows, parts FROM ledger_records WHERE campaign = ? AND event = ? ORDER BY seq",
            (campaign_id, int(_Event.SUBMITTING)),
        ):
            rows = _unpack_rows(rows_b).astype(np.int64)
            n = int(rows.size)
            rows_l.append(rows)
            parts_l.append(_unpack_parts(parts_b, n).astype(np.int64) if parts_b else np.ones(n, np.int64))
            which.append(np.full(n, carriers.setdefault(carrier, len(carriers)), np.int64))
        if not rows_l:
            return {}
        _, first = np.unique(np.concatenate(rows_l), return_index=True)  # each row's first hand-over
        totals = np.bincount(
            np.concatenate(which)[first], weights=np.concatenate(parts_l)[first], minlength=len(carriers)
        )
        return {c: int(totals[i]) for c, i in carriers.items()}

    def handed_since(self, campaign_id: str, since: float) -> int:
        """Recipients of the campaign handed to a gateway at ``since`` (epoch seconds) or later, each
        once (a retry's hand-over of a row first handed earlier counts too: never fewer than sent)."""
        rows_l = [
            _unpack_rows(rows_b)
            for (rows_b,) in self.db.execute(
                "SELECT rows FROM ledger_records WHERE campaign = ? AND event = ? AND ts >= ?",
                (campaign_id, int(_Event.SUBMITTING), since),
            )
        ]
        return int(np.unique(np.concatenate(rows_l)).size) if rows_l else 0

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
        self,
        reports: Sequence[DeliveryReport],
        unmatched: list[DeliveryReport] | None = None,
        *,
        latencies: dict[int, float] | None = None,
        also: Callable[[sqlite3.Connection, list[tuple[str, int, DeliveryReport]]], None] | None = None,
    ) -> int:
        """Record delivery reports (matched by provider id, else by Pigeon's message id), in one
        transaction; returns how many matched a message of some campaign. Unmatched ones are
        ignored (another system's messages, a campaign archived since, or a message whose submit
        answer is not recorded yet) — and appended to ``unmatched`` when it is given.
        ``latencies``, if given, gets report index → seconds from the gateway's answer to the
        report, where known. ``also``, if given, is called in that transaction with the
        connection and each matched (campaign, row, report): what it writes is committed with them
        (the service's status-callback events)."""
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
        for i, r, (campaign_id, row, ts) in hits:
            done_at = epoch_seconds(r.done_at, now) or 0.0  # (the service checked it; a caller may not)
            latency = (done_at or now) - ts if ts > 0 else -1.0
            rows.append((campaign_id, row, r.status.value, r.code, done_at, now, r.provider_id, latency))
            if latencies is not None and latency >= 0:
                latencies[i] = latency
        if rows:
            with _tx(self.db):
                self.db.executemany("INSERT INTO ledger_reports VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                if also is not None:
                    also(self.db, [(c, row, r) for _, r, (c, row, _) in hits])
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
        variants: dict[str, dict[str, float | int]] = {}
        dlr_labels = [i for i, label in enumerate(d.labels) if label.startswith("dlr:")]
        for vi, name in enumerate(d.variants):
            if not name:
                continue
            mine = d.variant == vi
            sel = billed_codes & mine
            sent = sel & np.isin(d.state, [_Code.SUBMITTED, _Code.DELIVERED])
            delivered_v = int(np.count_nonzero(mine & (d.state == _Code.DELIVERED)))
            failed_v = int(np.count_nonzero(sel & (d.state == _Code.FAILED)))
            cost = sum(
                int(d.parts[sent & (d.carrier == ci)].sum()) * prices.get(cname, 0.0)
                for ci, cname in enumerate(d.carriers)
                if cname
            )
            accepted = int(np.count_nonzero(sent)) + int(
                np.count_nonzero(sel & (d.state == _Code.FAILED) & np.isin(d.reason, dlr_labels))
            )
            variants[name] = {
                "messages": int(np.count_nonzero(sent)),
                "parts": int(d.parts[sent].sum()),
                "cost": round(cost, 4),
                "delivered": delivered_v,
                "failed": failed_v,
                "unknown": int(np.count_nonzero(sel & (d.state == _Code.UNKNOWN))),
                "delivery_rate": round(delivered_v / accepted, 4) if accepted else 0.0,
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
            **({"variants": variants} if variants else {}),
            "total_parts": sum(int(c["parts"]) for c in carriers.values()),
            "total_cost": round(sum(float(c["cost"]) for c in carriers.values()), 4),
            "delivery_reports": len(d.dlr_code),
            "delivery_rate": round(delivered / submitted, 4) if submitted else 0.0,
            "latency_seconds": pct,
        }

    def close(self) -> None:
        """Close the connection."""
        self.db.close()


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Bring a ledger file written by an older Pigeon up to the schema (columns added since)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(ledger_records)")}
    if "variants" not in have:
        try:
            db.execute("ALTER TABLE ledger_records ADD COLUMN variants BLOB")
        except sqlite3.OperationalError as exc:  # another process added it first
            if "duplicate column" not in str(exc):
                raise


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
    """Open (or resume) the ledger of a loaded campaign (:class:`~engine.core.config.LoadedCampaign`)
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
