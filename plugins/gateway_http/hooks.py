r"""The ``http`` gateway: a provider's HTTP API over one pooled ``httpx.AsyncClient`` per gateway.

The request and response shapes are configurable (:mod:`plugins.gateway_http.shapes`: JSON or
form, one message / a list / columns per request, where results live, provider codes → outcome
classes); the default is Pigeon's own JSON contract:

Request: ``POST {url}`` with ``{"messages": [{"id", "to", "text", "carrier", "parts"}]}`` (and
``"idempotency_key"`` per message with the ``idempotency_key`` option).
Response: ``{"results": [...]}``, one per message in order, each ``{"status": "accepted",
"provider_id"}``, ``{"status": "rejected", "code"}`` or ``{"status": "retry", "code"}``
(``code = "throttled"`` for a rate limit). A 429 throttles the whole request (``Retry-After``
honoured); 5xx raises :class:`GatewayUnavailable` (answered, nothing taken); a request that
never left this machine (refused, DNS, TLS, no free connection) :class:`GatewayUnreachable` (no
retry spent: the engine pauses the route and :meth:`HttpGateway.probe`\ s it); a timeout or a
connection dropped after the request went out :class:`GatewayTimeout` (ambiguous: the provider
may have taken the messages); 401/403 :class:`GatewayAuthError`. No exception of httpx, httpcore
or the socket layer leaves this module.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import os
import time
from collections.abc import Sequence
from typing import Annotated

import httpcore
import httpx
import msgspec

from pigeon import (
    ACCEPTED,
    ConfigError,
    GatewayAuthError,
    GatewayContext,
    GatewayProtocolError,
    GatewayRegistry,
    GatewayUnavailable,
    MessageBatch,
    Outcome,
    SubmitResult,
    about_to_write,
    hookimpl,
)
from plugins.gateway_http.shapes import BodyEncoder, RequestShape, ResponseReader, ResponseShape
from plugins.gateway_http.transport import PooledTransport, probe, send

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
    request: RequestShape = RequestShape()
    """How a batch is written (``[…options.request]``); the default is Pigeon's JSON contract."""
    response: ResponseShape = ResponseShape()
    """How the answer is read (``[…options.response]``); the default is Pigeon's JSON contract."""

    def __post_init__(self) -> None:
        if self.idempotency_key and self.request != RequestShape():
            raise ValueError(
                "`idempotency_key` adds a field to Pigeon's own contract; with a `request` shape, "
                "name the provider's key field in `request.fields.id` instead"
            )
        if self.request.batch == "single" and self.max_batch != 1:
            raise ValueError(
                f'`request.batch = "single"` sends one message per request: '
                f"set `max_batch = 1` (is {self.max_batch})"
            )


