"""A gateway on several binds: a batch pipelined over the binds' windows, one result per message.

Protocol plugins (``gateway_smpp``, ``gateway_cmpp``) give a :class:`Wire` — how to build a
message's submit PDUs, read a submit answer, classify a status, read a receipt or an MO — and get
the rest from :class:`BindPool`:

* the batch's messages are cut into one contiguous share per bind that is up; the parts of a
  message go out on one bind, in order, back to back;
* each bind paces its share to ``rate / binds`` SMS parts a second (when a rate is set) and slows
  down when the peer throttles;
* answers settle messages: every part accepted → ``accepted`` with the first part's id in
  canonical form; a throttle → ``throttled`` (the engine backs off, the bind slows down); a
  transient refusal → ``retry``; a permanent one → ``rejected``; no answer in time or the
  connection lost with the request unanswered → ``unknown`` (``retry`` when the gateway is
  idempotent); a message never written → ``retry``, or the whole batch raises
  ``GatewayUnreachable`` when none of it could be written (no retry spent);
* the parts of a long message that are throttled or refused for a while are sent again here (a
  few times): the message is already partly out, the engine must not send it whole again. One
  that still fails ends ``rejected`` with code ``partial:<code>``;
* receipts and MO read on any bind go through the :class:`~plugins.session_core.receipts.Correlator`
  and the :class:`~plugins.session_core.longsms.Reassembler` to the attached sink.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from enum import IntEnum
from itertools import islice
from typing import NamedTuple, Protocol

import anyio

from engine.sending.ratelimit import SlidingWindowLimiter
from pigeon import (
    DeliveryReport,
    DeliveryStatus,
    GatewayAuthError,
    GatewayError,
    GatewayUnreachable,
    MessageBatch,
    MoReply,
    Outcome,
    SubmitResult,
    mask,
)
from plugins.session_core.link import Link
from plugins.session_core.longsms import Concat, Reassembler
from plugins.session_core.receipts import Correlator, Receipt, status_of
from plugins.session_core.session import Frame, State

__all__ = ["BindPool", "Inbox", "Kind", "Mo", "Sink", "Wire"]

log = logging.getLogger("pigeon.gateway.session")


class Kind(IntEnum):
    """A submit answer's class."""

    OK = 0
    THROTTLED = 1
    RETRY = 2
    REJECTED = 3
    """Permanent: sending again can never succeed."""
    REFUSED = 4
    """Refused now, maybe not later (not permanent, not retried by the engine)."""


class Mo(NamedTuple):
    """A mobile-originated part as a protocol plugin read it."""

    source: str
    """The sender's number (E.164 with ``+`` when the peer said so, else as written)."""
    dest: str
    text: str
    concat: Concat | None


class Wire(Protocol):
    """What a protocol plugin tells :class:`BindPool`."""

    def submit_bodies(self, to: str, text: str) -> list[bytes]:
        """The PDUs of one message's parts without their header (in order)."""

    def request(self, seq: int, body: bytes) -> bytes:
        """A submit PDU: ``body`` behind its header with sequence number ``seq``."""

    def submit_answer(self, frame: Frame) -> tuple[int, str]:
        """A submit answer's status and provider id (canonical; empty when refused)."""

    def classify(self, status: int) -> Kind:
        """What a submit status means."""

    def inbound(self, frame: Frame) -> Receipt | tuple[Receipt, DeliveryStatus] | Mo | None:
        """A receipt (with its status when the PDU says it outright), an MO part, or None."""


class Sink(Protocol):
    """Where receipts and MO replies go (the service attaches one; see engine.sending.gateway.Inbound)."""

    async def reports(self, reports: Sequence[DeliveryReport]) -> None:
        """Delivery reports, one per message settled."""

    async def replies(self, replies: Sequence[MoReply]) -> None:
        """MO replies, reassembled."""


