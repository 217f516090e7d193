"""Webhooks from gateways: delivery reports and MO replies, their signatures and their parsers.

The generic contract (docs/service.md) is built in; a gateway plugin registers a parser of its own
through the ``register_webhook_parsers`` hook. A parser turns a raw body into
:class:`~engine.core.messages.DeliveryReport` and :class:`MoReply` lists; it never sees the network.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Protocol, TypeVar

import msgspec

from engine.core.messages import DeliveryReport, DeliveryStatus
from engine.core.phone import parse_phone
from engine.core.timestamps import epoch_seconds
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
    "checked_time",
    "opt_outs_in",
    "parse_signature",
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
    now = time.time()
    for r in replies:
        if not is_opt_out_reply(r.text, keywords):
            continue
        parsed = parse_phone(r.from_)
        if parsed.reason is not None:
            continue
        numbers.append(parsed.national or parsed.e164)
        records.append(
            OptOutRecord(
                number=parsed.e164,
                source="mo",
                reason=r.text[:64],
                created_at=epoch_seconds(r.at, now) or now,  # (a parser's milliseconds, in seconds)
            )
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


_T_FIELD = re.compile(r"[0-9]{1,12}")
_V1_FIELD = re.compile(r"[0-9a-fA-F]{64}")
MAX_SIGNATURE_HEADER = 1024
"""Longest ``X-Pigeon-Signature`` value read (``t=`` + 10 digits + ``,v1=`` + 64 hex is 80)."""


def parse_signature(header: str | None) -> tuple[int, str]:
    """``(t, v1)`` of an ``X-Pigeon-Signature`` value; raises :class:`WebhookError` and nothing else.

    ``t`` must be 1–12 ASCII digits and ``v1`` 64 hex digits: a header is outside input, so any
    text (non-ASCII digits such as ``²``, 5,000 digits, non-ASCII bytes, no ``=``) is a 401, never
    a crash. Unknown keys are ignored; the first ``t`` and the first ``v1`` count.
    """
    if not header:
        raise WebhookError(f"missing {SIGNATURE_HEADER} header (t=<unix seconds>,v1=<hex HMAC-SHA256>)")
    if len(header) > MAX_SIGNATURE_HEADER:
        raise WebhookError(f"{SIGNATURE_HEADER} is over {MAX_SIGNATURE_HEADER} characters")
    fields: dict[str, str] = {}
    for piece in header.split(","):
        k, _, v = piece.strip().partition("=")
        fields.setdefault(k, v)
    t_raw, mac = fields.get("t", ""), fields.get("v1", "")
    if _T_FIELD.fullmatch(t_raw) is None or _V1_FIELD.fullmatch(mac) is None:
        raise WebhookError(
            f"malformed {SIGNATURE_HEADER}: expected t=<unix seconds>,v1=<64 hex digits of HMAC-SHA256>"
        )
    return int(t_raw), mac.lower()


def verify_signature(secret: bytes, header: str | None, body: bytes, now: float) -> None:
    """Raise :class:`WebhookError` unless ``header`` signs ``body`` with ``secret`` within the window."""
    t, mac = parse_signature(header)
    if abs(now - t) > REPLAY_WINDOW:
        raise WebhookError(
            f"signature timestamp is {now - t:+.0f} s from now (more than {REPLAY_WINDOW:.0f} s): a replay?"
        )
    want = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want.encode(), mac.encode()):
        raise WebhookError(
            "bad signature: the HMAC-SHA256 of '<t>.' + body with the shared secret does not match"
        )


_Text = Annotated[str, msgspec.Meta(max_length=2048)]


class _Report(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    provider_id: Annotated[str, msgspec.Meta(max_length=256)] = ""
    id: Annotated[str, msgspec.Meta(max_length=256)] = ""
    to: Annotated[str, msgspec.Meta(max_length=64)] = ""
    status: Annotated[str, msgspec.Meta(max_length=64)] = "unknown"
    """One of :class:`DeliveryStatus`; anything else is counted as ``unknown`` (its text kept as the code)."""
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


_STATUSES = {s.value: s for s in DeliveryStatus}


def _decode(body: bytes, tp: type[_T]) -> _T:
    try:
        return msgspec.json.decode(body, type=tp)
    except msgspec.ValidationError as exc:
        raise WebhookError(f"invalid callback: {exc}") from None
    except msgspec.DecodeError as exc:
        raise WebhookError(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise WebhookError("invalid callback: the JSON is nested too deeply") from None


def checked_time(value: float, now: float, where: str) -> float:
    """``value`` as Unix seconds (milliseconds converted, :func:`~engine.core.timestamps.epoch_seconds`);
    :class:`WebhookError` naming ``where`` when it is not a sane time."""
    seconds = epoch_seconds(value, now)
    if seconds is None:
        raise WebhookError(
            f"{where}: {value!r} is not a Unix time in seconds (from 2000-01-01 to a day ahead of now)"
        )
    return seconds


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
        now = time.time()
        for i, r in enumerate(_decode(body, _Reports).reports):
            if not r.provider_id and not r.id:
                raise WebhookError(f"reports[{i}]: needs a provider_id or an id")
            status = _STATUSES.get(r.status, DeliveryStatus.UNKNOWN)
            out.append(
                DeliveryReport(
                    provider_id=r.provider_id,
                    status=status,
                    message_id=r.id,
                    code=r.code or ("" if status.value == r.status else r.status),
                    done_at=checked_time(r.done_at, now, f"reports[{i}].done_at"),
                    gateway=gateway,
                )
            )
        return out

    def replies(self, body: bytes, gateway: str) -> list[MoReply]:
        """``{"replies": [{"from", "to", "text", "at"}, …]}``."""
        now = time.time()
        return [
            MoReply(
                from_=r.from_,
                to=r.to,
                text=r.text,
                at=checked_time(r.at, now, f"replies[{i}].at"),
                gateway=gateway,
            )
            for i, r in enumerate(_decode(body, _Replies).replies)
        ]


def report_counts(reports: Sequence[DeliveryReport]) -> dict[str, int]:
    """Reports by status (for logs and metrics)."""
    counts: dict[str, int] = {}
    for r in reports:
        counts[r.status.value] = counts.get(r.status.value, 0) + 1
    return counts
