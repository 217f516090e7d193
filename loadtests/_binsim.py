"""What the SMSC (SMPP) and ISMG (CMPP) simulators share: a loopback asyncio server that answers
submits after a latency, enforces a window and a rate, sends receipts after a delay, injects MO,
drops connections and slows or loses answers — chosen by config or by magic destination numbers.

Magic destination numbers (the last three digits, as SMPPSim and smscsim do) aim a fault at one
message:

====== =====================================================================
suffix what happens to a message sent to it
====== =====================================================================
``444`` refused as throttled (SMPP ESME_RTHROTTLED 0x58, CMPP result 8)
``445`` refused with a transient error (SMPP ESME_RSYSERR 0x08, CMPP result 20: a gateway "busy")
``446`` refused permanently (SMPP ESME_RINVDSTADR 0x0B, CMPP result 13)
``666`` accepted, then an undeliverable receipt (UNDELIV)
``667`` accepted, then an expired receipt (EXPIRED)
``668`` accepted, then its receipt twice (a duplicate)
``669`` accepted, its receipt sent *before* the submit answer
``997`` the connection is closed on reading it (no answer)
``998`` answered after ``slow_ms``
``999`` never answered
====== =====================================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BinSimConfig", "BinSimServer", "Part", "ServerThread"]


@dataclass
class BinSimConfig:
    """What a simulator does; every knob is also a ``--flag`` of its command line."""

    host: str = "127.0.0.1"
    port: int = 0
    latency_ms: float = 0.0
    """Delay before each submit is answered."""
    window: int = 0
    """Answers a client may await at once on one connection (0: no limit); beyond it a submit is
    refused as throttled and counted in ``window_violations``."""
    max_rate: float = 0.0
    """Submits per second accepted per server (0: no limit); beyond it: refused as throttled."""
    receipts: bool = True
    """Send a receipt for each accepted part (when the client asked for one)."""
    receipt_delay_ms: float = 0.0
    p_undeliv: float = 0.0
    p_expired: float = 0.0
    slow_ms: float = 2000.0
    drop_after: int = 0
    """Close a connection after this many submits (0: never)."""
    system_id: str = "pigeon"
    password: str = "secret"
    keep: bool = True
    """Keep every accepted part in :attr:`BinSimServer.parts` (off for load tests)."""
    magic: bool = True
    """Act on magic destination numbers (off for load tests over real segments)."""
    seed: int = 0


@dataclass
class Part:
    """One accepted submit (one SMS part) as the simulator read it."""

    dest: str
    coding: int
    udhi: bool
    payload: bytes
    provider_id: str
    conn: int
    sar: tuple[int, int, int] | None = None
    fields: dict[str, Any] = field(default_factory=dict)


class BinSimServer:
    """The protocol-independent half of a simulator; a subclass speaks the protocol."""

    connection_class: type[asyncio.Protocol]

    def __init__(self, config: BinSimConfig) -> None:
        self.config = config
        self.port = config.port
        self.parts: list[Part] = []
        self.stats: Counter[str] = Counter()
        self.conns: dict[int, Any] = {}
        self.rng = random.Random(config.seed)
        self._ids = 0
        self._rate_t = 0
        self._rate_n = 0
        self._server: asyncio.Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.bound = asyncio.Event()

    def next_number(self) -> int:
        """A fresh message number."""
        self._ids += 1
        return self._ids

    def over_rate(self) -> bool:
        """Whether one more submit now exceeds ``max_rate``."""
        rate = self.config.max_rate
        if rate <= 0:
            return False
        now = int(time.monotonic())
        if now != self._rate_t:
            self._rate_t, self._rate_n = now, 0
        self._rate_n += 1
        return self._rate_n > rate

    def fate(self, dest: str) -> str:
        """What happens to a message for ``dest``: a magic suffix, else the configured mix."""
        suffix = dest[-3:] if self.config.magic else ""
        if suffix in ("444", "445", "446", "666", "667", "668", "669", "997", "998", "999"):
            return suffix
        if self.config.p_undeliv or self.config.p_expired:
            r = self.rng.random()
            if r < self.config.p_undeliv:
                return "666"
            if r < self.config.p_undeliv + self.config.p_expired:
                return "667"
        return ""

    async def serve(self, started: threading.Event | None = None) -> None:
        """Listen until cancelled."""
        self.loop = asyncio.get_running_loop()
        self.bound = asyncio.Event()
        self._server = await self.loop.create_server(
            lambda: self.connection_class(self),  # type: ignore[call-arg]
            self.config.host,
            self.config.port,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if started is not None:
            started.set()
        try:
            await asyncio.Event().wait()
        finally:
            self._server.close()
            for conn in list(self.conns.values()):
                conn.abort()

    def call(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` on the simulator's loop (from a test's thread)."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn, *args)

    def drop_all(self) -> None:
        """Close every connection now, unanswered submits and all (from any thread)."""
        self.call(lambda: [c.abort() for c in list(self.conns.values())])


class Scheduler:
    """Writes delayed bytes for one connection: one FIFO per delay (so each stays in due order)
    and one timer for all of them, not one per PDU."""

    def __init__(self, loop: asyncio.AbstractEventLoop, write: Any) -> None:
        self.loop = loop
        self.write = write
        self.queues: dict[float, deque[tuple[float, bytes, Any]]] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.armed_at = 0.0

    def after(self, delay: float, data: bytes, then: Any = None) -> None:
        """Write ``data`` after ``delay`` seconds (then call ``then()``)."""
        due = self.loop.time() + delay
        q = self.queues.get(delay)
        if q is None:
            q = self.queues[delay] = deque()
        q.append((due, data, then))
        if self.timer is None or due < self.armed_at:
            self._arm(due)

    def _arm(self, due: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.armed_at = due
        self.timer = self.loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self.timer = None
        now = self.loop.time() + 0.0002
        out: list[bytes] = []
        thens: list[Any] = []
        nxt = float("inf")
        for q in self.queues.values():
            while q and q[0][0] <= now:
                _, data, then = q.popleft()
                out.append(data)
                if then is not None:
                    thens.append(then)
            if q:
                nxt = min(nxt, q[0][0])
        if out:
            self.write(b"".join(out))
        for t in thens:
            t()
        if nxt != float("inf"):
            self._arm(nxt)

    def cancel(self) -> None:
        """Forget everything not yet written."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queues.clear()


