"""A campaign's lease: one owner at a time, taken in a transaction, renewed, taken over when dead."""

from __future__ import annotations

import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, Final

import msgspec

from engine.state.ledger.records import LedgerError

__all__ = ["CampaignBusy", "Lease"]


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
