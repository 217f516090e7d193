"""The ``aliyun`` gateway: filed templates to Dysmsapi SendSms / SendBatchSms on one pooled client.

Each batch is grouped by template, signature and parameter values: a group of equal parameters goes
as one SendSms (up to 1,000 numbers, comma-joined), the messages with parameters of their own as
SendBatchSms (up to 100 numbers, each with its parameters). The calls are made at once
(:mod:`plugins.cloudsms.calls`). An answer's ``BizId`` is one per request; a message's provider id
is ``<BizId>-<number>``, what the delivery receipt names it by.

Codes (:mod:`plugins.gateway_aliyun.codes`): ``OK`` → accepted; throttling → ``throttled`` (the lane
slows down); blacklist / invalid number / bad parameter → ``rejected`` (permanent, with the code) —
in a request of several messages the request is split in halves and sent again so that only the
guilty message is refused; ``isp.SYSTEM_ERROR`` → ``retry``; signature, template, credential and
account errors → :class:`~pigeon.GatewayAuthError` (the campaign stops with the reason, its
recipients stay pending). Connection refused → :class:`~pigeon.GatewayUnreachable`; 5xx
without a code → :class:`~pigeon.GatewayUnavailable`; no answer after the request was
written → :class:`~pigeon.GatewayTimeout` (the messages end ``unknown``; their calls are
journalled with their numbers, and :meth:`AliyunGateway.settle` asks QuerySendDetails about them).

Each request's ``OutId`` is the message id of its first message (:func:`engine.sending.settling.request_key`):
QuerySendDetails echoes it, so ``pigeon settle`` can tell which record is which message's from
the ledger alone.

**Managed links** (:class:`~engine.sending.gateway.ManagedLinks`, a campaign's ``[links] mode =
"provider"``): :meth:`AliyunGateway.create_links` calls ``CreateSmartShortUrl`` with up to
``links_batch`` numbers a request (the API states no limit; 100 by default, to stay well inside
what its sibling SendBatchSms takes), ``query_concurrency`` requests at once;
:meth:`AliyunGateway.link_clicks` pages ``QueryPageSmartShortUrlLog`` (which filters by the links'
creation dates, not by ``OutId``) and keeps the rows with ``ClickState`` 1. Their codes are
classified as SendSms's: throttling and ``isp.SYSTEM_ERROR`` wait and ask again (five times at
most, then :class:`~pigeon.GatewayUnavailable`), account errors raise
:class:`~pigeon.GatewayAuthError`, a per-number refusal in a request of several numbers splits it
in halves so only that number goes without a link.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Sequence
from itertools import repeat
from operator import itemgetter
from typing import Annotated, Any, Literal, cast
from zoneinfo import ZoneInfo

import anyio
import httpx
import msgspec

from engine.sending.gateway import LinkClick, ManagedLink
from engine.sending.settling import SKEW, Journal, ProviderStatus, Settled, SettleQuery, request_key
from pigeon import (
    ConfigError,
    DeliveryStatus,
    GatewayAuthError,
    GatewayContext,
    GatewayError,
    GatewayProtocolError,
    GatewayRegistry,
    GatewayUnavailable,
    MessageBatch,
    Outcome,
    ProviderParams,
    SubmitResult,
    WebhookParserRegistry,
    hookimpl,
)
from plugins.cloudsms.calls import Call, Probe, national, run_calls, sign_name
from plugins.cloudsms.http import CloudClient
from plugins.gateway_aliyun.api import Signer, create_links_query, link_log_query
from plugins.gateway_aliyun.codes import PER_MESSAGE, classify
from plugins.gateway_aliyun.webhooks import AliyunParser

__all__ = ["AliyunConfig", "AliyunGateway"]

SEND_SMS_MAX = 1000
BATCH_SMS_MAX = 100
QUERY_PAGE = 50
"""QuerySendDetails' largest page."""
LINKS_BATCH = 100
"""CreateSmartShortUrl numbers per request by default (the API documents no limit: conservative)."""
LINK_LOG_PAGE = 50
"""QueryPageSmartShortUrlLog rows per page (no documented maximum: QuerySendDetails' page size)."""
_LINK_TRIES = 6
_SHANGHAI = ZoneInfo("Asia/Shanghai")
_THROTTLED = frozenset({"Throttling.User", "Throttling", "isv.BUSINESS_LIMIT_CONTROL"})


class AliyunConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``plugin = "aliyun"`` options."""

    url: str = "https://dysmsapi.aliyuncs.com"
    """The Dysmsapi endpoint (the simulator's address in tests)."""
    access_key_id_env: str = "ALIBABA_CLOUD_ACCESS_KEY_ID"
    """Environment variable holding the AccessKey ID (keys stay out of config files)."""
    access_key_secret_env: str = "ALIBABA_CLOUD_ACCESS_KEY_SECRET"
    signature: Literal["acs3", "rpc"] = "acs3"
    """``acs3`` (ACS3-HMAC-SHA256, the SDK's default) or ``rpc`` (the older HMAC-SHA1)."""
    max_batch: Annotated[int, msgspec.Meta(ge=1, le=SEND_SMS_MAX)] = SEND_SMS_MAX
    """Messages per gateway batch (SendSms takes 1,000 numbers; per-number parameters go by 100)."""
    group_min: Annotated[int, msgspec.Meta(ge=1)] = 2
    """Messages with equal parameters that go as one SendSms rather than by SendBatchSms."""
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 16
    timeout: Annotated[float, msgspec.Meta(ge=1)] = 10.0
    """Seconds for a whole request (Aliyun asks for at least 1 s)."""
    connect_timeout: Annotated[float, msgspec.Meta(gt=0)] = 3.0
    sms_up_extend_code: str = ""
    """``SmsUpExtendCode``: the extension replies come back to (empty: none)."""
    query_lag: Annotated[float, msgspec.Meta(ge=0)] = 600.0
    """Seconds after a send before QuerySendDetails is trusted to list it: a message it does not
    list by then was never taken (``failed``, ``pigeon.NOT_SENT``); sooner it stays ``unknown``."""
    query_concurrency: Annotated[int, msgspec.Meta(ge=1, le=64)] = 8
    """QuerySendDetails calls in flight at once while settling (one per number), and
    CreateSmartShortUrl calls in flight at once for a batch's links."""
    links_batch: Annotated[int, msgspec.Meta(ge=1, le=SEND_SMS_MAX)] = LINKS_BATCH
    """Numbers per CreateSmartShortUrl request (provider-managed links; the API states no limit)."""


def _secret(env: str, gateway: str, key: str) -> str:
    value = os.environ.get(env, "")
    if not value:
        raise ConfigError(gateway, f"options.{key}", f"the environment variable {env} is not set")
    return value


_NOT_FILED = SubmitResult(Outcome.REJECTED, code="pigeon.NOT_A_FILED_TEMPLATE", permanent=True)


class AliyunGateway:
    """Dysmsapi over one pooled client, signing every request itself."""

    idempotent = False
    """SendSms is not idempotent: a request without an answer is not sent again (it is settled)."""
    template_provider = "aliyun"
    """It sends only templates filed with Aliyun (the service refuses other messages for it)."""
    managed_links = True
    """It makes per-phone short links (CreateSmartShortUrl) and reads their clicks."""

    def __init__(self, config: AliyunConfig, ctx: GatewayContext) -> None:
        self.name = ctx.name
        self.max_batch = config.max_batch
        self.config = config
        url = httpx.URL(config.url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(
                ctx.name, "options.url", f"expected an http:// or https:// URL, got {config.url!r}"
            )
        self._host = url.netloc.decode("ascii")
        self._signer = Signer(
            _secret(config.access_key_id_env, ctx.name, "access_key_id_env"),
            _secret(config.access_key_secret_env, ctx.name, "access_key_secret_env"),
            host=self._host,
            algorithm=config.signature,
        )
        self._client = CloudClient(
            f"{url.scheme}://{self._host}",
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
        """Requests made (for tests and load tests)."""

    # -- sending -------------------------------------------------------------------------

    def _plan(
        self, batch: MessageBatch, params: Sequence[ProviderParams | None]
    ) -> tuple[list[Call], list[Call], bool]:
        """(SendSms calls, SendBatchSms calls, whether every message is a filed Aliyun template's)
        for the filed-template messages of ``batch``.

        The usual batch — one template, one signature, numbers unique — is grouped with C-level
        passes and one dictionary insert per message (this runs for every message sent)."""
        texts, ids, tos = batch.texts, batch.ids, batch.tos
        groups: dict[tuple[str, str, tuple[str, ...]], list[int]] = {}
        sign0 = sign_name(texts[0]) if texts else ""
        head = f"【{sign0}】"
        one_sign = bool(sign0) and all(map(str.startswith, texts, repeat(head)))
        all_filed = None not in params
        one_template = all_filed and len({id(p[0]) for p in params if p is not None}) == 1
        first = params[0] if params else None
        if one_sign and one_template and first is not None and first[0].provider == "aliyun":
            code = first[0].code
            by_values: dict[tuple[str, ...], list[int]] = {}
            for i, v in enumerate(map(itemgetter(1), cast("Sequence[ProviderParams]", params))):
                by_values.setdefault(v, []).append(i)
            groups = {(code, sign0, v): idx for v, idx in by_values.items()}
        else:
            all_filed = True
            for i, p in enumerate(params):
                if p is not None and p[0].provider == "aliyun":
                    groups.setdefault((p[0].code, sign_name(texts[i]), p[1]), []).append(i)
                else:
                    all_filed = False
        singles: dict[str, list[int]] = {}
        grouped: list[Call] = []
        for (code, _, _), idx in groups.items():
            if len(idx) < self.config.group_min:
                singles.setdefault(code, []).extend(idx)
                continue
            if len(set(map(tos.__getitem__, idx))) == len(idx):  # numbers unique: slices
                chunked = [idx[k : k + SEND_SMS_MAX] for k in range(0, len(idx), SEND_SMS_MAX)]
            else:  # one number once per request: a repeated number goes in the next one
                chunks: list[tuple[list[int], set[str]]] = []
                for i in idx:
                    n = tos[i]
                    for chunk, seen in chunks:
                        if len(chunk) < SEND_SMS_MAX and n not in seen:
                            chunk.append(i)
                            seen.add(n)
                            break
                    else:
                        chunks.append(([i], {n}))
                chunked = [chunk for chunk, _ in chunks]
            grouped += [Call(chunk, request_key(ids, chunk)) for chunk in chunked]
        batched = [
            Call(part, request_key(ids, part))
            for idx in singles.values()
            for k in range(0, len(idx), BATCH_SMS_MAX)
            if (part := idx[k : k + BATCH_SMS_MAX])
        ]
        return grouped, batched, all_filed

    async def send(self, batch: MessageBatch) -> Sequence[SubmitResult]:
        """Send the batch's filed-template messages; one result per message, in order."""
        if self._auth is not None:
            raise self._auth
        params = batch.params
        if params is None or not any(p is not None and p[0].provider == "aliyun" for p in params):
            raise GatewayAuthError(
                f"{self.name}: Aliyun sends only templates filed in its console: give the campaign a "
                '[template.provider] with provider = "aliyun" (docs/providers-aliyun-tencent.md)'
            )
        grouped, batched, all_filed = self._plan(batch, params)
        calls = [*grouped, *batched]
        single = {id(c) for c in grouped}

        async def make(call: Call) -> None:
            await self._call(batch, params, call, bulk=id(call) in single)

        try:
            results, auth = await run_calls(
                batch, calls, make, on_ambiguous=lambda c: self._journal(batch, c), probe=self._probe
            )
        except GatewayAuthError as exc:
            self._auth = exc
            raise
        if auth is not None:
            self._auth = auth
        if not all_filed:
            for i, p in enumerate(params):
                if p is None or p[0].provider != "aliyun":
                    results[i] = _NOT_FILED
        return results

    def _journal(self, batch: MessageBatch, call: Call) -> None:
        ids, tos = batch.ids, batch.tos
        self.unsettled.add(call.key, [ids[i] for i in call.indices], [tos[i] for i in call.indices])

    def _request(
        self, batch: MessageBatch, params: Sequence[ProviderParams | None], call: Call, bulk: bool
    ) -> tuple[str, dict[str, str]]:
        tos, texts = batch.tos, batch.texts
        first = params[call.indices[0]]
        assert first is not None
        template = first[0]
        if bulk:
            values = first[1]
            q: dict[str, str] = {
                "PhoneNumbers": _nationals(tos, call.indices),
                "SignName": sign_name(texts[call.indices[0]]),
                "TemplateCode": template.code,
                "OutId": call.key,
            }
            if template.names:
                q["TemplateParam"] = _json(dict(zip(template.names, values, strict=True)))
            if self.config.sms_up_extend_code:
                q["SmsUpExtendCode"] = self.config.sms_up_extend_code
            return "SendSms", q
        rows = [params[i] for i in call.indices]
        q = {
            "PhoneNumberJson": _json([national(tos[i]) for i in call.indices]),
            "SignNameJson": _json([sign_name(texts[i]) for i in call.indices]),
            "TemplateCode": template.code,
            "OutId": call.key,
        }
        if template.names:
            q["TemplateParamJson"] = _json([dict(zip(p[0].names, p[1], strict=True)) for p in rows if p])
        if self.config.sms_up_extend_code:
            q["SmsUpExtendCodeJson"] = _json([self.config.sms_up_extend_code] * len(call.indices))
        return "SendBatchSms", q

    async def _call(
        self, batch: MessageBatch, params: Sequence[ProviderParams | None], call: Call, *, bulk: bool
    ) -> None:
        action, query = self._request(batch, params, call, bulk)
        doc = await self.call(action, query)
        code = str(doc.get("Code", ""))
        tos = batch.tos
        if code == "OK":
            prefix = f"{doc.get('BizId', '')}-"
            numbers = _nationals(tos, call.indices).split(",")
            call.results = {
                i: SubmitResult(Outcome.ACCEPTED, provider_id=prefix + n)
                for i, n in zip(call.indices, numbers, strict=True)
            }
            return
        outcome, after = classify(code, str(doc.get("Message", "")))
        if outcome == "rejected" and code in PER_MESSAGE and len(call.indices) > 1:
            half = len(call.indices) // 2
            ids = batch.ids
            parts = [
                Call(call.indices[:half], request_key(ids, call.indices[:half])),
                Call(call.indices[half:], request_key(ids, call.indices[half:])),
            ]
            for part in parts:  # one after the other: a refused request sent nothing
                await self._call(batch, params, part, bulk=bulk)
                call.results.update(part.results)
            return
        if outcome == "account":
            raise GatewayAuthError(
                f"{self.name}: Aliyun refused the request: {code}: {doc.get('Message', '')}"
            )
        if outcome == "ambiguous":
            self._journal(batch, call)
        call.results = dict.fromkeys(call.indices, _result(outcome, code, after))

    async def call(self, action: str, params: dict[str, str]) -> dict[str, Any]:
        """Make one signed Dysmsapi call; its JSON answer (raises a gateway error when unreadable)."""
        target, headers = self._signer.target(action, params)
        self.calls += 1
        status, body = await self._client.post(target, headers, b"")
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or "Code" not in doc:
            if status >= 500:
                raise GatewayUnavailable(f"{self.name}: HTTP {status}")
            raise GatewayProtocolError(f"{self.name}: HTTP {status}: {body[:200]!r}")
        if status >= 500 and doc.get("Code") != "isp.SYSTEM_ERROR":
            raise GatewayUnavailable(f"{self.name}: HTTP {status}: {doc.get('Code')}")
        return doc

    # -- managed links -------------------------------------------------------------------

    async def create_links(self, phones: Sequence[str], target: str, out_id: str) -> list[ManagedLink]:
        """One smart short link per phone (E.164) to ``target``, index-aligned with ``phones``; a
        phone Aliyun made none for gets an empty ``url``. ``links_batch`` numbers a request,
        ``query_concurrency`` requests at once."""
        if self._auth is not None:
            raise self._auth
        found: dict[int, ManagedLink] = {}
        size = self.config.links_batch
        chunks = [list(range(k, min(k + size, len(phones)))) for k in range(0, len(phones), size)]
        limiter = anyio.CapacityLimiter(self.config.query_concurrency)

        async def one(chunk: list[int]) -> None:
            async with limiter:
                await self._create(phones, chunk, target, out_id, found)

        try:
            async with anyio.create_task_group() as tg:
                for chunk in chunks:
                    tg.start_soon(one, chunk)
        except BaseExceptionGroup as group:  # the first gateway error, as ``send`` would raise it
            first = group.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        return [found.get(i) or ManagedLink(phone=phones[i], url="") for i in range(len(phones))]

    async def _create(
        self, phones: Sequence[str], chunk: list[int], target: str, out_id: str, found: dict[int, ManagedLink]
    ) -> None:
        nationals = [national(phones[i]) for i in chunk]
        params = create_links_query(nationals, target, out_id)
        doc = await self._link_call("CreateSmartShortUrl", params, per_number=True)
        if doc is None:  # a number refused the request: each half again (a lone number: no link)
            if len(chunk) == 1:
                return
            half = len(chunk) // 2
            await self._create(phones, chunk[:half], target, out_id, found)
            await self._create(phones, chunk[half:], target, out_id, found)
            return
        model = doc.get("Model")
        by_number = {
            str(m.get("PhoneNumber", "")): m
            for m in (model if isinstance(model, list) else [])
            if isinstance(m, dict)
        }
        for i, n in zip(chunk, nationals, strict=True):
            m = by_number.get(n)
            if m is not None and m.get("ShortUrl"):
                found[i] = ManagedLink(
                    phone=phones[i], url=str(m["ShortUrl"]), expires_at=_epoch(m.get("Expiration"))
                )

    async def link_clicks(self, out_id: str, since: float) -> list[LinkClick]:
        """The clicked rows of QueryPageSmartShortUrlLog for links made from ``since``'s Beijing
        date to today's, every page (the log does not filter by ``out_id``: the engine keeps the
        clicks on links it made for the campaign)."""
        if self._auth is not None:
            raise self._auth
        start, end = _day(since), _day(time.time())
        out: list[LinkClick] = []
        page = 1
        while True:
            query = link_log_query(start, end, page, LINK_LOG_PAGE)
            doc = await self._link_call("QueryPageSmartShortUrlLog", query)
            assert doc is not None
            model = doc.get("Model")
            model = model if isinstance(model, dict) else {}
            rows = model.get("List")
            rows = [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
            out += [c for r in rows if (c := _click(r)) is not None]
            try:
                pages = int(model.get("TotalPage") or 0)
            except (TypeError, ValueError):
                pages = 0
            if len(rows) < LINK_LOG_PAGE or (pages and page >= pages) or page >= 100_000:
                return out
            page += 1

    async def _link_call(
        self, action: str, params: dict[str, str], *, per_number: bool = False
    ) -> dict[str, Any] | None:
        """A links call's answer (``Code`` OK); None when ``per_number`` and a code about one number
        (:data:`~plugins.gateway_aliyun.codes.PER_MESSAGE`) refused it.
        Throttling and system errors wait and ask again; the rest raise gateway errors."""
        for attempt in range(_LINK_TRIES):
            doc = await self.call(action, params)
            code = str(doc.get("Code", ""))
            if code == "OK":
                return doc
            message = str(doc.get("Message", ""))
            outcome, after = classify(code, message)
            if outcome == "account":
                self._auth = GatewayAuthError(f"{self.name}: Aliyun refused {action}: {code}: {message}")
                raise self._auth
            if per_number and code in PER_MESSAGE and code != "isv.BUSINESS_LIMIT_CONTROL":
                return None
            if outcome in ("throttled", "retry") and attempt < _LINK_TRIES - 1:
                await anyio.sleep(min(max(after, 0.2 * 2**attempt), 5.0))
                continue
            if outcome in ("throttled", "retry", "capped"):
                raise GatewayUnavailable(f"{self.name}: {action}: {code}: {message}")
            raise GatewayError(f"{self.name}: Aliyun refused {action}: {code}: {message}")
        raise AssertionError("unreachable")  # pragma: no cover

    # -- settling ------------------------------------------------------------------------

    async def settle(self, queries: Sequence[SettleQuery]) -> Settled:
        """Ask QuerySendDetails about each query's number on the day(s) of its send (Beijing time),
        every page, ``query_concurrency`` at a time.

        Every record becomes a :class:`~engine.sending.settling.ProviderStatus` (``SendStatus`` 3
        delivered, 2 failed, 1 waiting for its receipt) keyed by its ``OutId``. The answer lists
        every record of those numbers, so a query sent more than ``query_lag`` seconds ago is in
        :attr:`~engine.sending.settling.Settled.listed`: no record of it means Aliyun never took it.
        Throttled queries wait and ask again (five times at most).
        """
        statuses: list[ProviderStatus] = []
        limiter = anyio.CapacityLimiter(self.config.query_concurrency)
        asked: dict[tuple[str, str], list[ProviderStatus]] = {}
        wanted = sorted({(q.number, day) for q in queries for day in _days(q.sent_at)})

        async def one(number: str, day: str) -> None:
            async with limiter:
                asked[(number, day)] = await self._details(number, day)

        async with anyio.create_task_group() as tg:
            for number, day in wanted:
                tg.start_soon(one, number, day)
        for number, day in wanted:
            statuses += asked[(number, day)]
        cutoff = time.time() - self.config.query_lag
        listed = frozenset(q.message_id for q in queries if q.sent_at <= cutoff)
        return Settled(statuses=statuses, listed=listed)

    async def _details(self, number: str, day: str) -> list[ProviderStatus]:
        """Every record of ``number`` (E.164) sent on ``day`` (``yyyyMMdd``)."""
        out: list[ProviderStatus] = []
        page = 1
        while True:
            doc = await self._query(national(number), day, page)
            dto = doc.get("SmsSendDetailDTOs") or {}
            rows = dto.get("SmsSendDetailDTO", []) if isinstance(dto, dict) else dto
            rows = [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
            out += [_status(r, number) for r in rows]
            try:
                total = int(doc.get("TotalCount") or 0)
            except (TypeError, ValueError):
                total = 0
            if len(rows) < QUERY_PAGE or len(out) >= total or page >= 100:
                return out
            page += 1

    async def _query(self, number: str, day: str, page: int) -> dict[str, Any]:
        params = {
            "PhoneNumber": number,
            "SendDate": day,
            "PageSize": str(QUERY_PAGE),
            "CurrentPage": str(page),
        }
        for attempt in range(6):
            doc = await self.call("QuerySendDetails", params)
            code = str(doc.get("Code", ""))
            if code == "OK":
                return doc
            if code not in _THROTTLED or attempt == 5:
                raise GatewayProtocolError(f"{self.name}: QuerySendDetails: {code}: {doc.get('Message', '')}")
            await anyio.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


_STATUS = {"1": DeliveryStatus.UNKNOWN, "2": DeliveryStatus.FAILED, "3": DeliveryStatus.DELIVERED}


def _days(sent_at: float) -> list[str]:
    """The Beijing dates (``yyyyMMdd``) a send handed over at ``sent_at`` may be filed under."""
    first = _day(sent_at)
    late = _day(sent_at + SKEW)
    return [first] if late == first else [first, late]


def _day(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, _SHANGHAI).strftime("%Y%m%d")


def _when(text: object) -> float:
    """Epoch seconds of Aliyun's ``yyyy-MM-dd HH:mm:ss`` (Beijing time); 0 when absent or unreadable."""
    try:
        naive = datetime.datetime.strptime(str(text), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return 0.0
    return naive.replace(tzinfo=_SHANGHAI).timestamp()


def _status(row: dict[str, Any], number: str) -> ProviderStatus:
    """One QuerySendDetails record."""
    status = _STATUS.get(str(row.get("SendStatus")), DeliveryStatus.UNKNOWN)
    code = str(row.get("ErrCode") or "")
    return ProviderStatus(
        number=number,
        key=str(row.get("OutId") or ""),
        status=status,
        code=code or ("DELIVERED" if status == DeliveryStatus.DELIVERED else ""),
        at=_when(row.get("SendDate")),
        done_at=_when(row.get("ReceiveDate")) if status != DeliveryStatus.UNKNOWN else 0.0,
    )


def _epoch(value: object) -> float:
    """Epoch seconds of an Aliyun ``Long`` time (milliseconds, or seconds); 0 when absent or unreadable."""
    try:
        n = float(cast("Any", value))
    except (TypeError, ValueError):
        return 0.0
    if n > 1e11:
        return n / 1000.0
    return n if n > 1e8 else 0.0


def _e164(number: str) -> str:
    """A number as Aliyun echoes it (:func:`national`) back to E.164."""
    if number.startswith("+"):
        return number
    if len(number) == 11 and number.startswith("1"):
        return "+86" + number
    return "+" + number


def _click(row: dict[str, Any]) -> LinkClick | None:
    """A QueryPageSmartShortUrlLog row as a click (None: not clicked)."""
    state = row.get("ClickState")
    try:
        clicked = int(cast("Any", state)) == 1
    except (TypeError, ValueError):
        clicked = False
    if not clicked:
        return None
    at = _epoch(row.get("ClickTime")) or _epoch(row.get("CreateTime"))
    return LinkClick(
        phone=_e164(str(row.get("PhoneNumber") or "")), clicked_at=at, url=str(row.get("ShortUrl") or "")
    )


def _nationals(tos: Sequence[str], indices: Sequence[int]) -> str:
    """The numbers at ``indices`` as Aliyun takes and echoes them (:func:`national`), comma-joined:
    Chinese ones (all, usually) by one C-level join and replace."""
    joined = ",".join(map(tos.__getitem__, indices))
    if joined.count("+86") == len(indices) == joined.count("+"):
        return joined.replace("+86", "")
    return ",".join(national(tos[i]) for i in indices)


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _result(outcome: str, code: str, after: float) -> SubmitResult:
    if outcome == "throttled":
        return SubmitResult(Outcome.THROTTLED, code=code, retry_after=after)
    if outcome == "retry":
        return SubmitResult(Outcome.RETRY, code=code, retry_after=after)
    if outcome == "ambiguous":
        return SubmitResult(Outcome.UNKNOWN, code=f"ambiguous:{code}")
    if outcome == "accepted":  # a success code other than OK: keep it, without an id
        return SubmitResult(Outcome.ACCEPTED)
    return SubmitResult(Outcome.REJECTED, code=code, permanent=outcome == "rejected")


@hookimpl
def register_gateways(gateways: GatewayRegistry) -> None:
    """Register ``aliyun``."""
    gateways.add(
        "aliyun", AliyunGateway, AliyunConfig, description="Alibaba Cloud SMS (Dysmsapi), filed templates"
    )


@hookimpl
def register_webhook_parsers(parsers: WebhookParserRegistry) -> None:
    """Register ``aliyun``: SmsReport receipts and SmsUp replies."""
    parsers.add("aliyun", AliyunParser)