class Inbox:
    """A sink that keeps what arrives (bounded): for hosts that attach none, and for tests."""

    def __init__(self, limit: int = 100_000) -> None:
        self.delivery_reports: deque[DeliveryReport] = deque(maxlen=limit)
        self.mo_replies: deque[MoReply] = deque(maxlen=limit)
        self.changed = anyio.Event()

    async def reports(self, reports: Sequence[DeliveryReport]) -> None:
        """Keep ``reports``."""
        self.delivery_reports.extend(reports)
        self._wake()

    async def replies(self, replies: Sequence[MoReply]) -> None:
        """Keep ``replies``."""
        self.mo_replies.extend(replies)
        self._wake()

    def _wake(self) -> None:
        changed, self.changed = self.changed, anyio.Event()
        changed.set()


_OK = Kind.OK
_WORDS: dict[DeliveryStatus, str] = {s: s.value for s in DeliveryStatus}
_NOT_SENT = -3
_DROPPED = -2
_EXPIRED = -1
_PENDING = -4
_UNENCODABLE = -5
_UNBUILT: list[bytes] = []
"""A job's bodies until it is built (compared by identity)."""


class _Share:
    """One bind's part of one send: its jobs, and how many of their requests await an answer."""

    __slots__ = ("link", "open", "queue", "retries", "throttled")

    def __init__(self, link: Link, jobs: list[_Job]) -> None:
        self.link = link
        self.queue: deque[_Job] = deque(jobs)
        self.open = 0
        self.retries: list[tuple[float, _Job, int]] = []
        self.throttled = False


class _Job:
    """One message in flight: its parts' PDUs, answers and ids (the token of its requests).

    Its PDUs are built when its bind is about to send it (:meth:`encode`), so a batch starts
    going out at once and the building is spread between the answers.
    """

    __slots__ = (
        "bodies",
        "ids",
        "message_id",
        "open",
        "pool",
        "share",
        "status",
        "text",
        "to",
        "tries",
        "written",
    )

    def __init__(self, pool: BindPool, message_id: str, to: str, text: str) -> None:
        self.pool = pool
        self.message_id = message_id
        self.to = to
        self.text = text
        self.bodies: list[bytes] = _UNBUILT
        self.open = 1
        """Parts not yet accepted (tracked for receipts when it reaches 0)."""
        self.status = [_NOT_SENT]
        self.ids: list[str] = [""]
        self.written = 0
        self.tries = 0
        self.share: _Share | None = None

    def encode(self) -> list[bytes]:
        """Build the parts' PDUs (once); a text no PDU can carry leaves none (``unencodable``)."""
        try:
            bodies = self.pool.wire.submit_bodies(self.to, self.text)
        except ValueError as exc:  # (TooLong: the engine's part count should have caught it)
            log.warning("unencodable message", extra={"gateway": self.pool.name, "error": str(exc)})
            bodies = []
            self.status = [_UNENCODABLE]
        n = len(bodies)
        if n > 1:
            self.open = n
            self.status = [_NOT_SENT] * n
            self.ids = [""] * n
        self.bodies = bodies
        return bodies

    def on_answer(self, tag: int, frame: Frame, latency: float) -> None:
        share = self.share
        assert share is not None
        share.open -= 1
        pool = self.pool
        status, pid = pool.wire.submit_answer(frame)
        kind = _OK if status == 0 else pool.wire.classify(status)
        if kind is _OK:
            self.status[tag] = 0
            self.ids[tag] = pid
            self.open -= 1
            if not self.open and pid:  # every part accepted: its receipts can be matched from now
                reports = pool.correlator.track(self.message_id, self.ids, self.to)
                if reports:
                    pool._pending_reports += reports
            return
        if kind is Kind.THROTTLED:
            share.throttled = True
            share.link.stats.throttled += 1
        if len(self.bodies) > 1 and kind in (Kind.THROTTLED, Kind.RETRY) and self.tries < pool.part_retries:
            self.tries += 1
            self.status[tag] = _PENDING
            share.retries.append((pool.clock() + pool.part_retry_delay * self.tries, self, tag))
            return
        self.status[tag] = status if status > 0 else 0xFFFFFFFF

    def on_expired(self, tag: int) -> None:
        assert self.share is not None
        self.share.open -= 1
        self.status[tag] = _EXPIRED

    def on_dropped(self, tag: int) -> None:
        assert self.share is not None
        self.share.open -= 1
        self.status[tag] = _DROPPED


