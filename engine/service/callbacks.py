"""Status callbacks to the caller: a durable outbox of state changes, batched, signed POSTs, dead letters.

A message posted with a ``callback_url`` (allowed by its API key's allow-list) has each change of
its state written as an event into ``callback_outbox`` in the service's store — in the transaction
that records the change (its acceptance, its gateway's answer, its delivery report) — and a
:class:`CallbackSender` posts the outbox to the receivers: per receiver (URL) up to
``callbacks.batch`` events per POST, signed like the gateways' webhooks (``X-Pigeon-Signature:
t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}." + body)>``). An event leaves the outbox only
when its receiver answered 2xx: a receiver that is down, slow or answering 5xx is tried again with
exponential backoff (``backoff_base`` … ``backoff_cap``, jittered), and a restart of the service
loses nothing (the outbox is in the store; a POST cut off by the stop is sent again). Delivery is
at least once: every event has a unique ``id`` for the receiver to drop repeats by. An event that
failed ``max_attempts`` POSTs or waited longer than ``max_age`` goes to ``callback_dead`` (``GET
/v1/callbacks/dead``, ``pigeon_callback_events_total{outcome="dead"}``).
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx

from engine.core.messages import MessageBatch, Reject, SubmitResult
from engine.core.service_config import CallbackConfig
from engine.observability.metrics import Metrics
from engine.sending.webhooks import sign
from engine.state.ledger.run import CampaignLedger
from engine.state.ledger.tx import transaction
from engine.state.outbox import (
    INSERT_EVENT,
    OUTBOX_SCHEMA,
    CallbackEvent,
    create_tables,
    drop_state,
    event_row,
    report_state,
    result_state,
)

__all__ = [
    "INSERT_EVENT",
    "OUTBOX_SCHEMA",
    "CallbackEvent",
    "CallbackSender",
    "CallbackSink",
    "Pending",
    "create_tables",
    "dead_letters",
    "drop_state",
    "event_row",
    "report_state",
]

log = logging.getLogger("pigeon.callbacks")


class Pending:
    """What the callback sink needs about a message in the lanes (until its gateway answers)."""

    __slots__ = ("campaign", "show", "to", "url")

    def __init__(self, url: str, to: str, show: bool, campaign: str) -> None:
        self.url, self.to, self.show, self.campaign = url, to, show, campaign


class CallbackSink:
    """A :class:`~engine.observability.report.RunRecorder` sink of an API stream: the gateways'
    answers of messages with a callback URL become outbox rows in the stream's ledger's next
    transaction — the one that records those answers (it sits before the ledger in the sinks)."""

    def __init__(
        self, pending: dict[str, Pending], ledger: CampaignLedger | None, db: sqlite3.Connection
    ) -> None:
        self.pending = pending
        self.ledger = ledger
        self.db = db

    def _write(self, rows: list[tuple[str, bytes, float]]) -> None:
        if not rows:
            return
        if self.ledger is not None:
            for row in rows:
                self.ledger.defer(INSERT_EVENT, row)
        else:
            with transaction(self.db):
                self.db.executemany(INSERT_EVENT, rows)

    def _rows(
        self, batch: MessageBatch | Sequence[str], state_of: Callable[[int], tuple[str, str]]
    ) -> list[tuple[str, bytes, float]]:
        pending = self.pending
        if not pending:
            return []
        now = time.time()
        rows: list[tuple[str, bytes, float]] = []
        ids = batch.ids if isinstance(batch, MessageBatch) else batch
        for i, mid in enumerate(ids):
            p = pending.pop(mid, None)
            if p is None:
                continue
            state, reason = state_of(i)
            rows.append(
                event_row(
                    p.url,
                    message_id=mid,
                    campaign=p.campaign,
                    state=state,
                    reason=reason,
                    at=now,
                    to_e164=p.to,
                    show_numbers=p.show,
                )
            )
        return rows

    def dropped(self, records: Sequence[Reject]) -> None:
        """Written at acceptance (:mod:`engine.service.submissions`), not here."""

    def held_back(self, ids: Sequence[str], reason: str) -> None:
        """Messages held back in their lane (a shared opt-out, cap or same-content window, with a
        coordinator): ``suppressed`` with ``reason``."""
        self._write(self._rows(ids, lambda i: ("suppressed", reason)))

    def results(self, gateway: str, batch: MessageBatch, results: Sequence[SubmitResult]) -> None:
        """A request's answers: ``sent``, ``failed`` or ``unknown`` per message."""
        if len(results) != len(batch):
            self.failed(gateway, batch, "gateway_contract")
            return
        self._write(self._rows(batch, lambda i: result_state(results[i])))

    def failed(self, gateway: str, batch: MessageBatch, reason: str) -> None:
        """A whole request failed: ``failed``."""
        self._write(self._rows(batch, lambda i: ("failed", reason)))

    def unknown(self, gateway: str, batch: MessageBatch, reason: str) -> None:
        """A request without a clear answer: ``unknown``."""
        self._write(self._rows(batch, lambda i: ("unknown", reason)))

    def released(self, gateway: str, batch: MessageBatch, reason: str) -> None:
        """Queued again: no state change to tell."""


