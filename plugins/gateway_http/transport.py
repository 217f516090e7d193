"""The ``http`` gateway's connection pool: one httpcore pool, driven directly by the hot path.

The gateway keeps one httpcore :class:`~httpcore.AsyncConnectionPool` for its whole life, built
here (:class:`PooledTransport`), and each send goes straight to it with a :class:`httpcore.Request`
made from prebuilt parts (URL, header list, timeouts), skipping the client's per-request work (URL
parsing, header merging, cookies, auth and redirect hooks, event hooks) that a gateway posting to
one fixed URL does not need. The pool's limits and keep-alive handling, and the timeouts, are
httpcore's own. The gateway's :class:`httpx.AsyncClient` (for anything else it asks) uses the same
pool: :class:`PooledTransport` is an :class:`httpx.AsyncBaseTransport` that hands each request to
it. Only public APIs of both libraries are used: httpx's transport interface
(``AsyncBaseTransport``, ``Request.stream``, ``Response(stream=…)``, ``AsyncByteStream``) and
httpcore's pool, request, response, network-backend and exception types.

Two costs of loopback-speed HTTP/1.1 are cut in the network stream (:class:`CoalescingBackend`):
the request head and body are written with one ``send`` instead of two (the stream holds writes
until the client reads the answer, which on HTTP/1.1 always follows the request), and the
"has the server closed this idle connection?" check the pool makes for every connection on every
request polls the socket directly instead of building the backend's attribute table each time.
HTTP/2 connections multiplex several requests on one stream, so they keep the plain backend.

:func:`send` maps *every* failure — httpcore's, the socket layer's, anything else — to a
:class:`~pigeon.GatewayError`, by whether the request could have left this machine. The
coalescing stream knows: it marks the moment it starts writing the request (:data:`_WRITTEN`, a
context variable of the sending task). A failure before that moment (connection refused, DNS,
TLS handshake, no free connection in time, a connection reset before the write) is
:class:`GatewayUnreachable` — nothing left, the engine spends no retry on it. A failure after it
(read timeout, the connection dropped while waiting for the answer) is :class:`GatewayTimeout`:
the provider may have the request (ambiguous). At that same moment the stream calls
:func:`engine.sending.gateway.about_to_write`: the engine records the request's hand-over just before its
first byte goes out, not before a connection that may never open. Over HTTP/2 the plain backend
is used and the exception's kind decides.

What this relies on, and so the bounds in pyproject.toml: httpcore 1.x's network-backend
interface and its HTTP/1.1 connection asking idle streams ``get_extra_info("is_readable")`` and
writing a request before reading its answer (``httpcore>=1.0,<2``); httpx's transport interface
over httpcore 1.x (``httpx>=0.27,<1``: httpx 1.0 is announced without httpcore).
"""

# The stream and backend methods take ``timeout`` because httpcore's interface does.
# ruff: noqa: ASYNC109

from __future__ import annotations

import contextvars
import select
import socket
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import anyio
import httpcore
import httpx

from pigeon import GatewayError, GatewayTimeout, GatewayUnreachable, RunHalt, about_to_write

__all__ = ["CoalescingBackend", "PooledTransport", "Reply", "probe", "send"]

Header = tuple[bytes, bytes]

_WRITTEN: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar(
    "pigeon_http_written", default=None
)
"""Set by :func:`send` for its task: ``[True]`` once a byte of the request may be on the wire."""


class _CoalescingStream(httpcore.AsyncNetworkStream):
    """A network stream that sends what was written in one go, just before the next read."""

    __slots__ = ("_pending", "_sock", "_stream", "_write_timeout")

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream
        self._pending: list[bytes] = []
        self._write_timeout: float | None = None
        self._sock: socket.socket | None = None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if buffer:
            self._pending.append(buffer)
            self._write_timeout = timeout

    async def _flush(self) -> None:
        pending, self._pending = self._pending, []
        written = _WRITTEN.get()
        if written is not None:
            about_to_write()  # the engine records the hand-over now (or raises RunHalt: not written)
            written[0] = True  # from here on the provider may receive the request
        await self._stream.write(pending[0] if len(pending) == 1 else b"".join(pending), self._write_timeout)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._pending:
            await self._flush()
        return await self._stream.read(max_bytes, timeout)

    async def aclose(self) -> None:
        self._pending = []
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if self._pending:
            await self._flush()
        return _CoalescingStream(await self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # asked for every idle connection on every request
            sock = self._sock
            if sock is None:
                sock = self._sock = self._stream.get_extra_info("socket")
            if sock is None or sock.fileno() < 0:
                return True
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        return self._stream.get_extra_info(info)


class CoalescingBackend(httpcore.AsyncNetworkBackend):
    """httpcore's automatic backend (anyio on asyncio, trio on trio) with coalescing streams."""

    def __init__(self) -> None:
        self._backend: httpcore.AsyncNetworkBackend | None = None

    def _pick(self) -> httpcore.AsyncNetworkBackend:
        if self._backend is None:
            import sniffio

            if sniffio.current_async_library() == "trio":
                self._backend = httpcore.TrioBackend()
            else:
                self._backend = httpcore.AnyIOBackend()
        return self._backend

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._pick().connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )
        return _CoalescingStream(stream)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:  # pragma: no cover - the gateway dials TCP
        stream = await self._pick().connect_unix_socket(path, timeout=timeout, socket_options=socket_options)
        return _CoalescingStream(stream)

    async def sleep(self, seconds: float) -> None:
        await self._pick().sleep(seconds)


