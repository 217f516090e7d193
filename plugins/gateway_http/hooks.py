"""The ``http`` gateway: Pigeon's default JSON contract over one pooled ``httpx.AsyncClient``.

Request: ``POST {url}`` with ``{"messages": [{"id", "to", "text", "carrier", "parts"}]}`` (and
``"idempotency_key"`` per message with the ``idempotency_key`` option).
Response: ``{"results": [...]}``, one per message in order, each ``{"status": "accepted",
"provider_id"}``, ``{"status": "rejected", "code"}`` or ``{"status": "retry", "code"}``
(``code = "throttled"`` for a rate limit). A 429 throttles the whole request (``Retry-After``
honoured); 5xx and failures to connect raise :class:`GatewayUnavailable` (nothing was taken), a
timeout or a connection dropped after sending :class:`GatewayTimeout` (ambiguous: the provider
may have taken the messages), 401/403 :class:`GatewayAuthError`. No ``httpx`` exception leaves
this module.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Sequence
from typing import Annotated, Literal

import httpx
import msgspec

from engine.errors import (
    ConfigError,
    GatewayAuthError,
    GatewayProtocolError,
    GatewayTimeout,
    GatewayUnavailable,
)
from engine.gateway import GatewayContext
from engine.hookspecs import hookimpl
from engine.messages import ACCEPTED, MessageBatch, Outcome, SubmitResult
from engine.plugins import GatewayRegistry

__all__ = ["HttpConfig", "HttpGateway"]


class HttpConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``plugin = "http"`` options."""

    url: str
    """The provider's send endpoint (``https://…/send``)."""
    max_batch: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100
    """Messages per request (1 for one-message-per-request APIs)."""
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 10
    """Pool size: the most requests in flight at once."""
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    """Seconds for a whole request."""
    connect_timeout: Annotated[float, msgspec.Meta(gt=0)] = 3.0
    http2: bool = False
    """HTTP/2 (needs the ``h2`` package)."""
    token_env: str = ""
    """Environment variable holding a bearer token (secrets stay out of config files)."""
    hmac_secret_env: str = ""
    """Environment variable holding an HMAC-SHA256 key: each request is signed (``X-Pigeon-Timestamp``,
    ``X-Pigeon-Signature`` = hex HMAC of ``timestamp + "." + body``)."""
    idempotent: bool = False
    """Whether the provider deduplicates on the message id (then a timed-out request may be resent)."""
    idempotency_key: bool = False
    """Send each message's id as ``idempotency_key`` too (for providers that deduplicate on it: an
    at-least-once campaign resumed after a crash resends with the same keys; docs/ledger.md)."""


class _Result(msgspec.Struct):
    status: Literal["accepted", "rejected", "retry"]
    id: str = ""
    provider_id: str = ""
    code: str = ""


class _Response(msgspec.Struct):
    results: list[_Result]


class _Out(msgspec.Struct, omit_defaults=True):
    id: str
    to: str
    text: str
    carrier: str
    parts: int
    idempotency_key: str = ""


class _Body(msgspec.Struct):
    messages: list[_Out]


def _secret(env: str, what: str) -> str:
    if not env:
        return ""
    value = os.environ.get(env, "")
    if not value:
        raise ConfigError("environment", env, f"the {what} variable {env} is not set")
    return value


class HttpGateway:
    """One provider endpoint, one connection pool for the gateway's whole life."""

    def __init__(self, config: HttpConfig, ctx: GatewayContext) -> None:
        self.name = ctx.name
        self.max_batch = config.max_batch
        self.idempotent = config.idempotent
        self._keyed = config.idempotency_key
        self.url = config.url
        headers = {"Content-Type": "application/json", "User-Agent": "pigeon"}
        token = _secret(config.token_env, "bearer token")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._hmac_key = _secret(config.hmac_secret_env, "HMAC secret").encode()
        try:
            self._client = httpx.AsyncClient(
                headers=headers,
                http2=config.http2,
                limits=httpx.Limits(
                    max_connections=config.max_connections,
                    max_keepalive_connections=config.max_connections,
                ),
                timeout=httpx.Timeout(config.timeout, connect=config.connect_timeout),
            )
        except ImportError as exc:  # http2 without h2
            raise ConfigError(ctx.name, "options.http2", f"HTTP/2 needs the h2 package: {exc}") from None
        self._encode = msgspec.json.Encoder().encode
        self._decode = msgspec.json.Decoder(_Response).decode

    def _sign(self, body: bytes) -> dict[str, str]:
        if not self._hmac_key:
            return {}
        ts = str(int(time.time()))
        mac = hmac.new(self._hmac_key, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        return {"X-Pigeon-Timestamp": ts, "X-Pigeon-Signature": mac}

    async def send(self, batch: MessageBatch) -> Sequence[SubmitResult]:
        """POST the batch and read one result per message."""
        c = batch.carrier
        cols = zip(batch.ids, batch.tos, batch.texts, batch.parts, strict=True)
        if self._keyed:  # the message id (``<campaign>-<row>``) is stable across resumes
            body = self._encode(_Body([_Out(i, to, t, c, p, i) for i, to, t, p in cols]))
        else:
            body = self._encode(_Body([_Out(i, to, t, c, p) for i, to, t, p in cols]))
        try:
            resp = await self._client.post(self.url, content=body, headers=self._sign(body))
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # The request never left: safe to send again.
            raise GatewayUnavailable(f"{self.name}: {type(exc).__name__}: {exc}") from None
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            # Sent, but no answer (read timeout, connection dropped): the provider may have it.
            raise GatewayTimeout(f"{self.name}: no answer ({type(exc).__name__})") from None
        if resp.status_code == 429:
            after = _retry_after(resp.headers.get("retry-after"))
            throttled = SubmitResult(Outcome.THROTTLED, code="429", retry_after=after)
            return [throttled] * len(batch)
        if resp.status_code in (401, 403):
            raise GatewayAuthError(f"{self.name}: the provider refused the credentials ({resp.status_code})")
        if resp.status_code >= 500:
            raise GatewayUnavailable(f"{self.name}: HTTP {resp.status_code}")
        if resp.status_code != 200:
            raise GatewayProtocolError(f"{self.name}: HTTP {resp.status_code}: {resp.text[:200]}")
        try:
            results = self._decode(resp.content).results
        except msgspec.DecodeError as exc:
            raise GatewayProtocolError(f"{self.name}: unreadable answer: {exc}") from None
        if len(results) != len(batch):
            raise GatewayProtocolError(f"{self.name}: {len(results)} results for {len(batch)} messages")
        return [_outcome(r) for r in results]

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0


def _outcome(r: _Result) -> SubmitResult:
    if r.status == "accepted":
        return SubmitResult(Outcome.ACCEPTED, provider_id=r.provider_id) if r.provider_id else ACCEPTED
    if r.status == "rejected":
        return SubmitResult(Outcome.REJECTED, code=r.code or "rejected", permanent=True)
    if r.code == "throttled":
        return SubmitResult(Outcome.THROTTLED, code=r.code)
    return SubmitResult(Outcome.RETRY, code=r.code or "retry")


@hookimpl
def register_gateways(gateways: GatewayRegistry) -> None:
    """Register ``http``."""
    gateways.add("http", HttpGateway, HttpConfig, description="Pigeon's JSON contract over pooled HTTP")
