"""One bind over an anyio byte stream, driven by the tasks that use it: no background task needed.

A :class:`Link` owns a connection and its :class:`~plugins.session_core.session.Session`. There is
no reader task: whichever task is waiting for progress (an answer, window room) reads the socket
and dispatches what it finds to everyone; the others wait for it to finish a read step
(:meth:`Link.step`). A single sender therefore writes, reads and settles its own answers without
a task switch; a host that wants receipts between sends runs :meth:`Link.serve`, which simply
keeps reading. Works on both anyio backends.

Faults end as the gateway contract says: no connection or no bind answer raises
:class:`~pigeon.GatewayUnreachable` (nothing was submitted), a refused bind
:class:`~pigeon.GatewayAuthError` (or ``GatewayUnreachable`` for a busy peer); requests
in flight when the connection goes are reported to their tokens as dropped (ambiguous).
"""

from __future__ import annotations

import random
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.lowlevel

from pigeon import GatewayAuthError, GatewayUnreachable
from plugins.session_core.backoff import Backoff
from plugins.session_core.framing import FramingError
from plugins.session_core.session import (
    Answered,
    BindFailed,
    Bound,
    Closed,
    Dialect,
    Dropped,
    Event,
    Expired,
    Frame,
    Received,
    Session,
    SessionSettings,
    State,
)
from plugins.session_core.stats import LinkStats

__all__ = ["Connect", "Link", "Waiter", "tcp_connect"]

Connect = Callable[[], Awaitable[anyio.abc.ByteStream]]
"""Opens the byte stream of one connection (TCP, TLS, anything anyio can stream over)."""

_GONE = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
    FramingError,
)


class Waiter(Protocol):
    """What a request's token is told: its answer, or that none will come."""

    def on_answer(self, tag: int, frame: Frame, latency: float) -> None:
        """The peer answered request ``tag`` of this token."""

    def on_expired(self, tag: int) -> None:
        """No answer within the response timeout."""

    def on_dropped(self, tag: int) -> None:
        """The connection went before the answer."""


def tcp_connect(
    host: str, port: int, *, timeout: float = 5.0, tls: ssl.SSLContext | None = None, server_name: str = ""
) -> Connect:
    """A :data:`Connect` for TCP (``tls``: wrap it in TLS with that context)."""

    async def connect() -> anyio.abc.ByteStream:
        with anyio.fail_after(timeout):
            if tls is not None:
                return await anyio.connect_tcp(
                    host, port, tls=True, ssl_context=tls, tls_hostname=server_name or host
                )
            return await anyio.connect_tcp(host, port)

    return connect


