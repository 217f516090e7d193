"""The coordinator contract: the lease, the rate budgets and the recipient claims a worker shares."""

from __future__ import annotations

import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import msgspec
import numpy as np
import numpy.typing as npt

from engine.core.errors import CoordinatorUnavailable  # defined low: the lanes pause on it
from engine.pipeline.source import SegmentRange
from engine.state.caps import CapWindow
from engine.state.ledger.records import LeaseLost

__all__ = [
    "BudgetKey",
    "BudgetSpec",
    "CapCheck",
    "Claim",
    "Coordinator",
    "CoordinatorContext",
    "CoordinatorUnavailable",
    "LeaseGrant",
    "LeaseLost",  # the ledger's: the run halts, it hands nothing more over
    "OptOutFeed",
    "RangeQueue",
    "SharedChecks",
    "SharedOptOutCopy",
    "SharedOptOuts",
    "SharedSlowDown",
    "SlowDown",
    "TakenRange",
    "worker_id",
]


def worker_id() -> str:
    """A name for this process that no other worker shares: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class LeaseGrant(msgspec.Struct, kw_only=True, frozen=True):
    """A lease this worker holds on a campaign.

    ``fence`` is the fencing token: it grows by one at every take, across every owner the campaign
    ever had, so a store that records the fence with each write can refuse a late write of an owner
    whose lease was taken over (its fence is smaller than the current one).
    """

    campaign: str
    owner: str
    """Who took it, for people: ``pigeon send``, ``pigeon worker``…"""
    token: str
    """This grant's own secret: renew and release only act when it still matches."""
    fence: int
    ttl: float
    """Seconds the lease lives without a renewal; renew every third of it."""


class BudgetKey(NamedTuple):
    """One rate budget: the parts a gateway may send to a carrier on a lane (``bulk``, ``transactional``)."""

    gateway: str
    carrier: str
    lane: str

    def tag(self) -> str:
        """``gateway:carrier:lane``: the name a shared store files the budget under."""
        return f"{self.gateway}:{self.carrier}:{self.lane}"


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    """A budget's figures: at most ``rate`` billed parts in any ``window`` seconds, charged per request.

    ``burst`` is the largest request, in parts, the budget lets go at once. A shared GCRA
    (generic cell rate algorithm: one timestamp per budget) holds the window bound by letting parts
    through at ``rate - burst`` per ``window`` on average, with room for one request of ``burst``
    parts at once; ``margin`` widens the window (1% by default) for the time between the charge
    and the request's arrival at the receiver.
    """

    rate: float
    burst: int = 1
    window: float = 1.0
    margin: float = 0.01

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate must be a positive number of parts per window, not {self.rate!r}")
        if not 1 <= self.burst < self.rate:
            raise ValueError(
                f"burst ({self.burst} parts: the largest request) must be at least 1 and below the rate "
                f"({self.rate:g} parts per {self.window:g} s): make requests smaller or the window longer"
            )
        if self.window <= 0 or self.margin < 0:
            raise ValueError("window must be positive and margin not negative")

    def check(self, parts: int) -> None:
        """ValueError unless a request of ``parts`` fits one burst (a larger one could never go)."""
        if not 1 <= parts <= self.burst:
            raise ValueError(
                f"a request of {parts} parts does not fit the budget's burst ({self.burst}): split it"
            )

    @property
    def interval(self) -> float:
        """GCRA's emission interval: seconds charged per part."""
        return self.window * (1 + self.margin) / (self.rate - self.burst)

    @property
    def tolerance(self) -> float:
        """GCRA's burst tolerance in seconds: room for one request of ``burst`` parts."""
        return self.burst * self.interval


class Claim(IntEnum):
    """What a claim on one recipient found."""

    TAKEN = 0
    """Another worker claimed the recipient: do not submit."""
    NEW = 1
    """Claimed by this call: submit."""
    MINE = 2
    """Claimed before by this worker (a retry of its own): submit if its ledger says so."""
    ADOPTED = 3
    """Claimed by the dead worker the call named (``adopt``), now this worker's: it may or may not
    have been sent (resend only through an idempotent gateway)."""
    OPTED_OUT = 4
    """Opted out while the campaign runs (:meth:`SharedOptOuts.add_optouts` by any worker): not
    claimed, not sent."""
    CAPPED = 5
    """Over a frequency cap counted by every worker (:class:`CapCheck`): not claimed, not counted,
    not sent (recorded ``suppressed``, ``capped``)."""
    SAME_CONTENT = 6
    """The same text went to the recipient within the same-content window, from any worker
    (:attr:`CapCheck.same_content`): not claimed, not sent (recorded ``suppressed``, ``same_content``)."""