class _Result(msgspec.Struct):
    status: str
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

    hands_over_on_write = True
    """The engine's hand-over is recorded when the request's first byte is written
    (:func:`engine.sending.gateway.about_to_write`, from the transport's stream)."""

    def __init__(self, config: HttpConfig, ctx: GatewayContext) -> None:
        self.name = ctx.name
        self.max_batch = config.max_batch
        self.idempotent = config.idempotent
        self._keyed = config.idempotency_key
        self.url = config.url
        encoder = BodyEncoder(config.request)
        self._body = None if config.request == RequestShape() else encoder.encode
        """The shape's encoder; None: the default contract's faster typed encoder."""
        self._reader = ResponseReader(config.response, idempotent=config.idempotent, gateway=ctx.name)
        self._fast_answer = config.response == ResponseShape()
        target = httpx.URL(config.url)
        if target.scheme not in ("http", "https") or not target.host:
            raise ConfigError(
                ctx.name, "options.url", f"expected an http:// or https:// URL, got {config.url!r}"
            )
        self._url = httpcore.URL(
            scheme=target.raw_scheme, host=target.raw_host, port=target.port, target=target.raw_path
        )
        self._host = target.host
        self._port = target.port or (443 if target.scheme == "https" else 80)
        self._connect_timeout = config.connect_timeout
        headers = {
            "Host": target.netloc.decode("ascii"),
            "Content-Type": encoder.content_type,
            "User-Agent": "pigeon",
        }
        token = _secret(config.token_env, "bearer token")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._headers = [(k.encode(), v.encode()) for k, v in headers.items()]
        self._hmac_key = _secret(config.hmac_secret_env, "HMAC secret").encode()
        if config.http2 and importlib.util.find_spec("h2") is None:
            raise ConfigError(ctx.name, "options.http2", "HTTP/2 needs the h2 package: pip install h2")
        self._transport = PooledTransport(max_connections=config.max_connections, http2=config.http2)
        timeouts = {
            "connect": config.connect_timeout,
            "read": config.timeout,
            "write": config.timeout,
            "pool": config.timeout,
        }
        self._extensions = {"timeout": timeouts}
        self._client = httpx.AsyncClient(
            transport=self._transport,
            headers={k: v for k, v in headers.items() if k != "Host"},
            timeout=httpx.Timeout(config.timeout, connect=config.connect_timeout),
        )
        """The gateway's one client; sends go through its transport's pool."""
        self._encode = msgspec.json.Encoder().encode
        self._decode = msgspec.json.Decoder(_Response).decode

    def _sign(self, body: bytes) -> list[tuple[bytes, bytes]]:
        ts = str(int(time.time())).encode()
        mac = hmac.new(self._hmac_key, ts + b"." + body, hashlib.sha256).hexdigest()
        return [(b"X-Pigeon-Timestamp", ts), (b"X-Pigeon-Signature", mac.encode())]

    async def send(self, batch: MessageBatch) -> Sequence[SubmitResult]:
        """POST the batch and read one result per message."""
        if self._body is not None:
            body = self._body(batch)
        else:
            c = batch.carrier
            rows = zip(batch.ids, batch.tos, batch.texts, batch.parts, strict=True)
            if self._keyed:  # the message id (``<campaign>-<row>``) is stable across resumes
                body = self._encode(_Body([_Out(i, to, t, c, p, i) for i, to, t, p in rows]))
            else:
                body = self._encode(_Body([_Out(i, to, t, c, p) for i, to, t, p in rows]))
        headers = self._headers
        if self._hmac_key:
            headers = [*headers, *self._sign(body)]
        if not self._transport.marks_writes:  # HTTP/2 streams do not tell: hand over before sending
            about_to_write()
        resp = await send(
            self._transport.pool,
            self._url,
            headers,
            body,
            self._extensions,
            self.name,
            marked=self._transport.marks_writes,
        )
        status = resp.status
        if status in self._reader.ok_status:
            if self._fast_answer:
                return self._default_answer(batch, resp.body)
            return self._reader.results(batch, resp.body)
        if status == 429:
            after = _retry_after(resp.header(b"retry-after"))
            throttled = SubmitResult(Outcome.THROTTLED, code="429", retry_after=after)
            return [throttled] * len(batch)
        if status in (401, 403):
            raise GatewayAuthError(f"{self.name}: the provider refused the credentials ({status})")
        if status >= 500:
            raise GatewayUnavailable(f"{self.name}: HTTP {status}")
        refused = self._reader.refused(batch, status, resp.body) if 400 <= status < 500 else None
        if refused is None:
            raise GatewayProtocolError(f"{self.name}: HTTP {status}: {resp.body[:200]!r}")
        return refused

    def _default_answer(self, batch: MessageBatch, body: bytes) -> list[SubmitResult]:
        """Pigeon's contract through a typed decoder (the common case, kept fast)."""
        try:
            results = self._decode(body).results
        except msgspec.DecodeError as exc:
            raise GatewayProtocolError(f"{self.name}: unreadable answer: {exc}") from None
        if len(results) != len(batch):
            raise GatewayProtocolError(f"{self.name}: {len(results)} results for {len(batch)} messages")
        accepted = Outcome.ACCEPTED
        if all(r.status == "accepted" for r in results):  # the common answer: one comprehension
            return [SubmitResult(accepted, r.provider_id) if r.provider_id else ACCEPTED for r in results]
        reader = self._reader
        out: list[SubmitResult] = []
        for r in results:
            if r.status == "accepted":
                out.append(
                    SubmitResult(Outcome.ACCEPTED, provider_id=r.provider_id) if r.provider_id else ACCEPTED
                )
            else:
                outcome, code = reader.classify(r.status, r.code)
                if outcome == "account":
                    outcome = "rejected"
                out.append(reader.submit(outcome, code, r.provider_id))
        return out

    async def probe(self) -> None:
        """Whether the provider can be reached at all: a TCP connection, no request (the engine
        probes an unreachable gateway so, and hands messages over again once it answers)."""
        await probe(self._host, self._port, self._connect_timeout)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0


@hookimpl
def register_gateways(gateways: GatewayRegistry) -> None:
    """Register ``http``."""
    gateways.add("http", HttpGateway, HttpConfig, description="Pigeon's JSON contract over pooled HTTP")
