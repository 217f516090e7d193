"""Aliyun's HTTP pushes: SmsReport delivery receipts and SmsUp replies, deduplicated.

Both are JSON arrays posted to the URLs registered in the console (reference protocols §4.1):

* SmsReport: ``[{"phone_number", "send_time", "report_time", "success", "err_code", "err_msg",
  "sms_size", "biz_id", "out_id"}, …]`` → one :class:`~engine.core.messages.DeliveryReport` each, its
  provider id ``<biz_id>-<phone_number>`` as the gateway recorded it;
* SmsUp: ``[{"phone_number", "content", "send_time", "dest_code", "sequence_id"}, …]`` → MO replies
  (an ``R`` / ``TD`` / ``退订`` opts the number out).

Aliyun says its pushes are not idempotent: a receipt may come again after a network fault, so the
parser drops every one it has seen (by biz id, number, code and time) and every reply it has seen
(by sequence id). It answers ``{"code": 0, "msg": "成功"}``; anything else, or no answer within
700 ms, makes Aliyun push again. Aliyun does not sign its pushes: with a secret configured, the
parser requires it in the ``token`` query parameter of the URL registered in the console
(``…/reports?token=<secret>``).
"""

from __future__ import annotations

import datetime
import hmac
from collections.abc import Mapping
from typing import Annotated
from zoneinfo import ZoneInfo

import msgspec

from pigeon import DeliveryReport, DeliveryStatus, MoReply, WebhookError
from plugins.cloudsms.dedupe import SeenKeys

__all__ = ["ACK", "AliyunParser"]

ACK = b'{"code":0,"msg":"\xe6\x88\x90\xe5\x8a\x9f"}'
"""The answer Aliyun expects (``{"code":0,"msg":"成功"}``)."""

_SHANGHAI = ZoneInfo("Asia/Shanghai")
_Str = Annotated[str, msgspec.Meta(max_length=256)]


class _Report(msgspec.Struct, frozen=True):
    phone_number: _Str
    biz_id: _Str = ""
    success: bool = False
    err_code: _Str = ""
    err_msg: Annotated[str, msgspec.Meta(max_length=1024)] = ""
    send_time: _Str = ""
    report_time: _Str = ""
    out_id: _Str = ""
    sms_size: _Str | int = ""


class _Up(msgspec.Struct, frozen=True):
    phone_number: _Str
    content: Annotated[str, msgspec.Meta(max_length=2048)]
    send_time: _Str = ""
    dest_code: _Str = ""
    sequence_id: _Str | int = ""
    sign_name: _Str = ""


_reports = msgspec.json.Decoder(Annotated[list[_Report], msgspec.Meta(max_length=10_000)])
_ups = msgspec.json.Decoder(Annotated[list[_Up], msgspec.Meta(max_length=10_000)])


def _when(text: str) -> float:
    """``2026-01-02 10:00:00`` (Beijing time, as Aliyun writes it) → epoch seconds (0: unreadable)."""
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=_SHANGHAI).timestamp()
    except ValueError:
        return 0.0


def _national(phone: str) -> str:
    p = phone.strip().lstrip("+")
    return p[2:] if p.startswith("86") and len(p) == 13 else p


class AliyunParser:
    """Reads one Aliyun gateway's pushes (``service.webhooks.<gateway>.parser = "aliyun"``)."""

    uses_query = True

    def __init__(self, secret: bytes | None, gateway: str) -> None:
        self.secret = secret
        self.gateway = gateway
        self.seen = SeenKeys()
        self.duplicates = 0
        """Pushes dropped as repeats (for logs and tests)."""

    def verify(
        self, body: bytes, headers: Mapping[str, str], now: float, query: Mapping[str, str] | None = None
    ) -> None:
        """With a secret, the URL's ``token`` parameter must carry it."""
        if self.secret is None:
            return
        token = (query or {}).get("token", "")
        if not hmac.compare_digest(token.encode(), self.secret):
            raise WebhookError("missing or wrong token: register the callback URL with ?token=<secret>")

    def reports(self, body: bytes, gateway: str) -> list[DeliveryReport]:
        """SmsReport receipts, each once."""
        try:
            items = _reports.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise WebhookError(f"not an Aliyun SmsReport push: {exc}") from None
        out: list[DeliveryReport] = []
        for r in items:
            phone = _national(r.phone_number)
            if not self.seen.first(("r", r.biz_id, phone, r.err_code, r.report_time, r.success)):
                self.duplicates += 1
                continue
            out.append(
                DeliveryReport(
                    provider_id=f"{r.biz_id}-{phone}" if r.biz_id else "",
                    status=DeliveryStatus.DELIVERED if r.success else DeliveryStatus.FAILED,
                    code=r.err_code,
                    done_at=_when(r.report_time),
                    gateway=gateway,
                )
            )
        return out

    def replies(self, body: bytes, gateway: str) -> list[MoReply]:
        """SmsUp replies, each once."""
        try:
            items = _ups.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise WebhookError(f"not an Aliyun SmsUp push: {exc}") from None
        out: list[MoReply] = []
        for u in items:
            key = (
                ("u", str(u.sequence_id))
                if u.sequence_id != ""
                else ("u", u.phone_number, u.send_time, u.content)
            )
            if not self.seen.first(key):
                self.duplicates += 1
                continue
            out.append(
                MoReply(
                    from_=u.phone_number,
                    to=u.dest_code,
                    text=u.content,
                    at=_when(u.send_time),
                    gateway=gateway,
                )
            )
        return out

    def answer(self, what: str, received: int, applied: int) -> tuple[bytes, str]:
        """The body and media type Aliyun expects back."""
        return ACK, "application/json"