@dataclass(frozen=True, slots=True)
class CapCheck:
    """Frequency caps a claim checks and counts in the same step (a coordinator that shares them).

    Each recipient the claim would newly take is checked against every window's count of the
    ``kind`` (``marketing``, ``transactional``: caps span campaigns, as the store's history does);
    one at its limit in any window answers :attr:`Claim.CAPPED`, every other new claim adds one
    to each window's count. ``now`` (epoch seconds, the worker's wall clock) places the calendar
    day and the rolling period: hosts keep their clocks in step (NTP).

    ``same_content`` (seconds; 0: none) with ``contents`` (one hash of the message text per
    recipient): a recipient who got the same text within that many seconds, from any worker,
    answers :attr:`Claim.SAME_CONTENT`; every new claim records its text for that long.
    """

    kind: str
    windows: tuple[CapWindow, ...]
    now: float
    same_content: float = 0.0
    contents: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class CoordinatorContext:
    """What a coordinator factory is given besides its options."""

    worker: str = field(default_factory=worker_id)
    """This worker's name (unique across hosts): the owner of its claims."""
    store_path: Path | None = None
    """The worker's SQLite store (its ledger), where the embedded coordinator keeps the lease."""
    clock: Callable[[], float] = time.monotonic
    """The clock in-process limits read (a fake one in tests); shared stores use their own."""


@runtime_checkable
class Coordinator(Protocol):
    """The plane the workers of one campaign share; called per request, never per message.

    Lease: :meth:`take_lease` raises :class:`~engine.state.ledger.lease.CampaignBusy` while another
    live owner holds it; :meth:`renew_lease` raises :class:`LeaseLost` once it is not ours.
    Budgets: :meth:`charge` books a request's parts or, when over, books nothing and says how long
    to wait. Claims: :meth:`claim` takes every recipient of one request in one step, so a recipient
    is claimed by at most one worker whatever they race.
    """

    name: str

    async def take_lease(self, campaign: str, owner: str, ttl: float) -> LeaseGrant:
        """Take the campaign's lease for ``ttl`` seconds with a new, larger fence."""
        ...

    async def renew_lease(self, grant: LeaseGrant) -> None:
        """Extend the lease by its ttl; :class:`LeaseLost` if it is not this grant's any more."""
        ...

    async def release_lease(self, grant: LeaseGrant) -> bool:
        """Give the lease back; False (and nothing changed) if it was not this grant's any more."""
        ...

    async def holds(self, grant: LeaseGrant) -> bool:
        """Whether ``grant`` is still the campaign's lease (its token and fence are current)."""
        ...

    async def charge(self, key: BudgetKey, spec: BudgetSpec, parts: int) -> float:
        """Book ``parts`` on the budget: 0.0 when booked, else the seconds to wait before asking
        again (nothing booked)."""
        ...

    async def claim(
        self,
        campaign: str,
        recipients: Sequence[str],
        *,
        tags: Sequence[str] | None = None,
        adopt: str = "",
        caps: CapCheck | None = None,
    ) -> list[Claim]:
        """Claim every recipient of one request for this worker, in one step; one answer each.

        ``tags`` (one per recipient, e.g. its row): ``MINE`` only when this worker claimed the
        recipient under the same tag (another tag — the same number on another row — is
        ``TAKEN``). ``adopt``: claims the worker of that name holds are taken over (``ADOPTED``):
        it died holding a range this worker reclaimed. ``caps``: a coordinator that shares
        frequency caps checks and counts them for the recipients it would newly claim
        (``CAPPED``); one that does not (the embedded one: one process counts its own) ignores it."""
        ...

    async def release_claims(self, campaign: str, recipients: Sequence[str]) -> int:
        """Give back claims of this worker whose request never left (refused before sending); how many."""
        ...

    async def aclose(self) -> None:
        """Close connections; the lease is not released (call :meth:`release_lease`)."""
        ...


class TakenRange(msgspec.Struct, frozen=True, kw_only=True):
    """A range of a campaign's segment this worker took from the shared queue."""

    entry: str
    """The queue's id for it (a Redis Stream entry id): what :meth:`RangeQueue.range_done` acks."""
    part: SegmentRange
    previous: str = ""
    """The worker it was reclaimed from (it stopped renewing it: dead), "" for a fresh one; this
    worker's own name for a range it held before a restart."""
    resume_row: int = 0
    """Where the range resumes: every row of it before this one has its outcome in the ledger of
    the worker that held it (recorded with :meth:`RangeQueue.renew_range`); 0 — nothing recorded,
    from its start."""
    resume_at: int = 0
    """The first byte of :attr:`resume_row` in the segment file (a row boundary)."""


