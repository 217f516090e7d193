"""The ``tencent`` gateway: filed templates to Tencent Cloud SMS SendSms on one pooled client.

A SendSms request carries one template, one signature and one parameter set for up to 200
numbers, so each batch is grouped by (template, signature, parameter values) and each group sent
in requests of at most 200 numbers, at once (:mod:`plugins.cloudsms.calls`). The answer has one
result per number (``SendStatusSet``): ``Ok`` → accepted with its ``SerialNo`` as provider id,
what the status callback names it by.

Codes (:mod:`plugins.gateway_tencent.codes`): ``LimitExceeded.*`` / ``RequestLimitExceeded`` →
``throttled``; ``InvalidParameterValue.*``, blacklist, bad number → ``rejected`` (permanent);
signature, template, credential and account errors (``FailedOperation.Signature…``,
``…Template…``, ``AuthFailure.*``, ``UnauthorizedOperation.*``) →
:class:`~pigeon.GatewayAuthError`; ``InternalError.Timeout`` → ``unknown``. Connection
refused → :class:`~pigeon.GatewayUnreachable`, 5xx → :class:`~pigeon.GatewayUnavailable`,
no answer after the request was written → :class:`~pigeon.GatewayTimeout`; every request's
``SessionContext`` is the message id of its first message (:func:`engine.sending.settling.request_key`),
so ``pigeon settle`` can match PullSmsSendStatus results to the messages of requests that got no
answer from the ledger alone (:meth:`TencentGateway.settle`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Annotated, Any

import httpx
import msgspec

from pigeon import (
    ConfigError,
    DeliveryStatus,
    GatewayAuthError,
    GatewayContext,
    GatewayProtocolError,
    GatewayRegistry,
    GatewayUnavailable,
    Journal,
    MessageBatch,
    Outcome,
    ProviderParams,
    ProviderStatus,
    Settled,
    SettleQuery,
    SubmitResult,
    WebhookParserRegistry,
    hookimpl,
    request_key,
)
from plugins.cloudsms.calls import Call, Probe, run_calls, sign_name
from plugins.cloudsms.http import CloudClient
from plugins.gateway_tencent.api import Signer
from plugins.gateway_tencent.codes import classify
from plugins.gateway_tencent.webhooks import TencentParser

__all__ = ["TencentConfig", "TencentGateway"]

SEND_MAX = 200


class TencentConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``plugin = "tencent"`` options."""

    sdk_app_id: Annotated[str, msgspec.Meta(min_length=1)]
    """The SMS application's ``SmsSdkAppId`` (console: 应用管理 → 应用列表)."""
    url: str = "https://sms.tencentcloudapi.com"
    region: str = "ap-guangzhou"
    secret_id_env: str = "TENCENTCLOUD_SECRET_ID"
    """Environment variable holding the SecretId (keys stay out of config files)."""
    secret_key_env: str = "TENCENTCLOUD_SECRET_KEY"
    max_batch: Annotated[int, msgspec.Meta(ge=1, le=SEND_MAX * 10)] = SEND_MAX
    """Messages per gateway batch (one SendSms takes 200 numbers with equal parameters)."""
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 16
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    connect_timeout: Annotated[float, msgspec.Meta(gt=0)] = 3.0
    extend_code: str = ""
    """``ExtendCode``: the extension replies come back to (empty: none)."""


_NOT_FILED = SubmitResult(Outcome.REJECTED, code="pigeon.NOT_A_FILED_TEMPLATE", permanent=True)


def _env(env: str, gateway: str, key: str) -> str:
    value = os.environ.get(env, "")
    if not value:
        raise ConfigError(gateway, f"options.{key}", f"the environment variable {env} is not set")
    return value


