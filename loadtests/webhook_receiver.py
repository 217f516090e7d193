"""A small webhook receiver on loopback for tests: checks signatures, records reports and replies.

It speaks the generic webhook contract (CONTRACTS.md) the way a receiver must: ``POST /reports``
and ``POST /replies`` with JSON bodies; with a secret, a missing or wrong ``X-Pigeon-Signature``
or a ``t`` more than 300 s from now is answered 401. ``fail_first`` answers the first N posts
503, ``hang`` never answers (a stuck receiver), so tests can see the sender retry and not block.
This is a test double for the service's real endpoint, not that endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import threading
import time
from typing import Any

__all__ = ["Receiver", "ReceiverThread", "verify"]


def verify(secret: str, header: str | None, body: bytes, now: float | None = None) -> bool:
    """Whether ``header`` is a valid, fresh ``X-Pigeon-Signature`` of ``body``."""
    if not header:
        return False
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > 300:
        return False
    want = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, given)


class Receiver:
    """Records what arrives; run :meth:`serve` in an asyncio loop (or use :class:`ReceiverThread`)."""

    def __init__(self, secret: str = "", fail_first: int = 0, hang: bool = False) -> None:
        self.secret = secret
        self.fail_first = fail_first
        self.hang = hang
        self.port = 0
        self.reports: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []
        self.posts: list[tuple[str, int]] = []
        """(path, items) of each accepted POST."""
        self.refused = 0
        self.seen = 0

    async def serve(self, started: threading.Event) -> None:
        server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        started.set()
        async with server:
            await server.serve_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                _, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:] if h)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if self.hang:
                    self.seen += 1
                    await asyncio.sleep(3600)
                status = self._handle(path, headers, body)
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\n{{}}".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        except asyncio.CancelledError:
            pass  # the receiver stopping (a hung handler included): end quietly, socket closed below
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def _handle(self, path: str, headers: dict[str, str], body: bytes) -> int:
        self.seen += 1
        if self.seen <= self.fail_first:
            return 503
        if self.secret and not verify(self.secret, headers.get("x-pigeon-signature"), body):
            self.refused += 1
            return 401
        doc = json.loads(body)
        if path == "/reports":
            self.reports += doc["reports"]
            self.posts.append((path, len(doc["reports"])))
        elif path == "/replies":
            self.replies += doc["replies"]
            self.posts.append((path, len(doc["replies"])))
        else:
            return 404
        return 200


class ReceiverThread:
    """Runs a :class:`Receiver` on its own loop in a thread."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self.receiver.serve(self._started))
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self._task)
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        # Closed transports let go of their sockets on the loop's next turns: give it those.
        self._loop.run_until_complete(asyncio.sleep(0.01))
        self._loop.close()

    def __enter__(self) -> Receiver:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the receiver did not start")
        return self.receiver

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)