@runtime_checkable
class RangeQueue(Protocol):
    """A coordinator that also hands out a campaign's segment ranges (``pigeon worker``): each
    range to one worker at a time, taken back from a worker that stops renewing it."""

    async def publish_ranges(self, campaign: str, parts: Sequence[SegmentRange], meta: bytes) -> int:
        """Publish the campaign's ranges once: how many, 0 when another worker published first."""
        ...

    async def take_range(self, campaign: str, *, idle: float) -> TakenRange | None:
        """The next range for this worker: one it held before (a restart), a fresh one, or one
        another worker has not renewed for ``idle`` seconds; None when there is none now."""
        ...

    async def renew_range(
        self, campaign: str, entry: str, *, progress: tuple[int, int, int] | None = None
    ) -> bool:
        """Keep a range this worker is sending (its idle time back to 0); False once another took it.
        ``progress`` = (range index, row, byte): the range's rows before ``row`` (which starts at
        ``byte``) are settled in this worker's ledger — recorded only while this worker holds the
        range and only forward; a later :meth:`take_range` of it answers it as ``resume_row`` /
        ``resume_at``."""
        ...

    async def range_done(self, campaign: str, taken: TakenRange, rows: int) -> None:
        """Every row of the range is settled in this worker's ledger: it leaves the queue."""
        ...

    async def heartbeat(self, campaign: str, stats: dict[str, float]) -> None:
        """This worker's figures for ``pigeon status`` (sent, rate, ranges done…)."""
        ...

    async def queue_state(self, campaign: str) -> dict[str, Any]:
        """The campaign's queue as ``pigeon status`` shows it: ranges, rows, done, by worker, workers."""
        ...


@runtime_checkable
class SharedOptOuts(Protocol):
    """A coordinator whose claims also refuse recipients opted out while the campaign runs: an
    opt-out one worker hears (an MO reply on its bind) stops every worker's next request to them."""

    async def add_optouts(self, campaign: str, recipients: Sequence[str]) -> int:
        """Add recipients (as claims name them) to the campaign's opt-out set; how many were new."""
        ...


@dataclass(frozen=True, slots=True)
class SlowDown:
    """How a shared budget slows down when the receiver says "too fast" (429, throttled), and climbs back.

    The cut is multiplicative (``factor`` of the share the budget has now, never below ``floor`` of
    its rate), at most one per ``hold`` seconds — the answers to the requests in flight at a cut
    come in after it, from every worker, and count as one — and the climb back additive:
    ``climb`` of the rate per second (from half the rate to all of it in 10 s by default), read
    from the time by every charge, so a recovered receiver costs no call.
    """

    factor: float = 0.5
    floor: float = 0.05
    climb: float = 0.05
    hold: float = 0.2

    def __post_init__(self) -> None:
        if not (0 < self.factor < 1 and 0 < self.floor <= 1 and self.climb > 0 and self.hold >= 0):
            raise ValueError("slow-down: factor in (0, 1), floor in (0, 1], climb > 0 and hold >= 0")


@runtime_checkable
class SharedSlowDown(Protocol):
    """A coordinator whose budgets slow down for every worker when one worker hears "too fast":
    a throttled answer at one worker lowers the rate all of them charge against."""

    async def slow_down(self, key: BudgetKey, spec: BudgetSpec, slow: SlowDown) -> tuple[float, bool]:
        """Cut the budget's rate (see :class:`SlowDown`): its share of the configured rate now, and
        whether this call cut it (False: a cut within the hold counts for this answer too)."""
        ...


@runtime_checkable
class SharedChecks(Protocol):
    """A coordinator that checks and counts messages that keep no claim (``pigeon serve``'s API
    messages: one number may get many): opt-outs, frequency caps and same-content windows every
    worker counts, in one step per request."""

    async def check(
        self,
        campaign: str,
        recipients: Sequence[str],
        *,
        tags: Sequence[str],
        caps: CapCheck | None = None,
        optouts: bool = True,
    ) -> list[Claim]:
        """One answer per recipient: ``OPTED_OUT`` (with ``optouts``: in the campaign's or the
        shared opt-out set), ``CAPPED``, ``SAME_CONTENT`` or ``NEW`` (may go: counted in the caps'
        windows). ``tags`` (one per message, e.g. its row) keep two messages to one number apart."""
        ...


@runtime_checkable
class SharedOptOutCopy(Protocol):
    """A coordinator that keeps a shared copy of every store's opt-outs (the SQL stores stay the
    record): each worker uploads what its store holds beyond what it uploaded before, at start."""

    async def optouts_uploaded(self, source: str) -> int:
        """Up to which sequence number the store ``source`` (see
        :func:`engine.coordination.optout_upload.store_source`) uploaded its opt-outs (0: never)."""
        ...

    async def upload_optouts(
        self, source: str, keys: Sequence[int] | npt.NDArray[np.int64], through: int
    ) -> int:
        """Add ``keys`` (number keys) to the shared copy, then record that ``source`` uploaded
        everything up to sequence ``through``: how many were new to the copy."""
        ...


@runtime_checkable
class OptOutFeed(Protocol):
    """A coordinator that tells who opted out where (every :meth:`SharedOptOuts.add_optouts`), so a
    long-running process (``pigeon serve``) records opt-outs the workers heard in its own store."""

    async def feed_end(self) -> str:
        """Where the feed ends now: read from there to get every later opt-out."""
        ...

    async def read_optouts(self, after: str, wait: float) -> tuple[str, list[str]]:
        """Opt-outs other workers shared after ``after``, waiting up to ``wait`` seconds: the
        position read up to and the recipients (as claims name them)."""
        ...