class Link:
    """One bind of a gateway: connect, bind, pipeline requests in its window, keepalive, unbind.

    :param dialect: builds the protocol's :class:`Dialect` for each new session.
    :param on_inbound: awaited with the peer's requests (deliver_sm…) read in one step, after
        their answers were written.
    :param idle_probe: before a sender uses a link that received nothing for this long, a
        keepalive checks it is still alive (a dead link is reopened instead of swallowing submits).
    """

    def __init__(
        self,
        dialect: Callable[[], Dialect],
        connect: Connect,
        settings: SessionSettings,
        *,
        name: str,
        on_inbound: Callable[[list[Frame]], Awaitable[None]] | None = None,
        idle_probe: float = 30.0,
        backoff: Backoff | None = None,
        write_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        stats: LinkStats | None = None,
    ) -> None:
        self.name = name
        self._dialect = dialect
        self._connect = connect
        self.settings = settings
        self.on_inbound = on_inbound
        self.idle_probe = idle_probe
        self.backoff = backoff or Backoff()
        self.write_timeout = write_timeout
        self.clock = clock
        self.wall = wall
        self.stats = stats or LinkStats()
        self.session: Session | None = None
        self._stream: anyio.abc.ByteStream | None = None
        self._reading = False
        self._changed = anyio.Event()
        self._wlock = anyio.Lock()
        self._opening = anyio.Lock()
        self._failures = 0
        self._retry_at = 0.0
        self._rng = random.Random()
        self._read_scope: anyio.CancelScope | None = None
        self._inbox: list[Frame] = []
        self._delivering = False
        """The peer's requests read (and answered) but not yet handed to ``on_inbound``."""
        self.last_error = ""

    # -- state -------------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        """Bound and usable for requests."""
        s = self.session
        return s is not None and s.state is State.BOUND

    def is_up(self) -> bool:
        """:attr:`up`, as a call (it changes across awaits)."""
        s = self.session
        return s is not None and s.state is State.BOUND

    @property
    def room(self) -> int:
        """Requests that may be sent now (0 when not bound)."""
        s = self.session
        return s.window.room if s is not None and s.state is State.BOUND else 0

    @property
    def in_flight(self) -> int:
        """Requests waiting for their answer."""
        s = self.session
        return len(s.window) if s is not None else 0

    @property
    def retry_at(self) -> float:
        """When a reconnect may be tried (monotonic seconds; past while it may be tried now)."""
        return self._retry_at

    # -- opening -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and bind (nothing if already bound).

        Raises ``GatewayUnreachable`` (no connection, no bind answer) or ``GatewayAuthError``.
        """
        async with self._opening:
            if self.up:
                return
            now = self.clock()
            if now < self._retry_at:
                raise GatewayUnreachable(
                    f"{self.name}: reconnecting in {self._retry_at - now:.1f} s ({self.last_error})"
                )
            try:
                stream = await self._connect()
            except (OSError, TimeoutError, anyio.BrokenResourceError, ssl.SSLError) as exc:
                self._failed(f"connect: {type(exc).__name__}: {exc}")
                raise GatewayUnreachable(f"{self.name}: cannot connect: {exc}") from None
            session = Session(self._dialect(), self.settings)
            session.start(self.clock(), self.wall())
            try:
                status = await self._bind(stream, session)
            except _GONE as exc:
                status = -2
                self.last_error = f"{type(exc).__name__}"
            if status != 0:
                with anyio.CancelScope(shield=True):
                    await _aclose(stream)
                if status > 0 and session.dialect.auth_refusal(status):
                    self._failed(f"bind refused: status {status:#x}")
                    self.stats.bind_failures += 1
                    raise GatewayAuthError(f"{self.name}: bind refused by the peer (status {status:#x})")
                why = "no bind answer" if status < 0 else f"bind refused (status {status:#x})"
                self._failed(why)
                self.stats.bind_failures += 1
                raise GatewayUnreachable(f"{self.name}: {why}")
            self._stream = stream
            self.session = session
            if self.stats.binds:
                self.stats.reconnects += 1
            self.stats.binds += 1
            self._failures = 0
            self._retry_at = 0.0
            self.last_error = ""

    async def _bind(self, stream: anyio.abc.ByteStream, session: Session) -> int:
        await stream.send(session.output())
        while True:
            timeout = session.deadline() - self.clock()
            data = b""
            if timeout > 0:
                with anyio.move_on_after(timeout):
                    data = await stream.receive(65536)
            events = session.receive(data, self.clock()) if data else session.tick(self.clock())
            if session.has_output:
                await stream.send(session.output())
            for ev in events:
                if isinstance(ev, Bound):
                    return 0
                if isinstance(ev, BindFailed):
                    return ev.status if ev.status != 0 else -1

    def _failed(self, why: str) -> None:
        self._failures += 1
        self.last_error = why
        self._retry_at = self.clock() + self.backoff.delay(self._failures + 1, self._rng)

    # -- sending -----------------------------------------------------------------------------

    def next_seq(self) -> int:
        """The sequence number for the next request (build its PDU with it)."""
        assert self.session is not None
        return self.session.next_seq()

    def request(self, seq: int, pdu: bytes, token: Waiter, tag: int = 0) -> None:
        """Queue a request (the caller checked :attr:`room`); :meth:`flush` writes it."""
        assert self.session is not None
        self.session.request(seq, pdu, token, tag, self.clock())
        self.stats.requests += 1

    async def flush(self) -> None:
        """Write whatever is queued."""
        s = self.session
        if s is not None and s.has_output:
            scope = self._read_scope
            if scope is not None:  # a reader sleeps until a later deadline: wake it for these answers'
                wake = anyio.current_time() + self.settings.response_timeout
                if wake < scope.deadline:
                    scope.deadline = wake
            await self._write(s.output())

    async def _write(self, data: bytes) -> None:
        stream = self._stream
        if stream is None:
            return
        async with self._wlock:
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(self.write_timeout) as scope:
                    try:
                        await stream.send(data)
                    except _GONE as exc:
                        self.last_error = f"write: {type(exc).__name__}"
                        await self._lost()
                        return
                if scope.cancelled_caught:
                    self.last_error = "write timed out"
                    await self._lost()

    async def ready(self) -> bool:
        """Check a link that has been idle with a keepalive first; whether it is (still) up."""
        s = self.session
        if s is None or s.state is not State.BOUND:
            return False
        if self.clock() - s.last_received >= self.idle_probe and not s.window:
            s.probe(self.clock())
            await self.flush()
            while self.up and self.session is s and s.probing:
                await self.step()
        return self.up

    # -- reading -----------------------------------------------------------------------------

    async def step(self, *, deliver: bool = True) -> None:
        """Make progress once: read (or act on timers) if no other task is reading, else wait for it.

        The answers to the peer's requests read in the step are written, and the requests
        (receipts, MO) handed to ``on_inbound``, after the tasks waiting for the step had their
        turn: they refill the window first, and their write carries the answers too. With
        ``deliver=False`` the caller does both: :meth:`flush` (soon) and :meth:`deliver`.
        """
        if self._reading:
            await self._changed.wait()
            return
        if self.session is None or self.session.state is State.CLOSED:
            return
        self._reading = True
        try:
            await self._read_once()
        finally:
            self._reading = False
            changed, self._changed = self._changed, anyio.Event()
            changed.set()
        if deliver:
            await anyio.lowlevel.cancel_shielded_checkpoint()  # (the woken senders refill first)
            with anyio.CancelScope(shield=True):
                await self.flush()
            if self._inbox:
                await self.deliver()

    async def deliver(self) -> None:
        """Hand the peer's requests read so far to ``on_inbound`` (they were answered already, so
        this is never cancelled halfway)."""
        if self._delivering:
            return  # (another task is at it, and takes what comes meanwhile too: in order)
        self._delivering = True
        try:
            while self._inbox:
                frames, self._inbox = self._inbox, []
                if self.on_inbound is not None:
                    with anyio.CancelScope(shield=True):
                        await self.on_inbound(frames)
        finally:
            self._delivering = False

    @property
    def inbound_waiting(self) -> int:
        """The peer's requests read and answered, not yet handed to ``on_inbound``."""
        return len(self._inbox)

    async def _read_once(self) -> None:
        session, stream = self.session, self._stream
        assert session is not None
        assert stream is not None
        data = b""
        timeout = session.deadline() - self.clock()
        if timeout > 0:
            try:
                with anyio.move_on_after(timeout) as self._read_scope:
                    data = await stream.receive(262144)
            except _GONE as exc:
                self.last_error = f"read: {type(exc).__name__}"
                await self._lost()
                return
            finally:
                self._read_scope = None
        else:
            await anyio.lowlevel.checkpoint()  # (timers only: still let the others run)
        now = self.clock()
        try:
            events = session.receive(data, now) if data else []
        except FramingError as exc:
            self.last_error = f"protocol: {exc}"
            await self._lost()
            return
        events += session.tick(now)
        self._inbox += self._dispatch(events)
        if session.state is State.CLOSED:
            with anyio.CancelScope(shield=True):  # (the last answers: unbind_resp)
                if session.has_output:
                    await self._write(session.output())
                await self._teardown()
        # Otherwise the answers to what was read (deliver_sm_resp, enquire_link_resp) stay queued
        # and go out with the next write: the sender's refill, or the flush that ends step().

    def _dispatch(self, events: list[Event]) -> list[Frame]:
        inbound: list[Frame] = []
        stats = self.stats
        for ev in events:
            if type(ev) is Answered:
                stats.answered(ev.latency)
                ev.token.on_answer(ev.tag, ev.frame, ev.latency)
            elif type(ev) is Received:
                inbound.append(ev.frame)
            elif type(ev) is Expired:
                stats.expired += 1
                ev.token.on_expired(ev.tag)
            elif type(ev) is Dropped:
                stats.dropped += 1
                ev.token.on_dropped(ev.tag)
            elif type(ev) is Closed:
                stats.closes[ev.reason] = stats.closes.get(ev.reason, 0) + 1
                self.last_error = self.last_error or ev.reason
        return inbound

    async def _lost(self) -> None:
        s = self.session
        if s is not None:
            self._dispatch(s.lost())
        await self._teardown()

    async def _teardown(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            self._failed(self.last_error or "closed")
            with anyio.CancelScope(shield=True):
                await _aclose(stream)

    # -- long-lived hosts and shutdown -------------------------------------------------------

    async def serve(self, *, on_error: Callable[[Exception], None] | None = None) -> None:
        """Keep the link bound and read it until cancelled (receipts and MO between sends)."""
        while True:
            if not self.up:
                try:
                    await self.open()
                except (GatewayUnreachable, GatewayAuthError) as exc:
                    if on_error is not None:
                        on_error(exc)
                    await anyio.sleep(max(0.05, self._retry_at - self.clock()))
                    continue
            if self._inbox:  # (left by a sender that stopped reading)
                await self.deliver()
            await self.step()

    async def close(self, wait: float | None = None) -> None:
        """Unbind politely (waiting up to the unbind timeout for the answer), then close."""
        s = self.session
        if s is None or self._stream is None:
            await self.deliver()  # (receipts read before the connection went)
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(wait or s.settings.unbind_timeout + 1):
            if s.state is State.BOUND:
                s.unbind(self.clock())
                await self.flush()
                while self._stream is not None and _state(s) is State.UNBINDING:
                    await self.step()
        self.last_error = "closed by us"
        stream, self._stream = self._stream, None
        if s.state is not State.CLOSED:
            self._dispatch(s.lost())
        if stream is not None:
            with anyio.CancelScope(shield=True):
                await _aclose(stream)
        await self.deliver()


def _state(session: Session) -> State:
    return session.state  # (read afresh: it changes across awaits)


async def _aclose(stream: Any) -> None:
    try:
        with anyio.move_on_after(1):
            await stream.aclose()
    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass
