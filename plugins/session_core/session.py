"""The sans-IO connection state machine of a binary SMS protocol: bind, window, keepalive, unbind.

A :class:`Session` never touches a socket or a clock. The caller feeds it the bytes it read and
the time (:meth:`Session.receive`, :meth:`Session.tick`), asks it to send requests
(:meth:`Session.request`), takes the bytes to write (:meth:`Session.output`) and acts on the
events it returns. What differs between SMPP, CMPP, SGIP and SMGP lives in a :class:`Dialect`.

States::

    idle ──start()──▶ binding ──bind answered 0──▶ bound ──unbind()──▶ unbinding ──▶ closed
                         │ refused / no answer                │ keepalive failed N times,
                         ▼                                    ▼ peer unbinds, lost()
                       closed                               closed

Requests in flight are bounded by the window; each has a response deadline. Keepalive: when
nothing was received for ``keepalive_interval`` seconds a keepalive request goes out (outside the
window); unanswered after ``keepalive_timeout`` it is sent again, and after ``keepalive_tries``
unanswered tries the link is declared dead. Anything received resets the count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

from plugins.session_core.framing import Framer
from plugins.session_core.window import SequenceNumbers, Window

__all__ = [
    "Answered",
    "BindFailed",
    "Bound",
    "Closed",
    "Dialect",
    "Dropped",
    "Event",
    "Expired",
    "Frame",
    "Received",
    "Reply",
    "Session",
    "SessionSettings",
    "State",
]


class Frame(NamedTuple):
    """One PDU as the session core sees it: its command, sequence number, header status and bytes."""

    command: int
    seq: int
    status: int
    """The header's status (SMPP ``command_status``); 0 for protocols that keep it in the body."""
    pdu: bytes
    """The whole PDU, header included."""


class Reply(StrEnum):
    """What a peer's request is, as far as the session is concerned (see :meth:`Dialect.reply`)."""

    INBOUND = "inbound"
    """Traffic for the application (deliver_sm, CMPP_DELIVER): answered, then passed up."""
    KEEPALIVE = "keepalive"
    """The peer's keepalive: answered, nothing more."""
    UNBIND = "unbind"
    """The peer closes the session: answered, then the session is closed."""
    UNKNOWN = "unknown"
    """A command this side does not serve: answered with the protocol's refusal."""


class Dialect(Protocol):
    """What one protocol tells the session core. Implementations are plain objects, no I/O."""

    name: str
    seq_first: int
    seq_last: int
    min_pdu: int
    max_pdu: int

    def frame(self, pdu: bytes) -> Frame:
        """Read the header of one whole PDU."""

    def is_response(self, command: int) -> bool:
        """Whether ``command`` answers a request (SMPP/CMPP: its top bit is set)."""

    def bind(self, seq: int, wall: float) -> bytes:
        """The bind / connect / login request (``wall``: epoch seconds, for timestamps)."""

    def bind_status(self, frame: Frame) -> int:
        """0 if the bind answer grants the session, else the peer's status code."""

    def keepalive(self, seq: int) -> bytes:
        """A keepalive request (enquire_link, CMPP_ACTIVE_TEST)."""

    def unbind(self, seq: int) -> bytes:
        """The request that ends the session (unbind, CMPP_TERMINATE)."""

    def reply(self, frame: Frame) -> tuple[Reply, bytes]:
        """Classify a request from the peer and build its answer."""

    def auth_refusal(self, status: int) -> bool:
        """Whether a bind refused with ``status`` means the credentials or account are wrong."""


class State(StrEnum):
    """Where a session is."""

    IDLE = "idle"
    BINDING = "binding"
    BOUND = "bound"
    UNBINDING = "unbinding"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """Timers and sizes of one session; every duration in seconds."""

    window: int = 10
    response_timeout: float = 30.0
    bind_timeout: float = 10.0
    keepalive_interval: float = 30.0
    keepalive_timeout: float = 10.0
    keepalive_tries: int = 3
    unbind_timeout: float = 2.0


class Bound(NamedTuple):
    """The peer granted the bind."""


class BindFailed(NamedTuple):
    """The peer refused the bind (``status``) or did not answer in time (``status`` -1)."""

    status: int


class Answered(NamedTuple):
    """The response to a request sent with :meth:`Session.request`."""

    token: Any
    tag: int
    frame: Frame
    latency: float
    """Seconds from the request being queued to its answer being read."""


