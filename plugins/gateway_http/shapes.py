"""The ``http`` gateway's request and response shapes: a batch into a body, an answer into outcomes.

Providers differ (reference §4): JSON or form bodies; one message per request, a list of message
objects, or one list per field (``PhoneNumberSet``) or a comma-joined string (``PhoneNumbers``);
a result list (matched by order, by an echoed id or by the number) or one result for the whole
request; success, throttle and reject expressed as a status word or as provider codes. A
:class:`RequestShape` and a :class:`ResponseShape` (``[gateways.<name>.options.request]`` and
``.response``) describe one provider; the defaults are Pigeon's own JSON contract.

Provider codes map to outcome classes (§4.5) through :data:`DEFAULT_CODES` merged with the
gateway's ``codes`` table (entries ending in ``*`` match by prefix):

========== ===================================================================================
accepted   taken; the provider id is recorded
throttled  too fast for the provider: the gateway slows down, the message goes again
retry      a transient refusal: the message goes again after a backoff
rejected   a permanent refusal of this recipient or content: failed, never resent
capped     a per-recipient cap (daily/hourly limit): failed now with the code, not resent
window     outside the provider's hours: failed with the code (the engine's windows should hold it)
ambiguous  the provider does not know (internal timeout): resent only on an idempotent gateway,
           otherwise ``unknown`` with ``ambiguous:<code>`` — a delivery report settles it
account    the account cannot send (balance, arrears, permissions): the request fails as a
           whole (:class:`~pigeon.GatewayAuthError`) so its carriers fail over
========== ===================================================================================
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, cast

import msgspec

from pigeon import GatewayAuthError, GatewayProtocolError, MessageBatch, Outcome, SubmitResult

__all__ = [
    "DEFAULT_CODES",
    "DEFAULT_STATUSES",
    "BodyEncoder",
    "CodeTable",
    "FieldNames",
    "OutcomeName",
    "RequestShape",
    "ResponseReader",
    "ResponseShape",
]

OutcomeName = Literal[
    "accepted", "throttled", "retry", "rejected", "capped", "window", "ambiguous", "account"
]
Scalar = str | int | float | bool
OUTCOMES: tuple[str, ...] = OutcomeName.__args__  # type: ignore[attr-defined]

DEFAULT_STATUSES: dict[str, OutcomeName] = {
    "accepted": "accepted",
    "rejected": "rejected",
    "retry": "retry",
    "throttled": "throttled",
}
"""Pigeon's contract: the ``status`` word of each result."""