_SELECT_BATCH = "SELECT seq, event FROM callback_outbox WHERE url = ? ORDER BY seq LIMIT ?"


class CallbackSender:
    """Posts the outbox to its receivers until stopped (one per service).

    Store work runs in a worker thread on a connection of its own; each receiver has at most one
    POST open, :attr:`CallbackConfig.concurrency` receivers are posted to at once, and a receiver
    that failed waits its backoff before the next try (the events of the others go on)."""

    def __init__(self, store_path: str | Path, config: CallbackConfig, secret: bytes, metrics: Metrics):
        self.path = str(store_path)
        self.cfg = config
        self.secret = secret
        self.metrics = metrics
        self._db: sqlite3.Connection | None = None
        self._limiter = anyio.CapacityLimiter(1)
        self._busy: set[str] = set()
        self._fails: dict[str, int] = {}
        self._next_try: dict[str, float] = {}
        self.sent = 0
        """Events delivered (2xx) since start."""

    async def _run_db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
        return self._db

    def _survey(self, now: float) -> tuple[list[str], int, int]:
        """Receivers with events waiting, the outbox's depth, and how many events just went dead
        (past ``max_age`` or ``max_attempts``)."""
        db = self._open()
        where, due = "created_at < ? OR attempts >= ?", (now - self.cfg.max_age, self.cfg.max_attempts)
        dead = 0  # (a read first: the write lock only when something is to be buried)
        if db.execute(f"SELECT 1 FROM callback_outbox WHERE {where} LIMIT 1", due).fetchone():
            dead = self._bury(db, where, due)
        urls = [r[0] for r in db.execute("SELECT DISTINCT url FROM callback_outbox").fetchall()]
        depth = int(db.execute("SELECT count(*) FROM callback_outbox").fetchone()[0])
        return urls, depth, dead

    def _bury(self, db: sqlite3.Connection, where: str, params: tuple[Any, ...]) -> int:
        with transaction(db):
            cur = db.execute(
                "INSERT INTO callback_dead SELECT seq, url, event, created_at, attempts, last_error, ? "
                f"FROM callback_outbox WHERE {where}",
                (time.time(), *params),
            )
            n = cur.rowcount
            if n:
                db.execute(f"DELETE FROM callback_outbox WHERE {where}", params)
        return max(0, n)

    def _take(self, url: str) -> list[tuple[int, bytes]]:
        return [(int(s), bytes(e)) for s, e in self._open().execute(_SELECT_BATCH, (url, self.cfg.batch))]

    def _done(self, seqs: list[int]) -> None:
        db = self._open()
        with transaction(db):
            db.executemany("DELETE FROM callback_outbox WHERE seq = ?", [(s,) for s in seqs])

    def _tried(self, seqs: list[int], error: str) -> int:
        db = self._open()
        with transaction(db):
            db.executemany(
                "UPDATE callback_outbox SET attempts = attempts + 1, last_error = ? WHERE seq = ?",
                [(error, s) for s in seqs],
            )
        lo, hi = min(seqs), max(seqs)
        return self._bury(db, "seq BETWEEN ? AND ? AND attempts >= ?", (lo, hi, self.cfg.max_attempts))

    async def run(self, closing: anyio.Event) -> None:
        """Post until ``closing`` is set; a POST cut off by the stop leaves its events in the
        outbox (they go again after a restart)."""
        limits = httpx.Limits(
            max_connections=self.cfg.concurrency * 2, max_keepalive_connections=self.cfg.concurrency
        )
        timeout = httpx.Timeout(self.cfg.timeout)
        try:
            async with (
                httpx.AsyncClient(limits=limits, timeout=timeout, follow_redirects=False) as client,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(self._loop, client, tg, closing)
                await closing.wait()
                tg.cancel_scope.cancel()
        finally:
            if self._db is not None:
                self._db.close()
                self._db = None

    async def _loop(self, client: httpx.AsyncClient, tg: Any, closing: anyio.Event) -> None:
        while not closing.is_set():
            try:
                urls, depth, dead = await self._run_db(self._survey, time.time())
            except sqlite3.Error as exc:
                log.warning("callback outbox unreadable: %s", exc, extra={"event": "callbacks.store_error"})
                urls, depth, dead = [], 0, 0
            self.metrics.callback_queue(depth)
            if dead:
                self._dead(dead, "max_age or max_attempts")
            mono = time.monotonic()
            for url in urls:
                if len(self._busy) >= self.cfg.concurrency:
                    break
                if url in self._busy or self._next_try.get(url, 0.0) > mono:
                    continue
                self._busy.add(url)
                tg.start_soon(self._drain, client, url)
            await anyio.sleep(self.cfg.flush_every)

    def _dead(self, n: int, why: str) -> None:
        self.metrics.callback_events("dead", n)
        log.warning(
            "callback events dead-lettered",
            extra={"event": "callbacks.dead", "count": n, "why": why},
        )

    async def _drain(self, client: httpx.AsyncClient, url: str) -> None:
        """POST ``url``'s events, a batch at a time, until none is left or a POST fails."""
        try:
            while True:
                rows = await self._run_db(self._take, url)
                if not rows:
                    return
                ok, error = await self._post(client, url, rows)
                seqs = [s for s, _ in rows]
                if ok:
                    await self._run_db(self._done, seqs)
                    self.sent += len(rows)
                    self.metrics.callback_events("delivered", len(rows))
                    self._fails.pop(url, None)
                    self._next_try.pop(url, None)
                    if len(rows) < self.cfg.batch:
                        return
                    continue
                dead = await self._run_db(self._tried, seqs, error)
                if dead:
                    self._dead(dead, "max_attempts")
                fails = self._fails[url] = self._fails.get(url, 0) + 1
                wait = min(self.cfg.backoff_cap, self.cfg.backoff_base * 2 ** min(fails - 1, 30))
                self._next_try[url] = time.monotonic() + wait * random.uniform(0.5, 1.0)
                log.info(
                    "callback receiver failed",
                    extra={
                        "event": "callbacks.retry",
                        "error": error,
                        "events": len(rows),
                        "failures": fails,
                    },
                )
                return
        finally:
            self._busy.discard(url)

    async def _post(
        self, client: httpx.AsyncClient, url: str, rows: list[tuple[int, bytes]]
    ) -> tuple[bool, str]:
        body = b'{"events":[' + b",".join(e for _, e in rows) + b"]}"
        headers = {
            "content-type": "application/json",
            "x-pigeon-signature": sign(self.secret, body, int(time.time())),
            "user-agent": "pigeon-callbacks",
        }
        try:
            r = await client.post(url, content=body, headers=headers)
        except httpx.TimeoutException:
            self.metrics.callback_request("timeout")
            return False, "timeout"
        except httpx.HTTPError as exc:
            self.metrics.callback_request("unreachable")
            return False, f"unreachable: {type(exc).__name__}"
        if 200 <= r.status_code < 300:
            self.metrics.callback_request("ok")
            return True, ""
        self.metrics.callback_request("refused")
        return False, f"status {r.status_code}"


def dead_letters(
    db: sqlite3.Connection, *, after: int | None, limit: int
) -> tuple[list[tuple[int, str, bytes, float, int, str, float]], int | None]:
    """A page of dead letters, newest first, after ``after`` (their ``seq``); and the next cursor."""
    try:
        if after is None:
            rows = db.execute(
                "SELECT seq, url, event, created_at, attempts, last_error, dead_at FROM callback_dead "
                "ORDER BY seq DESC LIMIT ?",
                (limit + 1,),
            ).fetchall()
        else:
            rows = db.execute(
                "SELECT seq, url, event, created_at, attempts, last_error, dead_at FROM callback_dead "
                "WHERE seq < ? ORDER BY seq DESC LIMIT ?",
                (after, limit + 1),
            ).fetchall()
    except sqlite3.OperationalError:  # (no service has made the table yet)
        return [], None
    more = len(rows) > limit
    rows = rows[:limit]
    return [tuple(r) for r in rows], (int(rows[-1][0]) if more else None)