class Expired(NamedTuple):
    """No response came within the response timeout (the request may or may not have been taken)."""

    token: Any
    tag: int


class Dropped(NamedTuple):
    """The connection went away with the request unanswered (it may or may not have been taken)."""

    token: Any
    tag: int


class Received(NamedTuple):
    """A request from the peer for the application (already answered)."""

    frame: Frame


class Closed(NamedTuple):
    """The session is over: ``reason`` is ``unbound``, ``peer_unbind``, ``keepalive`` or ``lost``."""

    reason: str


Event = Bound | BindFailed | Answered | Expired | Dropped | Received | Closed

_new = tuple.__new__
"""Builds a NamedTuple from a tuple of its fields (half the cost of calling the class)."""

_BIND = object()
_KEEPALIVE = object()
_UNBIND = object()


class Session:
    """One connection's protocol state, driven by bytes and times from its caller."""

    def __init__(self, dialect: Dialect, settings: SessionSettings | None = None) -> None:
        self.dialect = dialect
        self.settings = s = settings or SessionSettings()
        self.state = State.IDLE
        self.window = Window(s.window)
        self.seqs = SequenceNumbers(dialect.seq_first, dialect.seq_last)
        self._framer = Framer(dialect.min_pdu, dialect.max_pdu)
        self._out: list[bytes] = []
        self._control: dict[int, tuple[float, object]] = {}
        """Bind, keepalive and unbind requests in flight (outside the window): seq → (deadline, kind)."""
        self._last_rx = 0.0
        self._tries = 0
        """Keepalives sent since anything was last received."""

    # -- what to write -----------------------------------------------------------------------

    def output(self) -> bytes:
        """Everything to write now, in order (empty when nothing is due)."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    @property
    def has_output(self) -> bool:
        """Whether :meth:`output` would return bytes."""
        return bool(self._out)

    # -- driving -----------------------------------------------------------------------------

    def start(self, now: float, wall: float) -> None:
        """Queue the bind request."""
        if self.state is not State.IDLE:
            raise RuntimeError(f"start() in state {self.state}")
        seq = self.seqs.next()
        self._out.append(self.dialect.bind(seq, wall))
        self._control[seq] = (now + self.settings.bind_timeout, _BIND)
        self.state = State.BINDING
        self._last_rx = now

    def request(self, seq: int, pdu: bytes, token: Any, tag: int, now: float) -> None:
        """Queue ``pdu``, a request built with sequence number ``seq`` (from :meth:`next_seq`).

        Its answer comes back as :class:`Answered` carrying ``token`` and ``tag``. Raises if the
        session is not bound or the window is full.
        """
        if self.state is not State.BOUND:
            raise RuntimeError(f"request() in state {self.state}")
        window = self.window
        if len(window) >= window.size:
            raise RuntimeError("the window is full")
        window.add(seq, now + self.settings.response_timeout, token, tag)
        self._out.append(pdu)

    def next_seq(self) -> int:
        """A fresh sequence number for the next request."""
        return self.seqs.next()

    def submit(
        self, build: Callable[[int, bytes], bytes], body: bytes, token: Any, tag: int, deadline: float
    ) -> None:
        """:meth:`request` for a sender's loop: the next sequence number taken, the request built
        as ``build(seq, body)`` and queued with its response ``deadline``, in one call.

        The caller checked that the session is bound and the window has room (see
        :attr:`Window.room`); its answer comes back as :class:`Answered` like any request's.
        """
        seqs = self.seqs
        seq = seqs._next
        seqs._next = seq + 1 if seq < seqs.last else seqs.first
        pending = self.window.pending
        if seq in pending:
            raise ValueError(f"sequence number {seq} is already in flight")
        pending[seq] = (deadline, token, tag)
        self._out.append(build(seq, body))

    def unbind(self, now: float) -> None:
        """Queue the unbind request; requests in flight may still be answered."""
        if self.state is State.BOUND:
            seq = self.seqs.next()
            self._out.append(self.dialect.unbind(seq))
            self._control[seq] = (now + self.settings.unbind_timeout, _UNBIND)
            self.state = State.UNBINDING
        elif self.state in (State.IDLE, State.BINDING):
            self.state = State.CLOSED

    def receive(self, data: bytes, now: float) -> list[Event]:
        """Feed bytes read from the connection; the events they cause (answers queued for writing)."""
        events: list[Event] = []
        if not data:
            return events
        self._last_rx = now
        self._tries = 0
        dialect = self.dialect
        window = self.window
        base = now + self.settings.response_timeout  # an answer's latency is base - its deadline
        pop = window.pending.pop
        read, is_response, append = dialect.frame, dialect.is_response, events.append
        for pdu in self._framer.feed(data):
            frame = read(pdu)
            if is_response(frame.command):
                hit = pop(frame.seq, None)
                if hit is not None:
                    append(_new(Answered, (hit[1], hit[2], frame, base - hit[0])))
                    continue
                control = self._control.pop(frame.seq, None)
                if control is None:
                    continue  # a late answer to a request already given up: ignored
                kind = control[1]
                if kind is _BIND:
                    status = dialect.bind_status(frame)
                    if status == 0 and self.state is State.BINDING:
                        self.state = State.BOUND
                        events.append(Bound())
                    else:
                        self.state = State.CLOSED
                        events.append(BindFailed(status))
                elif kind is _UNBIND:
                    events.extend(self._close("unbound"))
                continue
            kind_r, answer = dialect.reply(frame)
            if answer:
                self._out.append(answer)
            if kind_r is Reply.INBOUND:
                events.append(Received(frame))
            elif kind_r is Reply.UNBIND:
                events.extend(self._close("peer_unbind"))
        return events

    def tick(self, now: float) -> list[Event]:
        """Act on the time: expired responses, bind/unbind timeouts, keepalive due or failed."""
        events: list[Event] = []
        window = self.window
        if window and window.next_deadline() <= now:
            events.extend(Expired(token, tag) for _, token, tag in window.expired(now))
        s = self.settings
        keepalive_waiting = False
        for seq, (deadline, kind) in list(self._control.items()):
            if kind is _KEEPALIVE:
                keepalive_waiting = True
            if deadline > now:
                continue
            del self._control[seq]
            if kind is _BIND:
                self.state = State.CLOSED
                events.append(BindFailed(-1))
            elif kind is _UNBIND:
                events.extend(self._close("unbound"))
            else:  # a keepalive went unanswered
                keepalive_waiting = False
                if self._tries >= s.keepalive_tries:
                    events.extend(self._close("keepalive"))
                else:
                    self._send_keepalive(now)
                    keepalive_waiting = True
        if (
            self.state is State.BOUND
            and not keepalive_waiting
            and now - self._last_rx >= s.keepalive_interval
        ):
            self._send_keepalive(now)
        return events

    def _send_keepalive(self, now: float) -> None:
        seq = self.seqs.next()
        self._out.append(self.dialect.keepalive(seq))
        self._control[seq] = (now + self.settings.keepalive_timeout, _KEEPALIVE)
        self._tries += 1

    def probe(self, now: float) -> None:
        """Send a keepalive now (to check a link that has been idle before using it)."""
        if self.state is State.BOUND and not any(k is _KEEPALIVE for _, k in self._control.values()):
            self._tries = 0
            self._send_keepalive(now)

    @property
    def probing(self) -> bool:
        """Whether a keepalive is waiting for its answer."""
        return any(k is _KEEPALIVE for _, k in self._control.values())

    def lost(self) -> list[Event]:
        """The connection is gone: every request in flight is dropped and the session closed."""
        if self.state is State.CLOSED:
            return []
        return self._close("lost")

    def _close(self, reason: str) -> list[Event]:
        events: list[Event] = [Dropped(token, tag) for _, token, tag in self.window.drain()]
        self._control.clear()
        if reason == "lost":
            self._out.clear()
        self.state = State.CLOSED
        events.append(Closed(reason))
        return events

    def deadline(self) -> float:
        """When :meth:`tick` next has something to do (``inf``: only on input)."""
        t = self.window.next_deadline()
        waiting = False
        for deadline, kind in self._control.values():
            t = min(t, deadline)
            waiting = waiting or kind is _KEEPALIVE
        if self.state is State.BOUND and not waiting:
            t = min(t, self._last_rx + self.settings.keepalive_interval)
        return t

    @property
    def last_received(self) -> float:
        """When bytes last came in (``now`` of the last :meth:`receive` with data)."""
        return self._last_rx
