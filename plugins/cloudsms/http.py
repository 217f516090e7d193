"""One pooled HTTP connection pool per cloud SMS gateway, each request sent from prebuilt parts.

The pool is the ``http`` gateway's (:class:`plugins.gateway_http.transport.PooledTransport`: one
httpcore pool for the gateway's whole life, request head and body written in one ``send``), and
:meth:`CloudClient.post` hands it an :class:`httpcore.Request` built from parts made once — the
endpoint's scheme, host and port — and the request target as bytes. No client sits in between:
an Aliyun SendSms of 1,000 numbers carries a 14 KB query string, which an ``httpx`` client parses
and re-encodes three times a request (more client CPU than everything else Pigeon does for it;
``loadtests/cloud_blast.py``).

Failures come out as the engine's gateway errors (:func:`plugins.gateway_http.transport.send`), by
whether the request could have left this machine:

* it certainly never left (refused, DNS, TLS handshake, no free pooled connection in time, a
  connection reset before the write) → :class:`~pigeon.GatewayUnreachable`;
* written but no usable answer (read or write timeout, connection dropped) →
  :class:`~pigeon.GatewayTimeout` (ambiguous: the provider may have taken it).

The answer itself (status and body) is the caller's to read: providers put their error codes in
4xx and 5xx bodies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpcore
import httpx

from plugins.gateway_http.transport import PooledTransport, send

__all__ = ["CloudClient"]

_USER_AGENT = (b"User-Agent", b"pigeon")


class CloudClient:
    """POSTs to one provider endpoint over one connection pool for the gateway's whole life."""

    def __init__(
        self,
        base_url: str,
        *,
        gateway: str,
        timeout: float,
        connect_timeout: float,
        max_connections: int,
    ) -> None:
        self.gateway = gateway
        self.base_url = base_url.rstrip("/")
        url = httpx.URL(self.base_url)  # parsed once, here
        self._scheme, self._host, self._port = url.raw_scheme, url.raw_host, url.port
        self._transport = PooledTransport(max_connections=max_connections, http2=False)
        self._extensions: dict[str, Any] = {
            "timeout": {
                "connect": connect_timeout,
                "read": timeout,
                "write": timeout,
                "pool": connect_timeout,
            }
        }

    async def post(self, target: bytes | str, headers: Mapping[str, str], body: bytes) -> tuple[int, bytes]:
        """POST ``body`` to ``target`` (``/?…``, percent-encoded) with ``headers`` (``Host`` among
        them); (status, body) of the answer."""
        url = httpcore.URL(
            scheme=self._scheme,
            host=self._host,
            port=self._port,
            target=target if isinstance(target, bytes) else target.encode("ascii"),
        )
        raw = [(k.encode("ascii"), v.encode("utf-8")) for k, v in headers.items()]
        raw.append(_USER_AGENT)
        reply = await send(self._transport.pool, url, raw, body, self._extensions, self.gateway)
        return reply.status, reply.body

    async def aclose(self) -> None:
        """Close the pool."""
        await self._transport.aclose()
