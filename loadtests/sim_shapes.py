"""Provider API shapes the gateway simulator can speak: how it reads a request and words its answer.

``pigeon`` is Pigeon's own JSON contract. The others mimic the providers of the reference's §4
closely enough to exercise the ``http`` gateway's request/response shapes:

* ``aliyun`` — form body, ``PhoneNumbers`` comma-joined, one result for the whole request:
  ``{"Code": "OK", "BizId", "RequestId"}``; a bad number refuses the request
  (``isv.MOBILE_NUMBER_ILLEGAL``), too fast is ``Throttling.User``.
* ``tencent`` — JSON, ``PhoneNumberSet`` list, ``{"Response": {"SendStatusSet": [{"SerialNo",
  "PhoneNumber", "Code": "Ok" | "InvalidParameterValue.IncorrectPhoneNumber" |
  "LimitExceeded.DeliveryFrequencyLimit"}, …]}}`` in *reverse* order (results pair by number).
* ``twilio`` — form body, one message (``To``, ``Body``), ``201 {"sid", "status": "queued"}``;
  a bad number is ``400 {"code": 21211}``, too fast ``429 {"code": 20429}`` with ``Retry-After``.

A shape turns the body into :class:`Incoming` messages; the simulator decides each one's fate
(``accepted``, ``rejected``, ``throttled``) and the shape words the answer.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

__all__ = ["SHAPES", "Answer", "Fate", "Incoming", "Shape"]

Answer = tuple[int, str, bytes]
"""HTTP status, extra header lines, body."""


@dataclass(frozen=True, slots=True)
class Incoming:
    """One message as the simulator saw it (``id`` is ``""`` when the shape carries none)."""

    id: str
    to: str
    text: str = ""
    carrier: str = ""
    parts: int = 1


@dataclass(frozen=True, slots=True)
class Fate:
    """What the simulator decided for one message."""

    status: str
    """``accepted``, ``rejected`` or ``throttled``."""
    provider_id: str = ""


class BadRequest(ValueError):
    """The body does not have the shape's required fields."""


class _Msg(msgspec.Struct):
    id: str
    to: str
    text: str
    carrier: str = ""
    parts: int = 1


class _Req(msgspec.Struct):
    messages: list[_Msg]


_decode_pigeon = msgspec.json.Decoder(_Req).decode


def _form(body: bytes) -> dict[str, str]:
    try:
        return {k: v[-1] for k, v in urllib.parse.parse_qs(body.decode("utf-8"), strict_parsing=True).items()}
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"not a form body: {exc}") from None


def _json(body: bytes) -> dict[str, object]:
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("the body is not a JSON object")
    return doc


class Shape:
    """A provider's request reader and answer writer."""

    name = ""

    def read(self, body: bytes) -> list[Incoming]:
        """The messages of one request (raises :class:`BadRequest`)."""
        raise NotImplementedError

    def answer(self, msgs: list[Incoming], fates: list[Fate], retry_after: float) -> Answer:
        """The answer to a request whose messages met ``fates``."""
        raise NotImplementedError

    def all_or_nothing(self) -> bool:
        """Whether one refused message refuses the whole request (one result per request)."""
        return False


class PigeonShape(Shape):
    name = "pigeon"

    def read(self, body: bytes) -> list[Incoming]:
        try:
            req = _decode_pigeon(body)
        except msgspec.DecodeError as exc:
            raise BadRequest(str(exc)) from None
        return [Incoming(m.id, m.to, m.text, m.carrier, m.parts) for m in req.messages]

    def answer(self, msgs: list[Incoming], fates: list[Fate], retry_after: float) -> Answer:
        results: list[dict[str, str]] = []
        for m, f in zip(msgs, fates, strict=True):
            if f.status == "accepted":
                results.append({"id": m.id, "status": "accepted", "provider_id": f.provider_id})
            elif f.status == "rejected":
                results.append({"id": m.id, "status": "rejected", "code": "INVALID_NUMBER"})
            else:
                results.append({"id": m.id, "status": "retry", "code": "throttled"})
        return 200, "", msgspec.json.encode({"results": results})