DEFAULT_CODES: dict[str, OutcomeName] = {
    # Pigeon's contract (and the simulator)
    "throttled": "throttled",
    "INVALID_NUMBER": "rejected",
    # Aliyun Dysmsapi (§4.1)
    "OK": "accepted",
    "isp.SYSTEM_ERROR": "ambiguous",
    "isv.BUSINESS_LIMIT_CONTROL": "capped",
    "isv.DAY_LIMIT_CONTROL": "capped",
    "isv.MONTH_LIMIT_CONTROL": "capped",
    "VALVE:*": "capped",
    "isv.OUT_OF_SERVICE": "account",
    "isv.AMOUNT_NOT_ENOUGH": "account",
    "isv.ACCOUNT_ABNORMAL": "account",
    "isv.PRODUCT_UN_SUBSCRIPT": "account",
    "isp.RAM_PERMISSION_DENY": "account",
    "isv.DENY_IP_RANGE": "account",
    "isv.MOBILE_NUMBER_ILLEGAL": "rejected",
    "isv.BLACK_KEY_CONTROL_LIMIT": "rejected",
    "isv.SMS_CONTENT_ILLEGAL": "rejected",
    "isv.SMS_SIGN_ILLEGAL": "rejected",
    "isv.SMS_SIGNATURE_SCENE_ILLEGAL": "rejected",
    "isv.SIGN_STATE_ILLEGAL": "rejected",
    "isv.SMS_TEMPLATE_ILLEGAL": "rejected",
    "isv.TEMPLATE_MISSING_PARAMETERS": "rejected",
    "isv.TEMPLATE_PARAMS_ILLEGAL": "rejected",
    "isv.PARAM_LENGTH_LIMIT": "rejected",
    "isv.MOBILE_COUNT_OVER_LIMIT": "rejected",
    "isv.INVALID_PARAMETERS": "rejected",
    "isv.PARAM_NOT_SUPPORT_URL": "rejected",
    "FILTER": "rejected",
    # Tencent Cloud SMS 2021-01-11 (§4.2)
    "Ok": "accepted",
    "RequestLimitExceeded": "throttled",
    "LimitExceeded.DeliveryFrequencyLimit": "throttled",
    "LimitExceeded.PhoneNumberCountLimit": "rejected",
    "LimitExceeded.PhoneNumber*": "capped",
    "LimitExceeded.AppDailyLimit": "account",
    "LimitExceeded.AppMainlandChinaDailyLimit": "account",
    "FailedOperation.MarketingSendTimeConstraint": "window",
    "InvalidParameterValue.*": "rejected",
    "FailedOperation.PhoneNumberParseFail": "rejected",
    "FailedOperation.PhoneNumberInBlacklist": "rejected",
    "FailedOperation.ContainSensitiveWord": "rejected",
    "FailedOperation.SignatureIncorrectOrUnapproved": "rejected",
    "FailedOperation.TemplateIncorrectOrUnapproved": "rejected",
    "FailedOperation.TemplateParamSetNotMatchApprovedTemplate": "rejected",
    "FailedOperation.InsufficientBalanceInSmsPackage": "account",
    "UnauthorizedOperation.*": "account",
    "InternalError.Timeout": "ambiguous",
    "InternalError.OtherError": "ambiguous",
    # Twilio (§4.3): error codes of a refused create
    "20429": "throttled",
    "30001": "throttled",
    "63017": "throttled",
    "21211": "rejected",
    "21610": "rejected",
    "21612": "rejected",
    "21614": "rejected",
    "21608": "rejected",
    "30610": "window",
}
"""Provider codes and their outcome classes per §4.5; a gateway's ``codes`` table overrides them."""


