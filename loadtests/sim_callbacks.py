"""The simulator's delivery-report and MO webhooks: queued off the request path, batched, signed, retried.

Webhook contract (CONTRACTS.md): delivery reports go as ``POST <dlr_url>`` with
``{"reports": [{"provider_id", "id", "to", "status", "code", "done_at"}, …]}``; MO replies as
``POST <mo_url>`` with ``{"replies": [{"from", "to", "text", "at"}, …]}``. With a secret, each
POST carries ``X-Pigeon-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}." + body)>``.

Accepting a message only pushes it on a heap (due at accept time plus an exponential delay with
mean ``dlr_delay_ms``); one background task pops what is due, up to ``dlr_batch`` per POST, and
hands each POST to a small pool of senders. A failed POST (connection error, non-2xx) is tried
again with backoff a few times, then counted failed. Nothing here ever waits on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import hmac
import itertools
import random
import time
from collections import deque
from typing import Any

import httpx
import msgspec

__all__ = ["MO_SERVICE_NUMBER", "Callbacks", "sign"]

MO_SERVICE_NUMBER = "106900001234"
"""The service number recipients reply to (the ``to`` of an MO reply)."""

_encode = msgspec.json.Encoder().encode


def sign(secret: str, body: bytes, t: int | None = None) -> str:
    """The ``X-Pigeon-Signature`` value for ``body``."""
    t = int(time.time()) if t is None else t
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


class Callbacks:
    """Delivery reports and MO replies of one simulator (create, :meth:`start` in its loop)."""

    def __init__(
        self,
        *,
        stats: Any,
        rng: random.Random,
        dlr_url: str = "",
        dlr_secret: str = "",
        dlr_delay_ms: float = 0.0,
        p_undeliv: float = 0.0,
        dlr_batch: int = 100,
        mo_url: str = "",
        p_mo: float = 0.0,
        mo_text: str = "R",
        attempts: int = 4,
        backoff: float = 0.1,
        senders: int = 4,
        timeout: float = 5.0,
    ) -> None:
        self.stats = stats
        self._rng = rng
        self.dlr_url, self.mo_url, self.secret = dlr_url, mo_url, dlr_secret
        self.delay = dlr_delay_ms / 1000
        self.p_undeliv, self.p_mo, self.mo_text = p_undeliv, p_mo, mo_text
        self.batch = max(1, dlr_batch)
        self.attempts, self.backoff, self.timeout = attempts, backoff, timeout
        self._due: list[tuple[float, int, str, str, str]] = []  # (due, seq, provider_id, id, to)
        self._seq = itertools.count()
        self._replies: deque[dict[str, Any]] = deque()
        self._posts: asyncio.Queue[tuple[str, str, bytes, int]] | None = None
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._senders = senders
        self._client: httpx.AsyncClient | None = None

    @property
    def enabled(self) -> bool:
        """Whether accepted messages are followed up at all (reports, or replies to delivered ones)."""
        return bool(self.dlr_url) or (bool(self.mo_url) and self.p_mo > 0)

    def accepted(self, provider_id: str, message_id: str, to: str, now: float) -> None:
        """A message was accepted: its report falls due after a random delay (no I/O here)."""
        delay = self._rng.expovariate(1 / self.delay) if self.delay > 0 else 0.0
        heapq.heappush(self._due, (now + delay, next(self._seq), provider_id, message_id, to))

    def inject_mo(self, from_: str, text: str) -> None:
        """Queue an MO reply from ``from_`` (call in the simulator's loop)."""
        self._replies.append({"from": from_, "to": MO_SERVICE_NUMBER, "text": text, "at": time.time()})
        if self._wake is not None:
            self._wake.set()

    def pending(self) -> int:
        """Reports and replies not yet posted."""
        return len(self._due) + len(self._replies) + (self._posts.qsize() if self._posts else 0)

    async def start(self) -> None:
        """Start the flusher and the senders (in the simulator's loop)."""
        self._posts = asyncio.Queue(maxsize=self._senders * 4)
        self._wake = asyncio.Event()
        self._client = httpx.AsyncClient(timeout=self.timeout)
        self._tasks = [asyncio.create_task(self._flusher())]
        self._tasks += [asyncio.create_task(self._sender()) for _ in range(self._senders)]

    async def stop(self) -> None:
        """Cancel the tasks and close the client (what is pending is dropped)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._client is not None:
            await self._client.aclose()

    async def _flusher(self) -> None:
        assert self._posts is not None
        assert self._wake is not None
        while True:
            now = time.monotonic()
            due = self._due
            reports: list[dict[str, Any]] = []
            while due and due[0][0] <= now and len(reports) < self.batch:
                _, _, provider_id, message_id, to = heapq.heappop(due)
                failed = self._rng.random() < self.p_undeliv
                if not failed and self.mo_url and self._rng.random() < self.p_mo:
                    self._replies.append(
                        {"from": to, "to": MO_SERVICE_NUMBER, "text": self.mo_text, "at": time.time()}
                    )
                reports.append(
                    {
                        "provider_id": provider_id,
                        "id": message_id,
                        "to": to,
                        "status": "failed" if failed else "delivered",
                        "code": "UNDELIV" if failed else "DELIVRD",
                        "done_at": time.time(),
                    }
                )
            if reports and self.dlr_url:
                await self._posts.put(("dlr", self.dlr_url, _encode({"reports": reports}), len(reports)))
            while self._replies and self.mo_url:
                replies = [self._replies.popleft() for _ in range(min(self.batch, len(self._replies)))]
                await self._posts.put(("mo", self.mo_url, _encode({"replies": replies}), len(replies)))
            if due and due[0][0] <= time.monotonic():
                continue  # more is due already: next POST
            wait = min(0.05, max(0.0, due[0][0] - time.monotonic())) if due else 0.05
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _sender(self) -> None:
        assert self._posts is not None
        assert self._client is not None
        while True:
            kind, url, body, n = await self._posts.get()
            for attempt in range(self.attempts):
                headers = {"Content-Type": "application/json"}
                if self.secret:
                    headers["X-Pigeon-Signature"] = sign(self.secret, body)
                try:
                    r = await self._client.post(url, content=body, headers=headers, timeout=self.timeout)
                    ok = 200 <= r.status_code < 300
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self.stats[f"{kind}_posts_sent"] += 1
                    self.stats[f"{kind}_sent"] += n
                    break
                if attempt + 1 < self.attempts:
                    self.stats[f"{kind}_posts_retried"] += 1
                    await asyncio.sleep(self.backoff * 2**attempt * (0.5 + self._rng.random()))
            else:
                self.stats[f"{kind}_posts_failed"] += 1
                self.stats[f"{kind}_failed"] += n
