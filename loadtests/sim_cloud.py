"""The HTTP plumbing the cloud SMS simulators share: a loopback HTTP/1.1 server, a thread runner,
callback posting with retries, and a per-second rate window.

:mod:`loadtests.sim_aliyun` and :mod:`loadtests.sim_tencent` subclass :class:`CloudSim` and answer
``handle(method, target, headers, body)``; everything here is provider-neutral.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections import Counter, deque
from typing import Any

import httpx

__all__ = ["CloudSim", "RateWindow", "SimThread"]

Answer = tuple[int, bytes]

_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 500: "Internal Server Error"}


class RateWindow:
    """Counts events over the last second; ``admit(n)`` says whether ``n`` more fit under ``limit``."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._events: deque[tuple[float, int]] = deque()
        self._used = 0

    def admit(self, n: int, now: float | None = None) -> bool:
        """Take ``n`` if they fit in the current 1 s window (always, when there is no limit)."""
        if not self.limit:
            return True
        now = time.monotonic() if now is None else now
        ev = self._events
        while ev and ev[0][0] <= now - 1.0:
            self._used -= ev.popleft()[1]
        if self._used + n > self.limit:
            return False
        ev.append((now, n))
        self._used += n
        return True


class CloudSim:
    """A provider on loopback: subclasses implement :meth:`handle`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.stats: Counter[str] = Counter()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer | None:
        """The answer to one request (None: hang up without answering)."""
        raise NotImplementedError

    async def serve(self, started: threading.Event | None = None) -> None:
        """Listen until cancelled."""
        self.loop = asyncio.get_running_loop()
        self._client = httpx.AsyncClient(timeout=5.0, trust_env=False)
        try:
            self._server = await asyncio.start_server(self._conn, self.host, self.port)
            self.port = self._server.sockets[0].getsockname()[1]
            if started is not None:
                started.set()
            async with self._server:
                await self._server.serve_forever()
        finally:
            for t in list(self._tasks):
                t.cancel()
            await self._client.aclose()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats["connections"] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers: dict[str, str] = {}
                for h in lines[1:]:
                    if h:
                        k, _, v = h.partition(":")
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                answer = await self.handle(method, target, headers, body)
                if answer is None:
                    return
                status, payload = answer
                writer.write(
                    f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\nContent-Type: application/json;"
                    f"charset=utf-8\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
                await writer.wait_closed()

    def post_later(self, url: str, body: bytes, kind: str, delay: float = 0.0, attempts: int = 4) -> None:
        """POST ``body`` to ``url`` after ``delay`` s, off the request path, retrying a failed POST."""

        async def go() -> None:
            assert self._client is not None
            if delay:
                await asyncio.sleep(delay)
            for attempt in range(attempts):
                try:
                    r = await self._client.post(
                        url, content=body, headers={"Content-Type": "application/json"}
                    )
                    if r.status_code == 200:
                        self.stats[f"{kind}_posts"] += 1
                        return
                except httpx.HTTPError:
                    pass
                self.stats[f"{kind}_retries"] += 1
                await asyncio.sleep(0.05 * 2**attempt)
            self.stats[f"{kind}_failed"] += 1

        task = asyncio.get_running_loop().create_task(go())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def pending_posts(self) -> int:
        """Callbacks not posted yet."""
        return len(self._tasks)

    def call_soon(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` in the simulator's loop (from any thread), in a context of its own: not
        the caller's (a trio caller's context would make the simulator's httpx think it runs
        under trio)."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn, *args, context=contextvars.Context())


class SimThread:
    """Runs a :class:`CloudSim` on its own asyncio loop in a thread (tests on either backend)."""

    def __init__(self, sim: CloudSim) -> None:
        self.sim = sim
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
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            self._loop.close()

    def __enter__(self) -> Any:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the simulator did not start")
        return self.sim

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)
