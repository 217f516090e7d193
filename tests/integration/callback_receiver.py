"""A status-callback receiver for the tests: a real HTTP/1.1 server on loopback that verifies each POST's
signature as docs/service.md tells a platform team to, keeps the events, and can go down or refuse."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import SocketListener, SocketStream, TaskGroup

from engine.sending.webhooks import WebhookError, verify_signature

__all__ = ["Receiver", "receiver"]


class Receiver:
    """What arrived: :attr:`events` (every event of every verified POST, repeats included)."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.port = 0
        self.events: list[dict[str, Any]] = []
        self.posts = 0
        self.bad_signatures = 0
        self.status = 200
        """What a POST is answered (503: refusing)."""
        self.up = True
        self._tg: TaskGroup | None = None
        self._listener: SocketListener | None = None
        self._scope: anyio.CancelScope | None = None
        self._done = anyio.Event()

    @property
    def url(self) -> str:
        """Where the service posts (the path ``/hooks/pigeon``)."""
        return f"http://127.0.0.1:{self.port}/hooks/pigeon"

    def seen(self) -> set[tuple[str, str]]:
        """Each (message id, state) received, repeats dropped by event id."""
        by_id: dict[str, tuple[str, str]] = {}
        for e in self.events:
            by_id[e["id"]] = (e["message_id"], e["state"])
        return set(by_id.values())

    async def start(self, tg: TaskGroup) -> None:
        """Listen (again, on the same port once one was taken) and serve in ``tg``."""
        self._tg = tg
        listener = self._listener = await anyio.create_tcp_listener(
            local_host="127.0.0.1", local_port=self.port
        )
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        self.up = True
        scope = anyio.CancelScope()
        self._scope = scope
        done = self._done = anyio.Event()

        async def serve() -> None:
            try:
                with scope:
                    await listener.serve(self._handle)
            finally:
                with anyio.CancelScope(shield=True):
                    await listener.aclose()
                done.set()

        tg.start_soon(serve)

    async def go_down(self) -> None:
        """Close the listener and every open connection: the service gets connection errors."""
        self.up = False
        if self._scope is not None:
            self._scope.cancel()
            await self._done.wait()

    async def come_up(self) -> None:
        """Listen again on the same port."""
        assert self._tg is not None
        await self.start(self._tg)

    async def _handle(self, stream: SocketStream) -> None:
        buf = b""
        async with stream:
            try:
                while True:
                    while b"\r\n\r\n" not in buf:
                        buf += await stream.receive()
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    lines = head.decode("latin-1").split("\r\n")
                    headers = {
                        k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])
                    }
                    size = int(headers.get("content-length", "0"))
                    while len(buf) < size:
                        buf += await stream.receive()
                    body, buf = buf[:size], buf[size:]
                    status = self._take(headers, body)
                    reason = {200: "OK", 401: "Unauthorized", 503: "Service Unavailable"}.get(status, "X")
                    await stream.send(f"HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\n\r\n".encode())
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return

    def _take(self, headers: dict[str, str], body: bytes) -> int:
        self.posts += 1
        if self.status != 200:
            return self.status
        try:  # the check docs/service.md gives: HMAC-SHA256 over f"{t}." + body, t within 300 s
            verify_signature(self.secret, headers.get("x-pigeon-signature"), body, time.time())
        except WebhookError:
            self.bad_signatures += 1
            return 401
        self.events += json.loads(body)["events"]
        return 200


@asynccontextmanager
async def receiver(secret: bytes) -> AsyncIterator[Receiver]:
    """A :class:`Receiver` listening while the block runs."""
    rx = Receiver(secret)
    async with anyio.create_task_group() as tg:
        await rx.start(tg)
        try:
            yield rx
        finally:
            tg.cancel_scope.cancel()