class BindPool:
    """Sends batches over ``links`` with ``wire``; receipts and MO to the attached sink."""

    def __init__(
        self,
        name: str,
        wire: Wire,
        links: list[Link],
        *,
        idempotent: bool = False,
        rate_per_second: float = 0.0,
        throttle_retry_after: float = 1.0,
        part_retries: int = 3,
        part_retry_delay: float = 0.2,
        reconnect_wait: float = 2.0,
        correlator: Correlator | None = None,
        reassembler: Reassembler | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not links:
            raise ValueError("a pool needs at least one bind")
        self.name = name
        self.wire = wire
        self.links = links
        self.idempotent = idempotent
        self.throttle_retry_after = throttle_retry_after
        self.part_retries = part_retries
        self.part_retry_delay = part_retry_delay
        self.reconnect_wait = reconnect_wait
        self.clock = clock
        self.wall = wall
        self.limiters: dict[int, SlidingWindowLimiter] = (
            {id(link): SlidingWindowLimiter(rate_per_second / len(links)) for link in links}
            if rate_per_second > 0
            else {}
        )
        self.correlator = correlator or Correlator(name, clock=clock)
        self.reassembler = reassembler or Reassembler()
        self.sink: Sink = Inbox()
        self._reported: anyio.Event | None = None
        self._pending_reports: list[DeliveryReport] = []
        """Reports settled outside a read step (receipts parked until their submit answer)."""
        for link in links:
            link.on_inbound = self._inbound_of(link)
        self._cursor = 0

    def attach(self, sink: Sink) -> None:
        """Send receipts and MO replies to ``sink`` from now on."""
        self.sink = sink

    # -- sending -----------------------------------------------------------------------------

    async def _usable(self) -> list[Link]:
        """The binds that are up, opening those that may be (re)opened now."""
        errors: list[GatewayError] = []
        now = self.clock()
        for link in self.links:
            if not link.up and link.retry_at <= now:
                try:
                    await link.open()
                except (GatewayUnreachable, GatewayAuthError) as exc:
                    errors.append(exc)
        up = [link for link in self.links if link.up]
        if up:
            return up
        auth = [e for e in errors if isinstance(e, GatewayAuthError)]
        if auth:
            raise auth[0]
        if errors:
            raise errors[0]
        first = min(self.links, key=lambda link: link.retry_at)
        raise GatewayUnreachable(
            f"{self.name}: no bind is up (next reconnect in {max(0.0, first.retry_at - now):.1f} s: "
            f"{first.last_error})"
        )

    async def send(self, batch: MessageBatch) -> list[SubmitResult]:
        """Submit every message of ``batch``; one result per message, in order."""
        rows = zip(batch.ids, batch.tos, batch.texts, strict=True)
        jobs = [_Job(self, mid, to, text) for mid, to, text in rows]
        if not jobs:
            return []
        links = await self._usable()
        n = len(links)
        shares: list[_Share] = []
        if n == 1:
            shares.append(_Share(links[0], jobs))
        else:
            start = self._cursor % n
            self._cursor += 1
            links = links[start:] + links[:start]
            per = -(-len(jobs) // n)
            for i, link in enumerate(links):
                chunk = jobs[i * per : (i + 1) * per]
                if chunk:
                    shares.append(_Share(link, chunk))
        if len(shares) == 1:
            await self._drive(shares[0])
        else:
            async with anyio.create_task_group() as tg:
                for share in shares:
                    tg.start_soon(self._drive, share)
        if all(job.written == 0 and job.status[0] != _UNENCODABLE for job in jobs):
            errors = [s.link.last_error for s in shares]
            raise GatewayUnreachable(f"{self.name}: nothing could be written ({'; '.join(errors)})")
        results = self._results(jobs)
        if self._pending_reports:
            await self.flush_inbound()
        return results

    async def _drive(self, share: _Share) -> None:
        link = share.link
        queue, retries = share.queue, share.retries
        limiter = self.limiters.get(id(link))
        reconnects = 0
        build = self.wire.request
        clock = self.clock
        timeout = link.settings.response_timeout
        if not await link.ready():
            reconnects += 1
            if not await self._reopen(link):
                return
        while queue or share.open or retries:
            session = link.session
            if session is None or session.state is not State.BOUND:
                if share.open:
                    share.open = 0  # (their tokens were told: dropped)
                retries.clear()
                if not queue or reconnects >= 2 or not await self._reopen(link):
                    return
                reconnects += 1
                continue
            window = session.window
            room = window.size - len(window.pending)
            submit = session.submit
            deadline = clock() + timeout  # (one read of the clock for what goes out now)
            sent = 0
            paused = 0.0
            if retries and room:
                now = clock()
                due = [r for r in retries if r[0] <= now]
                for r in due:
                    if not room:
                        break
                    retries.remove(r)
                    _, job, k = r
                    submit(build, job.bodies[k], job, k, deadline)
                    room -= 1
                    sent += 1
            while queue and room:
                job = queue[0]
                bodies = job.bodies
                if bodies is _UNBUILT:
                    job.share = share
                    bodies = job.encode()
                    if not bodies:
                        queue.popleft()
                        continue
                if limiter is not None and job.written == 0:
                    # The bind's share of the rate paces its submits (the engine's lanes hold the
                    # carrier's and the account's budgets where the provider measures them).
                    parts = min(len(bodies), int(limiter.capacity))
                    wait = limiter.earliest(clock(), parts) - clock()
                    if wait > 0:
                        paused = wait
                        break
                    now = clock()
                    limiter.done(limiter.take(now, parts), now)
                k = job.written
                n = len(bodies)
                if n == 1 and k == 0:  # (most messages: one part)
                    submit(build, bodies[0], job, 0, deadline)
                    job.status[0] = _PENDING
                    job.written = 1
                    queue.popleft()
                    room -= 1
                    sent += 1
                    continue
                status = job.status
                while k < n and room:
                    submit(build, bodies[k], job, k, deadline)
                    status[k] = _PENDING
                    k += 1
                    room -= 1
                    sent += 1
                job.written = k
                if k == n:
                    queue.popleft()
            share.open += sent
            link.stats.requests += sent
            await link.flush()
            await link.deliver()  # (receipts read in the last step: after the window was refilled)
            if not (queue or share.open or retries):
                break
            if paused:
                await self._pause(link, paused)  # then look again: the window moved meanwhile
            elif retries and not share.open and not queue:  # only parts to send again, later
                await self._pause(link, max(0.0, min(r[0] for r in retries) - clock()))
            elif queue and link.room:
                continue  # answers read by another task while this one wrote: refill first
            else:  # answers to wait for, or window room (another send may hold it all)
                if queue and queue[-1].bodies is _UNBUILT:
                    # While the answers are on their way, build what their room will take.
                    for job in islice(queue, window.size):
                        if job.bodies is _UNBUILT:
                            job.share = share
                            job.encode()
                await link.step(deliver=False)
        # (the last step's answers to the peer and its receipts: not left for the next reader)
        await link.flush()
        await link.deliver()
        if limiter is not None:
            if share.throttled:
                limiter.slow_down()
            else:
                limiter.recover()

    async def _pause(self, link: Link, seconds: float) -> None:
        """Wait ``seconds`` while keeping the bind read (answers and receipts keep flowing)."""
        with anyio.move_on_after(seconds):
            while link.up:
                await link.step()
            await anyio.sleep(seconds)

    async def _reopen(self, link: Link) -> bool:
        wait = link.retry_at - self.clock()
        if wait > self.reconnect_wait:
            return False
        if wait > 0:
            await anyio.sleep(wait)
        try:
            await link.open()
        except (GatewayUnreachable, GatewayAuthError):
            return False
        return await link.ready()

    def _results(self, jobs: list[_Job]) -> list[SubmitResult]:
        out: list[SubmitResult] = []
        classify = self.wire.classify
        ambiguous = Outcome.RETRY if self.idempotent else Outcome.UNKNOWN
        accepted = Outcome.ACCEPTED
        for job in jobs:
            if not job.open:
                out.append(SubmitResult(accepted, job.ids[0]))
            else:
                out.append(self._failed(job, classify, ambiguous))
        return out

    def _failed(self, job: _Job, classify: Callable[[int], Kind], ambiguous: Outcome) -> SubmitResult:
        status = job.status
        if status[0] == _UNENCODABLE:
            return SubmitResult(Outcome.REJECTED, code="unencodable", permanent=True)
        sent = [s for s in status if s != _NOT_SENT]
        if not sent:
            return SubmitResult(Outcome.RETRY, code="not_sent")
        lost = [s for s in status if s in (_EXPIRED, _DROPPED, _PENDING)]
        accepted = any(s == 0 for s in status)
        refused = [s for s in status if s > 0]
        if lost and not refused:
            return SubmitResult(ambiguous, code="timeout" if _EXPIRED in lost else "dropped")
        if accepted or (lost and refused) or (_NOT_SENT in status):
            code = f"partial:{refused[0]:#x}" if refused else "partial"
            return SubmitResult(Outcome.REJECTED, code=code, permanent=True)
        first = refused[0]
        kind = classify(first)
        code = f"{first:#x}"
        if kind is Kind.THROTTLED:
            return SubmitResult(Outcome.THROTTLED, code=code, retry_after=self.throttle_retry_after)
        if kind is Kind.RETRY:
            return SubmitResult(Outcome.RETRY, code=code)
        return SubmitResult(Outcome.REJECTED, code=code, permanent=kind is Kind.REJECTED)

    # -- receipts and MO ---------------------------------------------------------------------

    def _inbound_of(self, link: Link) -> Callable[[list[Frame]], Awaitable[None]]:
        async def inbound(frames: list[Frame]) -> None:
            await self._inbound(link, frames)

        return inbound

    async def _inbound(self, link: Link, frames: list[Frame]) -> None:
        wire, correlator = self.wire, self.correlator
        reports: list[DeliveryReport] = []
        replies: list[MoReply] = []
        counts = link.stats.receipts
        for frame in frames:
            try:
                item = wire.inbound(frame)
            except (ValueError, IndexError) as exc:
                log.warning("unreadable inbound PDU", extra={"gateway": self.name, "error": str(exc)})
                continue
            if item is None:
                continue
            if isinstance(item, Mo):
                text = item.text
                if item.concat is not None and item.concat.total > 1:
                    whole = self.reassembler.add(item.source, item.concat, text, self.clock())
                    if whole is None:
                        continue
                    text = whole
                replies.append(
                    MoReply(from_=item.source, to=item.dest, text=text, at=self.wall(), gateway=self.name)
                )
                continue
            if isinstance(item, Receipt):
                receipt, maybe = item, status_of(item.stat)
                if maybe is None:
                    continue  # an intermediate state (ENROUTE, ACCEPTD)
                status = maybe
            else:
                receipt, status = item
            word = _WORDS[status]
            counts[word] = counts.get(word, 0) + 1
            settled = correlator.receipt(receipt, status)
            if settled:
                reports += settled
        reports += correlator.expire()
        await self.flush_inbound(reports, replies)

    async def flush_inbound(
        self, reports: list[DeliveryReport] | None = None, replies: list[MoReply] | None = None
    ) -> None:
        """Hand what was read to the sink (and parked receipts whose wait is over)."""
        reports = reports if reports is not None else []
        if self._pending_reports:
            reports = self._pending_reports + reports
            self._pending_reports = []
        if reports:
            await self.sink.reports(reports)
            if self._reported is not None:
                self._reported.set()
                self._reported = None
        if replies:
            log.info(
                "MO read",
                extra={
                    "gateway": self.name,
                    "count": len(replies),
                    "from": [mask(r.from_) for r in replies[:20]],
                },
            )
            await self.sink.replies(replies)

    async def reported(self) -> None:
        """Wait until the next delivery reports are handed to the sink."""
        if self._reported is None:
            self._reported = anyio.Event()
        await self._reported.wait()

    # -- long-lived hosts and shutdown -------------------------------------------------------

    async def serve(self) -> None:
        """Keep every bind up and read until cancelled (receipts and MO between sends)."""
        async with anyio.create_task_group() as tg:
            for link in self.links:
                tg.start_soon(link.serve)
            while True:
                await anyio.sleep(1.0)
                await self.flush_inbound(self.correlator.expire())

    async def aclose(self) -> None:
        """Unbind every bind and hand over what is left."""
        for link in self.links:
            await link.close()
        await self.flush_inbound(self.correlator.expire(self.clock() + self.correlator.park))
