"""An example Pigeon gateway for an aggregator with its own API: copy it to connect a provider.

The provider takes one text to many numbers per request (``{"mobiles": "138…,139…", "content": …}``)
and answers per number: ``{"data": {"13800138000": {"code": 0, "sid": "…"}, …}}``; code 0 is
accepted, 1xx a bad number (permanent), 9xx a rate limit. Requests carry ``account``, ``ts`` and
``sign = md5(account + secret + ts)`` in the query.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import defaultdict
from collections.abc import Sequence

import httpx
import msgspec

from pigeon import (
    ConfigError,
    GatewayAuthError,
    GatewayContext,
    GatewayProtocolError,
    GatewayRegistry,
    GatewayTimeout,
    GatewayUnavailable,
    MessageBatch,
    Outcome,
    SubmitResult,
    hookimpl,
)

__all__ = ["ExampleConfig", "ExampleGateway"]


class ExampleConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``plugin = "example"`` options."""

    url: str
    account: str
    secret_env: str
    """Environment variable holding the account secret."""
    max_batch: int = 500
    timeout: float = 10.0


class _Answer(msgspec.Struct):
    code: int
    sid: str = ""
    msg: str = ""


class _Response(msgspec.Struct):
    data: dict[str, _Answer]


class ExampleGateway:
    """Groups a batch by text (the provider sends one text to many numbers) and maps answers back."""

    idempotent = False

    def __init__(self, config: ExampleConfig, ctx: GatewayContext) -> None:
        self.name = ctx.name
        self.max_batch = config.max_batch
        self._config = config
        self._secret = os.environ.get(config.secret_env, "")
        if not self._secret:
            raise ConfigError(ctx.name, "options.secret_env", f"set the {config.secret_env} variable")
        self._client = httpx.AsyncClient(timeout=config.timeout, limits=httpx.Limits(max_connections=10))
        self._decode = msgspec.json.Decoder(_Response).decode

    def _query(self) -> dict[str, str]:
        ts = str(int(time.time()))
        sign = hashlib.md5((self._config.account + self._secret + ts).encode()).hexdigest()
        return {"account": self._config.account, "ts": ts, "sign": sign}

    async def send(self, batch: MessageBatch) -> Sequence[SubmitResult]:
        """One request per distinct text; answers mapped back to each message in order."""
        by_text: dict[str, list[int]] = defaultdict(list)
        for i, text in enumerate(batch.texts):
            by_text[text].append(i)
        results: list[SubmitResult | None] = [None] * len(batch)
        tos = batch.tos
        for text, idx in by_text.items():
            mobiles = [tos[i].removeprefix("+86") for i in idx]
            try:
                resp = await self._client.post(
                    self._config.url,
                    params=self._query(),
                    json={"mobiles": ",".join(mobiles), "content": text},
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise GatewayUnavailable(f"{self.name}: {exc}") from None
            except httpx.HTTPError as exc:
                raise GatewayTimeout(f"{self.name}: no answer ({type(exc).__name__})") from None
            if resp.status_code in (401, 403):
                raise GatewayAuthError(f"{self.name}: signature refused")
            if resp.status_code >= 500:
                raise GatewayUnavailable(f"{self.name}: HTTP {resp.status_code}")
            try:
                data = self._decode(resp.content).data
            except msgspec.DecodeError as exc:
                raise GatewayProtocolError(f"{self.name}: {exc}") from None
            for i, mobile in zip(idx, mobiles, strict=True):
                answer = data.get(mobile)
                if answer is None:
                    raise GatewayProtocolError(f"{self.name}: no answer for a number it was sent")
                results[i] = _outcome(answer)
        return [r for r in results if r is not None]

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


def _outcome(a: _Answer) -> SubmitResult:
    if a.code == 0:
        return SubmitResult(Outcome.ACCEPTED, provider_id=a.sid)
    if 900 <= a.code < 1000:
        return SubmitResult(Outcome.THROTTLED, code=str(a.code), retry_after=1.0)
    return SubmitResult(Outcome.REJECTED, code=str(a.code), permanent=100 <= a.code < 200)


@hookimpl
def register_gateways(gateways: GatewayRegistry) -> None:
    """Register ``example``."""
    gateways.add("example", ExampleGateway, ExampleConfig, description="example aggregator (copy me)")