class ServerThread:
    """Runs a simulator on its own asyncio loop in a thread (for tests on any backend)."""

    def __init__(self, server: BinSimServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = threading.Event()
        self._task: asyncio.Task[None] | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self.server.serve(self._started))
        try:
            with contextlib.suppress(asyncio.CancelledError):
                self._loop.run_until_complete(self._task)
        finally:
            self._loop.close()

    def __enter__(self) -> Any:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the simulator did not start")
        return self.server

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)


def add_arguments(p: Any) -> None:
    """The shared ``--flags`` of a simulator's command line."""
    p.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "::1", "localhost"])
    for name, kind in (
        ("latency_ms", float),
        ("window", int),
        ("max_rate", float),
        ("receipt_delay_ms", float),
        ("p_undeliv", float),
        ("p_expired", float),
        ("slow_ms", float),
        ("drop_after", int),
        ("system_id", str),
        ("password", str),
        ("seed", int),
    ):
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(BinSimConfig, name))
    p.add_argument("--no-receipts", action="store_true")
    p.add_argument("--no-magic", action="store_true", help="ignore magic destination numbers")


def config_from(args: Any) -> dict[str, Any]:
    """BinSimConfig keyword arguments from parsed ``args``."""
    names = (
        "host",
        "port",
        "latency_ms",
        "window",
        "max_rate",
        "receipt_delay_ms",
        "p_undeliv",
        "p_expired",
        "slow_ms",
        "drop_after",
        "system_id",
        "password",
        "seed",
    )
    kw = {n: getattr(args, n) for n in names}
    kw["receipts"] = not args.no_receipts
    kw["magic"] = not args.no_magic
    kw["keep"] = False
    return kw