class FieldNames(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The provider's name for each message field; ``""`` leaves the field out of the request."""

    id: str = "id"
    to: str = "to"
    text: str = "text"
    carrier: str = "carrier"
    parts: str = "parts"

    def mapped(self) -> list[tuple[str, str]]:
        """(Pigeon field, provider name) for the fields that are sent, in a fixed order."""
        return [(f, n) for f in ("id", "to", "text", "carrier", "parts") if (n := getattr(self, f))]


class RequestShape(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[gateways.<name>.options.request]``: how a batch is written.

    ``batch``: ``"list"`` — ``{list_key: [{field: value, …}, …], **extra}``; ``"columns"`` — one
    list per field (``{"PhoneNumberSet": [...]}``), or one string joined with ``join``
    (``PhoneNumbers = "a,b"``); ``"single"`` — one message's fields at the top level (set
    ``max_batch = 1``).
    """

    encoding: Literal["json", "form"] = "json"
    """``json`` (``application/json``) or ``form`` (``application/x-www-form-urlencoded``)."""
    batch: Literal["list", "columns", "single"] = "list"
    list_key: str = "messages"
    """For ``batch = "list"``: the key holding the message objects."""
    join: str = ""
    """For ``batch = "columns"``: join each column into one string with this (``","``)."""
    fields: FieldNames = FieldNames()
    to_format: Literal["e164", "national"] = "e164"
    """Numbers as ``+8613800138000`` or, for Chinese numbers, ``13800138000``."""
    extra: dict[str, Scalar] = {}
    """Constant top-level fields (``SignName``, ``TemplateCode``, ``From``…)."""
    message_extra: dict[str, Scalar] = {}
    """For ``batch = "list"``: constant fields added to every message object."""

    def __post_init__(self) -> None:
        if not self.fields.to:
            raise ValueError("`fields.to` must name the recipient field")
        names = [n for _, n in self.fields.mapped()]
        if len(set(names)) != len(names):
            raise ValueError(f"`fields` maps two message fields to one name: {names}")
        if self.encoding == "form" and self.batch == "list":
            raise ValueError(
                '`encoding = "form"` cannot carry a list of objects: use batch "single" or "columns"'
            )
        if self.encoding == "form" and self.batch == "columns" and not self.join:
            raise ValueError('`encoding = "form"` with `batch = "columns"` needs `join` (e.g. ",")')
        if self.batch == "list" and not self.list_key:
            raise ValueError('`list_key` must be set for `batch = "list"`')
        if self.message_extra and self.batch != "list":
            raise ValueError('`message_extra` is only for `batch = "list"` (use `extra`)')
        clash = set(self.extra) & set(names if self.batch != "list" else [self.list_key])
        if clash:
            raise ValueError(f"`extra` repeats a field the request already writes: {sorted(clash)}")


class ResponseShape(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[gateways.<name>.options.response]``: where the answer says what happened to each message.

    Paths are dotted (``Response.SendStatusSet``). ``results = ""`` means the body is one result
    for the whole request (every message gets its provider id and code). Each result's outcome
    is its ``status`` word (through ``statuses``) refined by its ``code`` (through the code
    table); without a ``status`` field the code decides; a result with neither is accepted.
    """

    ok_status: list[Annotated[int, msgspec.Meta(ge=200, le=299)]] = msgspec.field(
        default_factory=lambda: [200]
    )
    """HTTP statuses of a readable answer (Twilio: 201)."""
    results: str = "results"
    match: Literal["order", "id", "to"] = "order"
    """How results pair with messages: in request order, by the echoed ``id``, or by the number."""
    id: str = "id"
    """Field of a result echoing the message id (for ``match = "id"``)."""
    to: str = "to"
    """Field of a result echoing the number (for ``match = "to"``)."""
    provider_id: str = "provider_id"
    status: str = "status"
    """Field of a result with a status word; ``""``: the code decides."""
    code: str = "code"
    error_code: str = "code"
    """Field of the body of a refused request (a 4xx other than 401/403/429) holding its code."""
    statuses: dict[str, str] = msgspec.field(default_factory=lambda: dict(DEFAULT_STATUSES))
    """Status word → outcome class."""
    codes: dict[str, str] = {}
    """Provider code → outcome, over :data:`DEFAULT_CODES`; ``"prefix*"`` keys match by prefix."""
    default: OutcomeName = "rejected"
    """Outcome of a code found in neither table."""

    def __post_init__(self) -> None:
        if self.match == "id" and not self.id:
            raise ValueError('`match = "id"` needs `id`, the field echoing the message id')
        if self.match == "to" and not self.to:
            raise ValueError('`match = "to"` needs `to`, the field echoing the number')
        if not self.ok_status:
            raise ValueError("`ok_status` needs at least one HTTP status")
        for table in ("statuses", "codes"):
            for key, value in getattr(self, table).items():
                if value not in OUTCOMES:
                    expected = ", ".join(OUTCOMES)
                    raise ValueError(
                        f"`{table}.{key}` = {value!r} is not an outcome class; expected one of: {expected}"
                    )


def _national(to: str) -> str:
    return to[3:] if to.startswith("+86") else to


class BodyEncoder:
    """Writes a batch as the provider's request body (built once per gateway from its shape)."""

    def __init__(self, shape: RequestShape) -> None:
        self.shape = shape
        self.content_type = (
            "application/json" if shape.encoding == "json" else "application/x-www-form-urlencoded"
        )
        self._fields = shape.fields.mapped()
        self._json = msgspec.json.Encoder().encode

    def _columns(self, batch: MessageBatch) -> dict[str, Sequence[Any]]:
        tos = batch.tos if self.shape.to_format == "e164" else [_national(t) for t in batch.tos]
        cols: dict[str, Sequence[Any]] = {
            "id": batch.ids,
            "to": tos,
            "text": batch.texts,
            "carrier": [batch.carrier] * len(batch),
            "parts": batch.parts,
        }
        return {name: cols[f] for f, name in self._fields}

    def encode(self, batch: MessageBatch) -> bytes:
        """The body for ``batch``."""
        shape = self.shape
        cols = self._columns(batch)
        body: dict[str, Any]
        if shape.batch == "list":
            names = list(cols)
            extra = shape.message_extra
            rows = [dict(zip(names, values, strict=True)) for values in zip(*cols.values(), strict=True)]
            if extra:
                for row in rows:
                    row.update(extra)
            body = {shape.list_key: rows, **shape.extra}
        elif shape.batch == "columns":
            if shape.join:
                body = {k: shape.join.join(map(str, v)) for k, v in cols.items()}
            else:
                body = {k: list(v) for k, v in cols.items()}
            body.update(shape.extra)
        else:
            if len(batch) != 1:
                raise GatewayProtocolError(
                    f'batch = "single" sends one message per request, got {len(batch)}'
                )
            body = {k: v[0] for k, v in cols.items()}
            body.update(shape.extra)
        if shape.encoding == "json":
            return self._json(body)
        return urllib.parse.urlencode({k: _form(v) for k, v in body.items()}).encode("ascii")


def _form(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class CodeTable:
    """Provider code → outcome: exact codes first, then the longest matching ``prefix*``."""

    def __init__(self, codes: Mapping[str, OutcomeName], default: OutcomeName) -> None:
        self.exact = {k: v for k, v in codes.items() if not k.endswith("*")}
        self.prefixes = sorted(
            ((k[:-1], v) for k, v in codes.items() if k.endswith("*")), key=lambda kv: -len(kv[0])
        )
        self.default = default

    def get(self, code: str) -> OutcomeName | None:
        """The outcome of ``code``, or None when neither table knows it."""
        found = self.exact.get(code)
        if found is not None:
            return found
        for prefix, outcome in self.prefixes:
            if code.startswith(prefix):
                return outcome
        return None

    def __getitem__(self, code: str) -> OutcomeName:
        found = self.get(code)
        return self.default if found is None else found


def _path(path: str) -> list[str]:
    return [p for p in path.split(".") if p]


def _dig(value: Any, keys: list[str]) -> Any:
    for k in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(k)
    return value


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class ResponseReader:
    """Turns an answer's body into one :class:`SubmitResult` per message of the batch."""

    def __init__(self, shape: ResponseShape, *, idempotent: bool, gateway: str) -> None:
        self.shape = shape
        self.idempotent = idempotent
        self.gateway = gateway
        self.ok_status = frozenset(shape.ok_status)
        self.codes = CodeTable({**DEFAULT_CODES, **cast(dict[str, OutcomeName], shape.codes)}, shape.default)
        self.statuses = cast(dict[str, OutcomeName], dict(shape.statuses))
        self._results = _path(shape.results)
        self._id = _path(shape.id)
        self._to = _path(shape.to)
        self._provider_id = _path(shape.provider_id)
        self._status = _path(shape.status)
        self._code = _path(shape.code)
        self._error_code = _path(shape.error_code)
        self._decode = msgspec.json.Decoder().decode

    def _body(self, body: bytes) -> Any:
        try:
            return self._decode(body)
        except msgspec.DecodeError as exc:
            raise GatewayProtocolError(f"{self.gateway}: unreadable answer: {exc}") from None

    def outcome(self, result: Any) -> tuple[OutcomeName, str]:
        """The outcome class and code of one result object."""
        code = _text(_dig(result, self._code)) if self._code else ""
        status = _dig(result, self._status) if self._status else None
        return self.classify(None if status is None else _text(status), code)

    def classify(self, status: str | None, code: str) -> tuple[OutcomeName, str]:
        """The outcome class of a result's status word (None: absent) and code."""
        if status is not None:
            said = self.statuses.get(status)
            if said is not None:
                if said != "accepted" and code:
                    refined = self.codes.get(code)
                    if refined is not None and refined != "accepted":
                        return refined, code
                return said, code
        if code:
            return self.codes[code], code
        return ("accepted", "") if not self._status else (self.codes.default, "")

    def submit(self, outcome: OutcomeName, code: str, provider_id: str) -> SubmitResult:
        """The engine's result for an outcome class (``account`` is the caller's to raise)."""
        if outcome == "accepted":
            return SubmitResult(Outcome.ACCEPTED, provider_id=provider_id)
        if outcome == "throttled":
            return SubmitResult(Outcome.THROTTLED, code=code or "throttled")
        if outcome == "retry":
            return SubmitResult(Outcome.RETRY, code=code or "retry")
        if outcome == "ambiguous":
            if self.idempotent:
                return SubmitResult(Outcome.RETRY, code=code or "ambiguous")
            return SubmitResult(Outcome.UNKNOWN, code=f"ambiguous:{code}")
        return SubmitResult(Outcome.REJECTED, code=code or outcome, permanent=outcome == "rejected")

    def account_error(self, code: str) -> GatewayAuthError:
        return GatewayAuthError(f"{self.gateway}: the provider refused the account (code {code})")

    def results(self, batch: MessageBatch, body: bytes) -> list[SubmitResult]:
        """Outcomes for ``batch`` from an answer with an ``ok_status``."""
        doc = self._body(body)
        n = len(batch)
        if not self._results:  # one result for the whole request
            outcome, code = self.outcome(doc)
            if outcome == "account":
                raise self.account_error(code)
            pid = _text(_dig(doc, self._provider_id)) if self._provider_id else ""
            return [self.submit(outcome, code, pid)] * n
        items = _dig(doc, self._results)
        if not isinstance(items, list):
            raise GatewayProtocolError(f"{self.gateway}: no result list at `{self.shape.results}`")
        if self.shape.match == "order":
            if len(items) != n:
                raise GatewayProtocolError(f"{self.gateway}: {len(items)} results for {n} messages")
            paired: list[Any] = items
        else:
            keys = batch.ids if self.shape.match == "id" else batch.tos
            where = self._id if self.shape.match == "id" else self._to
            by_key = {_text(_dig(r, where)): r for r in items}
            if self.shape.match == "to":  # providers echo numbers with or without +86
                by_key.update({"+86" + k: r for k, r in list(by_key.items()) if k and k[0] != "+"})
            paired = [by_key.get(k) for k in keys]
        out: list[SubmitResult] = []
        accounts: list[str] = []
        for r in paired:
            if r is None:  # the provider said nothing about this message
                out.append(self.submit("ambiguous", "missing_result", ""))
                continue
            outcome, code = self.outcome(r)
            if outcome == "account":
                accounts.append(code)
                out.append(SubmitResult(Outcome.REJECTED, code=code))
                continue
            pid = _text(_dig(r, self._provider_id)) if outcome == "accepted" and self._provider_id else ""
            out.append(self.submit(outcome, code, pid))
        if accounts and len(accounts) == len(out):
            raise self.account_error(accounts[0])
        return out

    def refused(self, batch: MessageBatch, status: int, body: bytes) -> list[SubmitResult] | None:
        """Outcomes for a refused request (a 4xx with a code in its body), or None if it has none."""
        if not self._error_code:
            return None
        try:
            doc = self._decode(body)
        except msgspec.DecodeError:
            return None
        code = _text(_dig(doc, self._error_code))
        if not code:
            return None
        outcome = self.codes[code]
        if outcome == "account":
            raise self.account_error(code)
        if outcome == "accepted":
            raise GatewayProtocolError(f"{self.gateway}: HTTP {status} with success code {code}")
        return [self.submit(outcome, code, "")] * len(batch)
