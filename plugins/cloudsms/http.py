"""One pooled httpx client per cloud SMS gateway, with every httpx failure mapped to a gateway error.

* the request certainly never left (refused, DNS, TLS handshake, no free pooled connection in time)
  → :class:`~pigeon.GatewayUnreachable`;
* written but no usable answer (read or write timeout, connection dropped) →
  :class:`~pigeon.GatewayTimeout` (ambiguous: the provider may have taken it);
* anything else httpx raises → :class:`~pigeon.GatewayProtocolError`.

The answer itself (status and body) is the caller's to read: providers put their error codes in
4xx and 5xx bodies.
"""

from __future__ import annotations

import httpx

from pigeon import GatewayProtocolError, GatewayTimeout, GatewayUnreachable

__all__ = ["CloudClient"]


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
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=connect_timeout, pool=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers={"User-Agent": "pigeon"},
            trust_env=False,
        )

    async def post(self, target: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        """POST ``body`` to ``base_url + target``; (status, body) of the answer."""
        try:
            resp = await self._client.post(self.base_url + target, headers=headers, content=body)
        except (
            httpx.ConnectError,
            httpx.ConnectTimeout,
            httpx.PoolTimeout,
            httpx.UnsupportedProtocol,
        ) as exc:
            raise GatewayUnreachable(f"{self.gateway}: {type(exc).__name__}: {exc}") from None
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise GatewayTimeout(f"{self.gateway}: no answer ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise GatewayProtocolError(f"{self.gateway}: {type(exc).__name__}: {exc}") from None
        return resp.status_code, resp.content

    async def aclose(self) -> None:
        """Close the pool."""
        await self._client.aclose()