class PooledTransport(httpx.AsyncBaseTransport):
    """The gateway's connection pool (:attr:`pool`, which the hot path sends to directly), and the
    httpx client's transport over it: the client's own requests (``client.get``…) and the gateway's
    direct sends share the same connections.
    """

    def __init__(self, *, max_connections: int, http2: bool, keepalive_expiry: float = 30.0) -> None:
        self.pool = httpcore.AsyncConnectionPool(
            ssl_context=httpcore.default_ssl_context(),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=keepalive_expiry,
            http1=True,
            http2=http2,
            retries=0,
            network_backend=None if http2 else CoalescingBackend(),
        )
        """Connections of this gateway; the hot path sends here."""
        self.marks_writes = not http2
        """Whether the pool's streams mark when a request starts to leave (:func:`send`)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send an httpx request through the pool; httpcore's errors come out as httpx's."""
        url = request.url
        core = httpcore.Request(
            request.method,
            httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,  # an AsyncByteStream: async iterable of bytes
            extensions=request.extensions,
        )
        try:
            response = await self.pool.handle_async_request(core)
        except httpcore.TimeoutException as exc:
            raise _as_httpx(exc, request) from exc
        except httpcore.NetworkError as exc:
            raise _as_httpx(exc, request) from exc
        except (httpcore.ProtocolError, httpcore.ProxyError, httpcore.UnsupportedProtocol) as exc:
            raise _as_httpx(exc, request) from exc
        return httpx.Response(
            response.status,
            headers=response.headers,
            stream=_ResponseBody(response, request),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        """Close every connection."""
        await self.pool.aclose()


class _ResponseBody(httpx.AsyncByteStream):
    """An httpcore response's body as httpx reads it, its errors as httpx's."""

    def __init__(self, response: httpcore.Response, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_stream():
                yield chunk
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as exc:
            raise _as_httpx(exc, self._request) from exc

    async def aclose(self) -> None:
        await self._response.aclose()


_HTTPX_ERRORS: dict[type[Exception], type[httpx.TransportError]] = {
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.ProtocolError: httpx.ProtocolError,
    httpcore.ProxyError: httpx.ProxyError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
}
"""httpcore's exceptions and httpx's for the same failure, most specific first."""


def _as_httpx(exc: Exception, request: httpx.Request) -> httpx.TransportError:
    kind = next(h for c, h in _HTTPX_ERRORS.items() if isinstance(exc, c))
    return kind(str(exc) or type(exc).__name__, request=request)


class Reply:
    """An answer read in full: status, headers (lower-cased names) and body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Sequence[Header], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: bytes) -> str | None:
        """The first value of header ``name`` (lower-case), or None."""
        for k, v in self.headers:
            if k.lower() == name:
                return v.decode("latin-1")
        return None


async def send(
    pool: httpcore.AsyncConnectionPool,
    url: httpcore.URL,
    headers: list[Header],
    body: bytes,
    extensions: dict[str, Any],
    gateway: str,
    *,
    marked: bool = True,
) -> Reply:
    """POST ``body`` with ``headers`` (``Content-Length`` is added) and read the whole answer.

    Raises only :class:`~pigeon.GatewayError`: :class:`GatewayUnreachable` when the
    request certainly never left, :class:`GatewayTimeout` when it may have. ``marked``: the pool's
    streams mark the start of each write (:class:`CoalescingBackend`; not over HTTP/2).
    """
    request = httpcore.Request(
        b"POST",
        url,
        headers=[*headers, (b"Content-Length", str(len(body)).encode())],
        content=body,
        extensions=extensions,
    )
    written = [False]
    token = _WRITTEN.set(written)
    try:
        response = await pool.handle_async_request(request)
        try:
            content = await response.aread()
        finally:
            await response.aclose()
    except (anyio.get_cancelled_exc_class(), RunHalt):
        raise
    except Exception as exc:
        raise _classify(exc, written[0] or not marked, gateway) from None
    finally:
        _WRITTEN.reset(token)
    return Reply(response.status, response.headers, content)


_NEVER_LEFT = (
    httpcore.ConnectError,
    httpcore.ConnectTimeout,
    httpcore.PoolTimeout,
    httpcore.UnsupportedProtocol,
)


def _classify(exc: Exception, maybe_left: bool, gateway: str) -> GatewayError:
    """The engine's error for a failed request, by whether it may have left this machine (connect
    and pool failures never have; otherwise the stream's mark says — unknown: it may have)."""
    what = type(exc).__name__
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, _NEVER_LEFT) or not maybe_left:
        return GatewayUnreachable(f"{gateway}: {what}: {_short(exc)}")
    return GatewayTimeout(f"{gateway}: no answer ({what})")


def _short(exc: Exception) -> str:
    text = str(exc)
    return text[:200] if text else "no detail"


async def probe(host: str, port: int, timeout: float) -> None:
    """Open and close a TCP connection to ``host:port`` (no request): :class:`GatewayUnreachable`
    when it cannot be opened within ``timeout`` seconds."""
    try:
        with anyio.fail_after(timeout):
            stream = await anyio.connect_tcp(host, port)
        await stream.aclose()
    except anyio.get_cancelled_exc_class():
        raise
    except (OSError, TimeoutError) as exc:
        raise GatewayUnreachable(f"{host}:{port}: {type(exc).__name__}: {_short(exc)}") from None
