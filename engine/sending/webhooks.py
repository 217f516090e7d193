"""Webhooks from gateways: delivery reports and MO replies, their signatures and their parsers.

The generic contract (docs/service.md) is built in; a gateway plugin registers a parser of its own
through the ``register_webhook_parsers`` hook. A parser turns a raw body into
:class:`~engine.core.messages.DeliveryReport` and :class:`MoReply` lists; it never sees the network.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Protocol, TypeVar

import msgspec

from engine.core.messages import DeliveryReport, DeliveryStatus
from engine.core.phone import parse_phone
from engine.state.optout import is_opt_out_reply
from engine.state.store import OptOutRecord

__all__ = [
    "SIGNATURE_HEADER",
    "DeliveryReport",
    "DeliveryStatus",
    "GenericParser",
    "MoReply",
    "WebhookError",
    "WebhookParser",
    "opt_outs_in",
    "sign",
    "verify_signature",
]

_T = TypeVar("_T")

SIGNATURE_HEADER = "x-pigeon-signature"
REPLAY_WINDOW = 300.0
"""Seconds a signed callback stays valid (older or newer ``t`` is refused as a replay)."""


class MoReply(msgspec.Struct, frozen=True, kw_only=True):
    """A customer's reply (mobile-originated message)."""

    from_: str = msgspec.field(name="from")
    """The customer's number as the gateway wrote it."""
    to: str = ""
    """The number or port it was sent to."""
    text: str
    at: float = 0.0
    gateway: str = ""


def opt_outs_in(replies: Sequence[MoReply], keywords: Iterable[str]) -> tuple[list[str], list[OptOutRecord]]:
    """The replies that ask to stop (``R``, ``退订``… as :func:`~engine.state.optout.is_opt_out_reply`
    reads them) from a readable number: the numbers (national or E.164, for an opt-out set) and
    the records to store (source ``mo``, the text as the reason)."""
    numbers: list[str] = []
    records: list[OptOutRecord] = []
    for r in replies:
        if not is_opt_out_reply(r.text, keywords):
            continue
        parsed = parse_phone(r.from_)
        if parsed.reason is not None:
            continue
        numbers.append(parsed.national or parsed.e164)
        records.append(
            OptOutRecord(number=parsed.e164, source="mo", reason=r.text[:64], created_at=r.at or time.time())
        )
    return numbers, records


class WebhookError(ValueError):
    """A callback that cannot be read; the message says what is wrong (answered 4xx)."""


class WebhookParser(Protocol):
    """Reads one gateway's callbacks. ``verify`` may raise :class:`WebhookError` (answered 401).

    Two optional members serve providers with their own conventions: ``uses_query = True`` makes
    the service pass the callback URL's query parameters to ``verify`` as ``query=`` (for
    providers that cannot sign their pushes: a token in the registered URL), and
    ``answer(what, received, applied) -> (body, media type)`` gives the acknowledgement the
    provider expects instead of Pigeon's ``{"received", …}`` (``what``: ``reports``/``replies``).
    """

    def verify(self, body: bytes, headers: Mapping[str, str], now: float) -> None:
        """Check the request's signature; raise :class:`WebhookError` if it is not the gateway's."""

    def reports(self, body: bytes, gateway: str) -> list[DeliveryReport]:
        """The delivery reports in ``body``."""

    def replies(self, body: bytes, gateway: str) -> list[MoReply]:
        """The MO replies in ``body``."""


def sign(secret: bytes, body: bytes, t: int) -> str:
    """The ``X-Pigeon-Signature`` value for ``body`` sent at unix time ``t``."""
    mac = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify_signature(secret: bytes, header: str | None, body: bytes, now: float) -> None:
    """Raise :class:`WebhookError` unless ``header`` signs ``body`` with ``secret`` within the window."""
    if not header:
        raise WebhookError(f"missing {SIGNATURE_HEADER} header (t=<unix seconds>,v1=<hex HMAC-SHA256>)")
    fields: dict[str, str] = {}
    for piece in header.split(","):
        k, _, v = piece.strip().partition("=")
        fields.setdefault(k, v)
    t_raw, mac = fields.get("t", ""), fields.get("v1", "")
    if not t_raw.isdigit() or not mac:
        raise WebhookError(f"malformed {SIGNATURE_HEADER}: expected t=<unix seconds>,v1=<hex>")
    t = int(t_raw)
    if abs(now - t) > REPLAY_WINDOW:
        raise WebhookError(
            f"signature timestamp is {now - t:+.0f} s from now (more than {REPLAY_WINDOW:.0f} s): a replay?"
        )
    want = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, mac.lower()):
        raise WebhookError(
            "bad signature: the HMAC-SHA256 of '<t>.' + body with the shared secret does not match"
        )


_Text = Annotated[str, msgspec.Meta(max_length=2048)]


class _Report(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    provider_id: Annotated[str, msgspec.Meta(max_length=256)] = ""
    id: Annotated[str, msgspec.Meta(max_length=256)] = ""
    to: Annotated[str, msgspec.Meta(max_length=64)] = ""
    status: DeliveryStatus = DeliveryStatus.UNKNOWN
    code: Annotated[str, msgspec.Meta(max_length=64)] = ""
    done_at: float = 0.0


class _Reports(msgspec.Struct, frozen=True):
    reports: Annotated[list[_Report], msgspec.Meta(max_length=10_000)]


class _Reply(msgspec.Struct, frozen=True):
    from_: Annotated[str, msgspec.Meta(max_length=64)] = msgspec.field(name="from")
    text: _Text
    to: Annotated[str, msgspec.Meta(max_length=64)] = ""
    at: float = 0.0


class _Replies(msgspec.Struct, frozen=True):
    replies: Annotated[list[_Reply], msgspec.Meta(max_length=10_000)]


def _decode(body: bytes, tp: type[_T]) -> _T:
    try:
        return msgspec.json.decode(body, type=tp)
    except msgspec.ValidationError as exc:
        raise WebhookError(f"invalid callback: {exc}") from None
    except msgspec.DecodeError as exc:
        raise WebhookError(f"the body is not valid JSON: {exc}") from None


class GenericParser:
    """The generic contract, signed with a shared secret (``X-Pigeon-Signature``)."""

    def __init__(self, secret: bytes | None, *, allow_unsigned: bool = False) -> None:
        self.secret = secret
        self.allow_unsigned = allow_unsigned

    def verify(self, body: bytes, headers: Mapping[str, str], now: float) -> None:
        """HMAC-SHA256 over ``<t>.`` + body; refused without a secret unless ``allow_unsigned``."""
        if self.secret is None:
            if self.allow_unsigned:
                return
            raise WebhookError("no secret is configured for this gateway's webhooks (service.webhooks)")
        verify_signature(self.secret, headers.get(SIGNATURE_HEADER), body, now)

    def reports(self, body: bytes, gateway: str) -> list[DeliveryReport]:
        """``{"reports": [{"provider_id", "id", "to", "status", "code", "done_at"}, …]}``."""
        out = []
        for i, r in enumerate(_decode(body, _Reports).reports):
            if not r.provider_id and not r.id:
                raise WebhookError(f"reports[{i}]: needs a provider_id or an id")
            out.append(
                DeliveryReport(
                    provider_id=r.provider_id,
                    status=r.status,
                    message_id=r.id,
                    code=r.code,
                    done_at=r.done_at,
                    gateway=gateway,
                )
            )
        return out

    def replies(self, body: bytes, gateway: str) -> list[MoReply]:
        """``{"replies": [{"from", "to", "text", "at"}, …]}``."""
        return [
            MoReply(from_=r.from_, to=r.to, text=r.text, at=r.at, gateway=gateway)
            for r in _decode(body, _Replies).replies
        ]


def report_counts(reports: Sequence[DeliveryReport]) -> dict[str, int]:
    """Reports by status (for logs and metrics)."""
    counts: dict[str, int] = {}
    for r in reports:
        counts[r.status.value] = counts.get(r.status.value, 0) + 1
    return counts
