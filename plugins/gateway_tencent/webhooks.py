"""Tencent Cloud SMS callbacks: delivery status and replies.

* Status (``[{"user_receive_time", "nationcode", "mobile", "report_status": "SUCCESS" | "FAIL",
  "errmsg": "DELIVRD", "description", "sid"}, …]``) → delivery reports by ``sid`` (the SerialNo
  the gateway recorded as provider id);
* Reply (``{"extend", "mobile", "nationcode", "sign", "text", "time"}``, one object or a list) →
  MO replies (an ``R`` opts the number out).

Both are answered ``{"result": 0, "errmsg": "OK"}``. Repeats are dropped (by sid and status; a
reply by number, time and text). Tencent does not sign its callbacks: with a secret configured,
the URL registered in the console must carry it as ``?token=<secret>``.
"""

from __future__ import annotations

import datetime
import hmac
from collections.abc import Mapping
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import msgspec

from pigeon import DeliveryReport, DeliveryStatus, MoReply, WebhookError
from plugins.cloudsms.dedupe import SeenKeys

__all__ = ["ACK", "TencentParser"]

ACK = b'{"result":0,"errmsg":"OK"}'
_SHANGHAI = ZoneInfo("Asia/Shanghai")
_Str = Annotated[str, msgspec.Meta(max_length=256)]


class _Status(msgspec.Struct, frozen=True):
    sid: _Str
    mobile: _Str = ""
    nationcode: _Str = ""
    report_status: _Str = ""
    errmsg: _Str = ""
    description: Annotated[str, msgspec.Meta(max_length=1024)] = ""
    user_receive_time: _Str = ""


class _Reply(msgspec.Struct, frozen=True):
    mobile: _Str
    text: Annotated[str, msgspec.Meta(max_length=2048)]
    nationcode: _Str = "86"
    sign: _Str = ""
    extend: _Str = ""
    time: int | float = 0


_statuses = msgspec.json.Decoder(Annotated[list[_Status], msgspec.Meta(max_length=10_000)])
_replies = msgspec.json.Decoder(Annotated[list[_Reply], msgspec.Meta(max_length=10_000)] | _Reply)


def _when(text: str) -> float:
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=_SHANGHAI).timestamp()
    except ValueError:
        return 0.0


class TencentParser:
    """Reads one Tencent gateway's callbacks (``service.webhooks.<gateway>.parser = "tencent"``)."""

    uses_query = True

    def __init__(self, secret: bytes | None, gateway: str) -> None:
        self.secret = secret
        self.gateway = gateway
        self.seen = SeenKeys()
        self.duplicates = 0

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
        """Status callbacks, each once."""
        try:
            items = _statuses.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise WebhookError(f"not a Tencent status callback: {exc}") from None
        out: list[DeliveryReport] = []
        for s in items:
            if not self.seen.first((s.sid, s.report_status, s.errmsg)):
                self.duplicates += 1
                continue
            ok = s.report_status == "SUCCESS"
            out.append(
                DeliveryReport(
                    provider_id=s.sid,
                    status=DeliveryStatus.DELIVERED if ok else DeliveryStatus.FAILED,
                    code=s.errmsg or s.report_status,
                    done_at=_when(s.user_receive_time),
                    gateway=gateway,
                )
            )
        return out

    def replies(self, body: bytes, gateway: str) -> list[MoReply]:
        """Reply callbacks, each once."""
        try:
            doc: Any = _replies.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise WebhookError(f"not a Tencent reply callback: {exc}") from None
        items: list[_Reply] = doc if isinstance(doc, list) else [doc]
        out: list[MoReply] = []
        for r in items:
            if not self.seen.first(("mo", r.nationcode, r.mobile, r.time, r.text)):
                self.duplicates += 1
                continue
            number = r.mobile if r.nationcode in ("", "86") else f"+{r.nationcode}{r.mobile}"
            out.append(MoReply(from_=number, to=r.extend, text=r.text, at=float(r.time), gateway=gateway))
        return out

    def answer(self, what: str, received: int, applied: int) -> tuple[bytes, str]:
        """The body and media type Tencent expects back."""
        return ACK, "application/json"