class AliyunShape(Shape):
    name = "aliyun"

    def read(self, body: bytes) -> list[Incoming]:
        form = _form(body)
        numbers = form.get("PhoneNumbers", "")
        if not numbers or "SignName" not in form or "TemplateCode" not in form:
            raise BadRequest("PhoneNumbers, SignName and TemplateCode are required")
        out_id = form.get("OutId", "")
        return [Incoming(out_id, n) for n in numbers.split(",")]

    def all_or_nothing(self) -> bool:
        return True

    def answer(self, msgs: list[Incoming], fates: list[Fate], retry_after: float) -> Answer:
        statuses = {f.status for f in fates}
        if "rejected" in statuses:
            doc = {"Code": "isv.MOBILE_NUMBER_ILLEGAL", "Message": "非法手机号", "RequestId": "sim"}
        elif "throttled" in statuses:
            doc = {"Code": "Throttling.User", "Message": "Request was denied due to user flow control."}
        else:
            doc = {"Code": "OK", "Message": "OK", "BizId": fates[0].provider_id, "RequestId": "sim"}
        return 200, "", json.dumps(doc, ensure_ascii=False).encode()


class TencentShape(Shape):
    name = "tencent"

    def read(self, body: bytes) -> list[Incoming]:
        doc = _json(body)
        numbers = doc.get("PhoneNumberSet")
        if not isinstance(numbers, list) or not numbers or "SmsSdkAppId" not in doc:
            raise BadRequest("PhoneNumberSet (a list) and SmsSdkAppId are required")
        return [Incoming("", str(n)) for n in numbers]

    def answer(self, msgs: list[Incoming], fates: list[Fate], retry_after: float) -> Answer:
        codes = {
            "accepted": ("Ok", "send success"),
            "rejected": ("InvalidParameterValue.IncorrectPhoneNumber", "incorrect number"),
            "throttled": ("LimitExceeded.DeliveryFrequencyLimit", "too frequent"),
        }
        sets = [
            {
                "SerialNo": f.provider_id,
                "PhoneNumber": m.to,
                "Fee": 1 if f.status == "accepted" else 0,
                "SessionContext": "",
                "Code": codes[f.status][0],
                "Message": codes[f.status][1],
                "IsoCode": "CN",
            }
            for m, f in zip(msgs, fates, strict=True)
        ]
        doc = {"Response": {"SendStatusSet": sets[::-1], "RequestId": "sim"}}
        return 200, "", json.dumps(doc).encode()


class TwilioShape(Shape):
    name = "twilio"

    def read(self, body: bytes) -> list[Incoming]:
        form = _form(body)
        if "To" not in form or "Body" not in form or "From" not in form:
            raise BadRequest("To, From and Body are required")
        return [Incoming(form.get("PigeonId", ""), form["To"], form["Body"])]

    def all_or_nothing(self) -> bool:
        return True

    def answer(self, msgs: list[Incoming], fates: list[Fate], retry_after: float) -> Answer:
        f = fates[0]
        if f.status == "rejected":
            doc: dict[str, object] = {"code": 21211, "message": "Invalid 'To' Phone Number", "status": 400}
            return 400, "", json.dumps(doc).encode()
        if f.status == "throttled":
            doc = {"code": 20429, "message": "Too Many Requests", "status": 429}
            return 429, f"Retry-After: {retry_after:g}\r\n", json.dumps(doc).encode()
        doc = {"sid": f.provider_id, "status": "queued", "to": msgs[0].to, "error_code": None}
        return 201, "", json.dumps(doc).encode()


SHAPES: dict[str, Callable[[], Shape]] = {
    s.name: s for s in (PigeonShape, AliyunShape, TencentShape, TwilioShape)
}
"""The shapes by name (``--shape``)."""