class TencentGateway:
    """Tencent Cloud SMS over one pooled client, signing every request itself (TC3)."""

    idempotent = False
    template_provider = "tencent"
    """It sends only templates filed with Tencent (the service refuses other messages for it)."""

    def __init__(self, config: TencentConfig, ctx: GatewayContext) -> None:
        self.name = ctx.name
        self.config = config
        self.max_batch = config.max_batch
        url = httpx.URL(config.url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(
                ctx.name, "options.url", f"expected an http:// or https:// URL, got {config.url!r}"
            )
        host = url.netloc.decode("ascii")
        self._signer = Signer(
            _env(config.secret_id_env, ctx.name, "secret_id_env"),
            _env(config.secret_key_env, ctx.name, "secret_key_env"),
            host=host,
            region=config.region,
        )
        self._client = CloudClient(
            f"{url.scheme}://{host}",
            gateway=ctx.name,
            timeout=config.timeout,
            connect_timeout=config.connect_timeout,
            max_connections=config.max_connections,
        )
        self.unsettled = Journal(ctx.run_dir, ctx.name)
        """Calls that got no clear answer, with their numbers (for ``pigeon settle``)."""
        self._auth: GatewayAuthError | None = None
        self._probe = Probe()
        self.calls = 0

    def _plan(self, batch: MessageBatch, params: Sequence[ProviderParams | None]) -> list[Call]:
        texts, tos, ids = batch.texts, batch.tos, batch.ids
        groups: dict[tuple[str, str, tuple[str, ...]], list[int]] = {}
        for i, p in enumerate(params):
            if p is not None and p[0].provider == "tencent":
                groups.setdefault((p[0].code, sign_name(texts[i]), p[1]), []).append(i)
        calls: list[Call] = []
        for idx in groups.values():
            chunks: list[tuple[list[int], set[str]]] = []
            for i in idx:  # results pair by number: one number once per request
                for chunk, seen in chunks:
                    if len(chunk) < SEND_MAX and tos[i] not in seen:
                        chunk.append(i)
                        seen.add(tos[i])
                        break
                else:
                    chunks.append(([i], {tos[i]}))
            calls += [Call(chunk, request_key(ids, chunk)) for chunk, _ in chunks]
        return calls

    async def send(self, batch: MessageBatch) -> Sequence[SubmitResult]:
        """Send the batch's filed-template messages; one result per message, in order."""
        if self._auth is not None:
            raise self._auth
        params = batch.params
        if params is None or not any(p is not None and p[0].provider == "tencent" for p in params):
            raise GatewayAuthError(
                f"{self.name}: Tencent sends only templates filed in its console: give the campaign a "
                '[template.provider] with provider = "tencent" (docs/providers-aliyun-tencent.md)'
            )
        calls = self._plan(batch, params)

        async def make(call: Call) -> None:
            await self._call(batch, params, call)

        try:
            results, auth = await run_calls(
                batch, calls, make, on_ambiguous=lambda c: self._journal(batch, c), probe=self._probe
            )
        except GatewayAuthError as exc:
            self._auth = exc
            raise
        if auth is not None:
            self._auth = auth
        for i, p in enumerate(params):
            if p is None or p[0].provider != "tencent":
                results[i] = _NOT_FILED
        return results

    def _journal(self, batch: MessageBatch, call: Call) -> None:
        ids, tos = batch.ids, batch.tos
        self.unsettled.add(call.key, [ids[i] for i in call.indices], [tos[i] for i in call.indices])

    async def _call(self, batch: MessageBatch, params: Sequence[ProviderParams | None], call: Call) -> None:
        tos, texts = batch.tos, batch.texts
        first = params[call.indices[0]]
        assert first is not None
        req: dict[str, Any] = {
            "PhoneNumberSet": [tos[i] for i in call.indices],
            "SmsSdkAppId": self.config.sdk_app_id,
            "SignName": sign_name(texts[call.indices[0]]),
            "TemplateId": first[0].code,
            "TemplateParamSet": list(first[1]),
            "SessionContext": call.key,
        }
        if self.config.extend_code:
            req["ExtendCode"] = self.config.extend_code
        resp = await self.call("SendSms", req)
        error = resp.get("Error")
        if isinstance(error, dict):
            code = str(error.get("Code", ""))
            outcome, after = classify(code)
            if outcome == "account":
                raise GatewayAuthError(
                    f"{self.name}: Tencent refused the request: {code}: {error.get('Message', '')}"
                )
            if outcome == "ambiguous":
                self._journal(batch, call)
            call.results = dict.fromkeys(call.indices, _result(outcome, code, after))
            return
        sets = resp.get("SendStatusSet")
        if not isinstance(sets, list):
            raise GatewayProtocolError(f"{self.name}: no SendStatusSet in the answer")
        by_number = {str(s.get("PhoneNumber", "")): s for s in sets if isinstance(s, dict)}
        accounts: list[str] = []
        ambiguous = False
        for i in call.indices:
            s = by_number.get(tos[i])
            if s is None:
                ambiguous = True
                call.results[i] = SubmitResult(Outcome.UNKNOWN, code="ambiguous:missing_result")
                continue
            code = str(s.get("Code", ""))
            if code == "Ok":
                call.results[i] = SubmitResult(Outcome.ACCEPTED, provider_id=str(s.get("SerialNo", "")))
                continue
            outcome, after = classify(code)
            if outcome == "account":
                accounts.append(f"{code}: {s.get('Message', '')}")
                call.results[i] = SubmitResult(Outcome.RETRY, code=code)
                continue
            ambiguous = ambiguous or outcome == "ambiguous"
            call.results[i] = _result(outcome, code, after)
        if accounts and len(accounts) == len(call.indices):
            raise GatewayAuthError(f"{self.name}: Tencent refused the request: {accounts[0]}")
        if accounts:
            self._auth = GatewayAuthError(f"{self.name}: Tencent refused: {accounts[0]}")
        if ambiguous:
            self._journal(batch, call)

    async def call(self, action: str, req: dict[str, Any]) -> dict[str, Any]:
        """Make one signed call; the ``Response`` object of its answer."""
        body = json.dumps(req, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = self._signer.headers(action, body)
        self.calls += 1
        status, answer = await self._client.post("/", headers, body)
        try:
            doc = json.loads(answer)
        except ValueError:
            doc = None
        if status >= 500:
            raise GatewayUnavailable(f"{self.name}: HTTP {status}")
        if not isinstance(doc, dict) or not isinstance(doc.get("Response"), dict):
            raise GatewayProtocolError(f"{self.name}: HTTP {status}: {answer[:200]!r}")
        response: dict[str, Any] = doc["Response"]
        return response

    async def settle(self, queries: Sequence[SettleQuery], *, rounds: int = 100) -> Settled:
        """Pull delivery statuses (PullSmsSendStatus, 100 a call, until none is left or ``rounds``
        calls were made).

        The pull hands each status out once and knows nothing of ``queries``: every status comes
        back (:attr:`~engine.sending.settling.Settled.consumed`), keyed by its ``SessionContext`` with its
        SerialNo as provider id — those of requests that got no answer match their queries, the
        others are receipts of messages Tencent answered for. A message whose status has not come
        (not delivered yet, or never taken: the pull cannot tell) stays ``unknown``.
        """
        del queries  # the pull is not by number
        out: list[ProviderStatus] = []
        for _ in range(rounds):
            resp = await self.call("PullSmsSendStatus", {"Limit": 100, "SmsSdkAppId": self.config.sdk_app_id})
            error = resp.get("Error")
            if isinstance(error, dict):
                raise GatewayProtocolError(
                    f"{self.name}: PullSmsSendStatus: {error.get('Code')}: {error.get('Message', '')}"
                )
            items = resp.get("PullSmsSendStatusSet") or []
            for s in items if isinstance(items, list) else []:
                if not isinstance(s, dict):
                    continue
                ok = s.get("ReportStatus") == "SUCCESS"
                try:
                    received = float(s.get("UserReceiveTime") or 0)
                except (TypeError, ValueError):
                    received = 0.0
                out.append(
                    ProviderStatus(
                        number=str(s.get("PhoneNumber", "")),
                        key=str(s.get("SessionContext", "")),
                        status=DeliveryStatus.DELIVERED if ok else DeliveryStatus.FAILED,
                        code=str(s.get("Description") or s.get("ReportStatus", "")),
                        provider_id=str(s.get("SerialNo", "")),
                        at=received,
                        done_at=received,
                    )
                )
            if not isinstance(items, list) or len(items) < 100:
                break
        return Settled(statuses=out, consumed=True)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


def _result(outcome: str, code: str, after: float) -> SubmitResult:
    if outcome == "throttled":
        return SubmitResult(Outcome.THROTTLED, code=code, retry_after=after)
    if outcome == "retry":
        return SubmitResult(Outcome.RETRY, code=code, retry_after=after)
    if outcome == "ambiguous":
        return SubmitResult(Outcome.UNKNOWN, code=f"ambiguous:{code}")
    return SubmitResult(Outcome.REJECTED, code=code, permanent=outcome == "rejected")


@hookimpl
def register_gateways(gateways: GatewayRegistry) -> None:
    """Register ``tencent``."""
    gateways.add("tencent", TencentGateway, TencentConfig, description="Tencent Cloud SMS, filed templates")


@hookimpl
def register_webhook_parsers(parsers: WebhookParserRegistry) -> None:
    """Register ``tencent``: status and reply callbacks."""
    parsers.add("tencent", TencentParser)
