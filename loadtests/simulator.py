"""A gateway simulator: a real HTTP server on loopback speaking Pigeon's default JSON contract.

    POST /send  {"messages": [{"id", "to", "text", "carrier", "parts"[, "idempotency_key"]}, …]}
    → 200 {"results": [{"id", "status": "accepted", "provider_id"} | {"id", "status": "rejected",
          "code"} | {"id", "status": "retry", "code"}, …]}

Faults are injected by configuration: latency (fixed plus uniform jitter), whole-request 5xx,
429 with ``Retry-After``, requests that hang (timeouts), connections dropped without an answer,
per-message rejects, and per-carrier acceptance limits (messages per second, in SMS parts) that it
enforces — over-limit messages are answered ``retry`` with code ``throttled`` — and reports. Every
accepted message is logged with its arrival time, so tests can check rates over any 1 s window
and that nothing arrived twice. It can speak other providers' shapes (``--shape aliyun|tencent|
twilio``, :mod:`loadtests.sim_shapes`), and follow accepted messages with delivery reports and
MO replies posted to webhooks (``--dlr-url``, ``--mo-url``; :mod:`loadtests.sim_callbacks`).

Start it with one command (``--help`` lists the knobs)::

    python -m loadtests.simulator --port 8700 --latency-ms 5 --p-429 0.01 --limit cm=5000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from loadtests.sim_callbacks import Callbacks
from loadtests.sim_shapes import SHAPES, BadRequest, Fate

__all__ = ["SimConfig", "Simulator", "SimulatorThread", "busiest_windows"]


def busiest_windows(events: Iterable[tuple[str, float, int]], window: float = 1.0) -> dict[str, int]:
    """Carrier → the most parts within any ``window`` seconds, from (carrier, time, parts) events."""
    by_carrier: dict[str, list[tuple[float, int]]] = {}
    for carrier, t, parts in events:
        by_carrier.setdefault(carrier, []).append((t, parts))
    out: dict[str, int] = {}
    for carrier, times in by_carrier.items():
        times.sort()
        best = total = start = 0
        for t, parts in times:
            total += parts
            while times[start][0] <= t - window:
                total -= times[start][1]
                start += 1
            best = max(best, total)
        out[carrier] = best
    return out


@dataclass
class SimConfig:
    """What the simulator does to requests."""

    host: str = "127.0.0.1"
    port: int = 0
    """0: any free port (see :attr:`Simulator.port`)."""
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    p_5xx: float = 0.0
    p_429: float = 0.0
    retry_after: float = 1.0
    p_hang: float = 0.0
    """Requests that never get an answer until ``hang_s`` (a client timeout)."""
    hang_s: float = 30.0
    p_drop: float = 0.0
    """Requests whose connection is closed without an answer."""
    p_reject: float = 0.0
    """Messages rejected one by one (code ``INVALID_NUMBER``)."""
    limits: dict[str, float] = field(default_factory=dict)
    """Carrier → SMS parts accepted per second; the excess is answered ``retry``/``throttled``."""
    p_throttle: float = 0.0
    """Messages answered "too fast" at random (besides the carrier limits)."""
    shape: str = "pigeon"
    """The provider API it speaks: ``pigeon``, ``aliyun``, ``tencent`` or ``twilio`` (see
    :mod:`loadtests.sim_shapes`)."""
    dlr_url: str = ""
    """Where delivery reports are posted (``{"reports": [...]}``); empty: none."""
    dlr_secret: str = ""
    """Signs each callback (``X-Pigeon-Signature``) when set."""
    dlr_delay_ms: float = 0.0
    """Mean delay from accept to report (exponentially distributed)."""
    p_undeliv: float = 0.0
    """Share of reports that say ``failed`` (code ``UNDELIV``)."""
    dlr_batch: int = 100
    """Most reports (or replies) per POST."""
    mo_url: str = ""
    """Where MO replies are posted (``{"replies": [...]}``); empty: none."""
    p_mo: float = 0.0
    """Share of delivered recipients that reply."""
    mo_text: str = "R"
    close_after: int = 0
    """Close a connection after this many answers, without saying so (a server's keep-alive
    limit); 0 keeps connections open."""
    token: str = ""
    """If set, requests must carry ``Authorization: Bearer <token>`` (else 401)."""
    seed: int = 1


class _Msg(msgspec.Struct):
    id: str
    to: str
    text: str
    carrier: str = ""
    parts: int = 1
    idempotency_key: str = ""


class _Req(msgspec.Struct):
    messages: list[_Msg]


class Simulator:
    """The server; run :meth:`serve` in an asyncio loop (or use :class:`SimulatorThread`)."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.port = config.port
        self.log: list[tuple[float, str, str, str, int]] = []
        """Accepted messages: (arrival time, id, to, carrier, parts)."""
        self.stats: Counter[str] = Counter()
        self._rng = random.Random(config.seed)
        self._windows: dict[str, deque[tuple[float, int]]] = {}
        self._used: Counter[str] = Counter()
        self._decode = msgspec.json.Decoder(_Req).decode
        self._server: asyncio.AbstractServer | None = None
        self._provider_seq = 0
        self._keys: dict[str, str] = {}
        """Idempotency key → the provider id it was accepted under (a key seen again is not re-sent)."""
        self._shape = SHAPES[config.shape]()
        self.callbacks = Callbacks(
            stats=self.stats,
            rng=random.Random(config.seed + 1),
            dlr_url=config.dlr_url,
            dlr_secret=config.dlr_secret,
            dlr_delay_ms=config.dlr_delay_ms,
            p_undeliv=config.p_undeliv,
            dlr_batch=config.dlr_batch,
            mo_url=config.mo_url,
            p_mo=config.p_mo,
            mo_text=config.mo_text,
        )
        """Delivery reports and MO replies (off the request path)."""
        self._follow_up = self.callbacks.enabled
        self._loop: asyncio.AbstractEventLoop | None = None
        self.rejected: list[str] = []
        """Numbers of the messages it rejected, in order."""
        self.arrivals: list[tuple[float, str, int]] = []
        """Every message of every send request as it arrived — (time the request was read, carrier,
        parts) — whether it was accepted, throttled or rejected: where a provider meters a rate."""
        self._down = False

    async def serve(self, started: threading.Event | None = None) -> None:
        """Listen until cancelled."""
        self._loop = asyncio.get_running_loop()
        await self.callbacks.start()
        try:
            self._server = await asyncio.start_server(self._client, self.config.host, self.config.port)
            self.port = self._server.sockets[0].getsockname()[1]
            if started is not None:
                started.set()
            try:
                await asyncio.Event().wait()  # until cancelled (go_down/come_up swap the listener)
            finally:
                self._server.close()
        finally:
            await self.callbacks.stop()

    def inject_mo(self, from_: str, text: str) -> None:
        """Make ``from_`` send ``text`` to the service number (posted to ``mo_url``); any thread."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the simulator is not serving")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self.callbacks.inject_mo(from_, text)
        else:
            loop.call_soon_threadsafe(self.callbacks.inject_mo, from_, text)

    def go_down(self) -> None:
        """An outage, from any thread, as a server that shuts down gracefully: it stops listening
        (new connections are refused) and answers the next request on each open connection with
        ``Connection: close``, then closes it — no request that reached it goes unanswered.
        Returns once it is down."""
        self._call(self._go_down())

    def come_up(self) -> None:
        """Listen again on the same port (from any thread); returns once it does."""
        self._call(self._come_up())

    def _call(self, coro: Any) -> None:
        loop = self._loop
        if loop is None:
            raise RuntimeError("the simulator is not serving")
        asyncio.run_coroutine_threadsafe(coro, loop).result(10)

    async def _go_down(self) -> None:
        self._down = True
        if self._server is not None:
            self._server.close()
        self.stats["outages"] += 1

    async def _come_up(self) -> None:
        self._down = False
        self._server = await asyncio.start_server(self._client, self.config.host, self.port)
        await self._server.start_serving()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._down:  # accepted just before the listener closed
            writer.close()
            return
        self.stats["connections"] += 1
        answered = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:] if h)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status, extra, payload = await self._handle(method, path, headers, body)
                if status == 0:  # drop the connection without an answer
                    return
                if self._down:
                    extra += "Connection: close\r\n"
                out = (
                    f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\n{extra}\r\n"
                ).encode() + payload
                writer.write(out)
                await writer.drain()
                answered += 1
                if answered == self.config.close_after or self._down:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
                await writer.wait_closed()
        if answered and answered == self.config.close_after:
            self.stats["closed_idle"] += 1

    async def _handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, bytes]:
        arrived = time.monotonic()  # the request is read: where the provider's meter ticks
        cfg, rng = self.config, self._rng
        self.stats["requests"] += 1
        if method == "GET" and path == "/stats":
            return 200, "", json.dumps(self.summary()).encode()
        if method != "POST" or path != "/send":
            return 404, "", b'{"error": "not found"}'
        if cfg.token and headers.get("authorization") != f"Bearer {cfg.token}":
            self.stats["401"] += 1
            return 401, "", b'{"error": "bad token"}'
        if cfg.latency_ms or cfg.jitter_ms:
            await asyncio.sleep((cfg.latency_ms + rng.uniform(0, cfg.jitter_ms)) / 1000)
        roll = rng.random()
        if roll < cfg.p_drop:
            self.stats["dropped"] += 1
            return 0, "", b""
        roll -= cfg.p_drop
        if roll < cfg.p_hang:
            self.stats["hung"] += 1
            await asyncio.sleep(cfg.hang_s)
            return 0, "", b""
        roll -= cfg.p_hang
        if roll < cfg.p_5xx:
            self.stats["5xx"] += 1
            return 503, "", b'{"error": "unavailable"}'
        roll -= cfg.p_5xx
        if roll < cfg.p_429:
            self.stats["429"] += 1
            return 429, f"Retry-After: {cfg.retry_after:g}\r\n", b'{"error": "slow down"}'
        if self._shape.name != "pigeon":
            return self._shaped(body, arrived)
        try:
            req = self._decode(body)
        except msgspec.DecodeError as exc:
            self.stats["400"] += 1
            return 400, "", json.dumps({"error": str(exc)}).encode()
        self.arrivals.extend((arrived, m.carrier, m.parts) for m in req.messages)
        now = time.monotonic()
        results = []
        keys = self._keys
        for m in req.messages:
            if m.idempotency_key and m.idempotency_key in keys:  # seen: accepted before, not sent again
                self.stats["deduplicated"] += 1
                results.append({"id": m.id, "status": "accepted", "provider_id": keys[m.idempotency_key]})
            elif rng.random() < cfg.p_reject:
                self.stats["rejected"] += 1
                self.rejected.append(m.to)
                results.append({"id": m.id, "status": "rejected", "code": "INVALID_NUMBER"})
            elif self._throttle(rng) or not self._admit(m.carrier, m.parts, now):
                self.stats["throttled"] += 1
                results.append({"id": m.id, "status": "retry", "code": "throttled"})
            else:
                self._provider_seq += 1
                self.stats["accepted"] += 1
                self.log.append((now, m.id, m.to, m.carrier, m.parts))
                provider_id = f"sim-{self._provider_seq}"
                results.append({"id": m.id, "status": "accepted", "provider_id": provider_id})
                if m.idempotency_key:
                    keys[m.idempotency_key] = provider_id
                if self._follow_up:
                    self.callbacks.accepted(provider_id, m.id, m.to, now)
        return 200, "", msgspec.json.encode({"results": results})

    def _shaped(self, body: bytes, arrived: float) -> tuple[int, str, bytes]:
        """A request in another provider's shape: the same fates, that provider's words."""
        cfg, rng, shape = self.config, self._rng, self._shape
        try:
            msgs = shape.read(body)
        except BadRequest as exc:
            self.stats["400"] += 1
            return 400, "", json.dumps({"error": str(exc)}).encode()
        self.arrivals.extend((arrived, m.carrier, m.parts) for m in msgs)
        now = time.monotonic()
        statuses = []
        for m in msgs:
            if rng.random() < cfg.p_reject:
                statuses.append("rejected")
            elif self._throttle(rng) or not self._admit(m.carrier, m.parts, now):
                statuses.append("throttled")
            else:
                statuses.append("accepted")
        if shape.all_or_nothing() and any(st != "accepted" for st in statuses):
            worst = "rejected" if "rejected" in statuses else "throttled"
            statuses = [worst] * len(msgs)  # one result for the request: none of it was taken
        fates = []
        request_id = ""
        for m, st in zip(msgs, statuses, strict=True):
            self.stats[st] += 1
            if st == "rejected":
                self.rejected.append(m.to)
            if st != "accepted":
                fates.append(Fate(st))
                continue
            if not request_id or not shape.all_or_nothing():
                self._provider_seq += 1
                request_id = f"sim-{self._provider_seq}"
            self.log.append((now, m.id or m.to, m.to, m.carrier, m.parts))
            fates.append(Fate(st, request_id))
            if self._follow_up:
                self.callbacks.accepted(request_id, m.id, m.to, now)
        return shape.answer(msgs, fates, cfg.retry_after)

    def _throttle(self, rng: random.Random) -> bool:
        p = self.config.p_throttle
        return bool(p) and rng.random() < p

    def _admit(self, carrier: str, parts: int, now: float) -> bool:
        limit = self.config.limits.get(carrier)
        if limit is None:
            return True
        window = self._windows.setdefault(carrier, deque())
        while window and window[0][0] <= now - 1.0:
            self._used[carrier] -= window.popleft()[1]
        if self._used[carrier] + parts > limit:
            return False
        window.append((now, parts))
        self._used[carrier] += parts
        return True

    def max_parts_per_second(self) -> dict[str, int]:
        """For each carrier, the most SMS parts accepted within any 1 s window (from the log)."""
        return busiest_windows((carrier, t, parts) for t, _, _, carrier, parts in self.log)

    def max_arrived_parts_per_second(self, window: float = 1.0) -> dict[str, int]:
        """For each carrier, the most SMS parts that *arrived* (accepted or not) within any
        ``window`` seconds: what a provider that meters arrivals would count."""
        return busiest_windows(((carrier, t, parts) for t, carrier, parts in self.arrivals), window)

    def summary(self) -> dict[str, Any]:
        """Counters and the per-carrier peaks."""
        return {
            "stats": dict(self.stats),
            "max_parts_per_second": self.max_parts_per_second(),
            "max_arrived_parts_per_second": self.max_arrived_parts_per_second(),
            "callbacks_pending": self.callbacks.pending(),
        }


_REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    503: "Service Unavailable",
}


class SimulatorThread:
    """Runs a :class:`Simulator` on its own asyncio loop in a thread (for tests on any backend)."""

    def __init__(self, config: SimConfig) -> None:
        self.sim = Simulator(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = threading.Event()
        self._task: asyncio.Task[None] | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self.sim.serve(self._started))
        try:
            with contextlib.suppress(asyncio.CancelledError):
                self._loop.run_until_complete(self._task)
            # Let handlers still running (a hung request) see the cancellation, then close.
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            self._loop.close()

    def __enter__(self) -> Simulator:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the simulator did not start")
        return self.sim

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)


_KNOBS = (
    "latency_ms",
    "jitter_ms",
    "p_5xx",
    "p_429",
    "retry_after",
    "p_hang",
    "hang_s",
    "p_drop",
    "p_reject",
    "close_after",
    "p_throttle",
    "dlr_delay_ms",
    "p_undeliv",
    "dlr_batch",
    "p_mo",
)
"""The numeric fault-injection settings, each a ``--flag`` of the command line."""


def main(argv: list[str] | None = None) -> int:
    """Run the simulator in the foreground."""
    p = argparse.ArgumentParser(description="Pigeon gateway simulator (loopback only)")
    p.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "::1", "localhost"])
    p.add_argument("--port", type=int, default=8700)
    for name in _KNOBS:
        p.add_argument(
            f"--{name.replace('_', '-')}",
            type=type(getattr(SimConfig, name)),
            default=getattr(SimConfig, name),
        )
    p.add_argument("--limit", action="append", default=[], metavar="CARRIER=PARTS_PER_S")
    p.add_argument("--token", default="")
    p.add_argument("--dlr-url", default="", help="post delivery reports here (loopback)")
    p.add_argument("--dlr-secret", default="", help="sign callbacks with this HMAC key")
    p.add_argument("--mo-url", default="", help="post MO replies here (loopback)")
    p.add_argument("--mo-text", default="R")
    p.add_argument("--shape", default="pigeon", choices=sorted(SHAPES), help="provider API to speak")
    args = p.parse_args(argv)
    cfg = SimConfig(
        host=args.host,
        port=args.port,
        token=args.token,
        shape=args.shape,
        dlr_url=args.dlr_url,
        dlr_secret=args.dlr_secret,
        mo_url=args.mo_url,
        mo_text=args.mo_text,
        limits={k: float(v) for k, v in (x.split("=", 1) for x in args.limit)},
        **{name: getattr(args, name) for name in _KNOBS},
    )
    sim = Simulator(cfg)
    print(f"simulator on http://{cfg.host}:{cfg.port}/send (GET /stats for counters)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(sim.serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
