"""A Tencent Cloud SMS (API 2021-01-11) simulator on loopback: TC3 signatures checked, templates
rendered, limits enforced with Tencent's own error bodies, status and reply callbacks pushed.

* **Signatures**: TC3-HMAC-SHA256 recomputed from the request as it arrived (its headers and body
  bytes), written here independently of Pigeon's client; a bad one is ``AuthFailure.SignatureFailure``,
  a timestamp more than 300 s off ``AuthFailure.SignatureExpire``.
* **SendSms**: ≤ 200 numbers (``LimitExceeded.PhoneNumberCountLimit``); the signature
  (``FailedOperation.SignatureIncorrectOrUnapproved``) and template
  (``FailedOperation.TemplateIncorrectOrUnapproved``) must be filed and the parameter count must
  match (``FailedOperation.TemplateParamSetNotMatchApprovedTemplate``); one result per number
  (``InvalidParameterValue.IncorrectPhoneNumber``, ``FailedOperation.PhoneNumberInBlacklist``).
* **Limits**: ``qps`` requests per second (``RequestLimitExceeded`` for the request), ``rate``
  numbers per second (``LimitExceeded.DeliveryFrequencyLimit`` for the numbers over it).
* **Faults**: ``p_hang`` sends and never answers; a request holding a number of ``hang_numbers``
  is sent and never answered, one holding a number of ``drop_numbers`` is read and hung up on
  without sending; ``p_undeliv`` of the statuses say ``FAIL``.
* **Callbacks**: statuses to ``status_url`` (``p_dup_status`` pushes one twice), replies to
  ``reply_url`` via :meth:`inject_reply`; **PullSmsSendStatus** hands out each status once.

One command::

    python -m loadtests.sim_tencent --port 8702 --rate 3000 --status-url http://127.0.0.1:8080/v1/webhooks/tencent/reports
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

from loadtests.sim_cloud import Answer, CloudSim, RateWindow

__all__ = ["TencentSim", "TencentSimConfig"]


@dataclass
class TencentSimConfig:
    """What the simulator knows and does."""

    keys: dict[str, str] = field(default_factory=lambda: {"AKIDsim": "simKey"})
    app_id: str = "1400000001"
    signs: set[str] = field(default_factory=lambda: {"小鹅优选"})
    templates: dict[str, str] = field(default_factory=dict)
    """Filed templates: TemplateId → approved text with ``{1}`` … placeholders."""
    blacklist: set[str] = field(default_factory=set)
    qps: float = 0.0
    rate: float = 0.0
    p_hang: float = 0.0
    hang_s: float = 30.0
    status_url: str = ""
    reply_url: str = ""
    status_delay: float = 0.0
    p_dup_status: float = 0.0
    p_undeliv: float = 0.0
    answer_delay: float = 0.0
    """Seconds SendSms waits before answering, after its statuses went out (receipts first)."""
    hang_numbers: set[str] = field(default_factory=set)
    """A request holding one of these numbers (E.164) is sent and never answered."""
    drop_numbers: set[str] = field(default_factory=set)
    """A request holding one of these numbers is read and hung up on, not sent."""
    undeliv_numbers: set[str] = field(default_factory=set)
    """Numbers (E.164) whose statuses always say ``FAIL`` (besides ``p_undeliv`` of the others)."""
    seed: int = 1


def _hm(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


class TencentSim(CloudSim):
    """The server; run it with :class:`loadtests.sim_cloud.SimThread` or :func:`main`."""

    def __init__(self, config: TencentSimConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.config = config
        self.rng = random.Random(config.seed)
        self.qps = RateWindow(config.qps)
        self.rate = RateWindow(config.rate)
        self.sent: list[tuple[str, str]] = []
        """(E.164 number, text) of every message taken, in order."""
        self.fates: dict[str, bool] = {}
        """E.164 number → whether the status of its last message says delivered."""
        self.actions: list[str] = []
        self._serial = itertools.count(1)
        self._unpulled: list[dict[str, Any]] = []

    def _verify(self, headers: dict[str, str], body: bytes) -> str:
        auth = headers.get("authorization", "")
        m = re.fullmatch(
            r"TC3-HMAC-SHA256 Credential=([^/]+)/(\d{4}-\d{2}-\d{2})/([a-z]+)/tc3_request, "
            r"SignedHeaders=([a-z;-]+), Signature=([0-9a-f]{64})",
            auth,
        )
        if m is None:
            return "AuthFailure.InvalidAuthorization"
        secret_id, date, service, signed, signature = m.groups()
        key = self.config.keys.get(secret_id)
        if key is None:
            return "AuthFailure.SecretIdNotFound"
        try:
            ts = int(headers.get("x-tc-timestamp", ""))
        except ValueError:
            return "AuthFailure.InvalidAuthorization"
        if abs(time.time() - ts) > 300:
            return "AuthFailure.SignatureExpire"
        if time.strftime("%Y-%m-%d", time.gmtime(ts)) != date:
            return "AuthFailure.SignatureFailure"
        names = signed.split(";")
        canonical = "POST\n/\n\n" + "".join(f"{n}:{headers.get(n, '')}\n" for n in names)
        canonical += f"\n{signed}\n{hashlib.sha256(body).hexdigest()}"
        sts = "\n".join(
            [
                "TC3-HMAC-SHA256",
                str(ts),
                f"{date}/{service}/tc3_request",
                hashlib.sha256(canonical.encode()).hexdigest(),
            ]
        )
        k = _hm(_hm(_hm(("TC3" + key).encode(), date), service), "tc3_request")
        if not hmac.compare_digest(hmac.new(k, sts.encode(), hashlib.sha256).hexdigest(), signature):
            return "AuthFailure.SignatureFailure"
        return ""

    async def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer | None:
        self.stats["requests"] += 1
        if method == "GET" and target == "/stats":
            return 200, json.dumps(dict(self.stats)).encode()
        bad = self._verify(headers, body)
        if bad:
            self.stats[bad] += 1
            return 200, _error(bad, "signature check failed")
        action = headers.get("x-tc-action", "")
        self.actions.append(action)
        try:
            req = json.loads(body)
        except ValueError:
            return 200, _error("InvalidParameter", "the body is not JSON")
        if action == "PullSmsSendStatus":
            limit = int(req.get("Limit", 100))
            items, self._unpulled = self._unpulled[:limit], self._unpulled[limit:]
            return 200, _ok({"PullSmsSendStatusSet": items})
        if action != "SendSms":
            return 200, _error("InvalidAction", f"no action {action}")
        if not self.qps.admit(1):
            self.stats["RequestLimitExceeded"] += 1
            return 200, _error("RequestLimitExceeded", "The number of requests exceeds the frequency limit.")
        if self.config.drop_numbers & {str(n) for n in req.get("PhoneNumberSet") or []}:
            self.stats["dropped"] += 1
            return None
        answer = self._send(req)
        if answer is None:
            self.stats["hung"] += 1
            await asyncio.sleep(self.config.hang_s)
            return None
        if self.config.answer_delay:
            await asyncio.sleep(self.config.answer_delay)
        return 200, answer

    def _send(self, req: dict[str, Any]) -> bytes | None:
        cfg = self.config
        numbers = req.get("PhoneNumberSet") or []
        if req.get("SmsSdkAppId") != cfg.app_id:
            return _error("InvalidParameterValue.SdkAppIdNotExist", "SdkAppId not exist.")
        if len(numbers) > 200:
            self.stats["LimitExceeded.PhoneNumberCountLimit"] += 1
            return _error("LimitExceeded.PhoneNumberCountLimit", "the number of phone numbers exceeds 200")
        if req.get("SignName") not in cfg.signs:
            self.stats["FailedOperation.SignatureIncorrectOrUnapproved"] += 1
            return _error(
                "FailedOperation.SignatureIncorrectOrUnapproved", "signature unapproved or not exist"
            )
        text = cfg.templates.get(str(req.get("TemplateId", "")))
        if text is None:
            self.stats["FailedOperation.TemplateIncorrectOrUnapproved"] += 1
            return _error("FailedOperation.TemplateIncorrectOrUnapproved", "template unapproved or not exist")
        values = [str(v) for v in req.get("TemplateParamSet") or []]
        if len(values) != len(set(re.findall(r"\{(\d+)\}", text))):
            self.stats["FailedOperation.TemplateParamSetNotMatchApprovedTemplate"] += 1
            return _error("FailedOperation.TemplateParamSetNotMatchApprovedTemplate", "params do not match")
        body = re.sub(r"\{(\d+)\}", lambda m: values[int(m.group(1)) - 1], text)
        rendered = f"【{req['SignName']}】{body}"
        session = str(req.get("SessionContext", ""))
        results = []
        for n in numbers:
            n = str(n)
            code, message, serial = "Ok", "send success", ""
            if not re.fullmatch(r"\+861[3-9]\d{9}", n):
                code, message = "InvalidParameterValue.IncorrectPhoneNumber", "incorrect phone number"
            elif n in cfg.blacklist:
                code, message = "FailedOperation.PhoneNumberInBlacklist", "the number is in the blacklist"
            elif not self.rate.admit(1):
                code, message = "LimitExceeded.DeliveryFrequencyLimit", "delivery frequency limit"
            if code == "Ok":
                serial = f"{next(self._serial)}:{random.getrandbits(48):012x}"
                self.sent.append((n, rendered))
                self._status(serial, n, session)
            self.stats[code] += 1
            results.append(
                {
                    "SerialNo": serial,
                    "PhoneNumber": n,
                    "Fee": 1 if code == "Ok" else 0,
                    "SessionContext": session,
                    "Code": code,
                    "Message": message,
                    "IsoCode": "CN",
                }
            )
        if self.rng.random() < cfg.p_hang or cfg.hang_numbers & {str(n) for n in numbers}:
            return None
        self.rng.shuffle(results)  # results pair by number, never by order
        return _ok({"SendStatusSet": results})

    def _status(self, serial: str, number: str, session: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() + 8 * 3600))
        ok = self.rng.random() >= self.config.p_undeliv and number not in self.config.undeliv_numbers
        self.fates[number] = ok
        self._unpulled.append(
            {
                "UserReceiveTime": int(time.time()),
                "CountryCode": "86",
                "SubscriberNumber": number[3:],
                "PhoneNumber": number,
                "SerialNo": serial,
                "ReportStatus": "SUCCESS" if ok else "FAIL",
                "Description": "DELIVRD" if ok else "MK:0001",
                "SessionContext": session,
            }
        )
        if not self.config.status_url:
            return
        item = {
            "user_receive_time": stamp,
            "nationcode": "86",
            "mobile": number[3:],
            "report_status": "SUCCESS" if ok else "FAIL",
            "errmsg": "DELIVRD" if ok else "MK:0001",
            "description": "用户短信送达成功" if ok else "空号",
            "sid": serial,
        }
        body = json.dumps([item], ensure_ascii=False).encode()
        self.post_later(self.config.status_url, body, "status", self.config.status_delay)
        if self.rng.random() < self.config.p_dup_status:
            self.stats["status_duplicated"] += 1
            self.post_later(self.config.status_url, body, "status", self.config.status_delay + 0.05)

    def inject_reply(self, mobile: str, text: str, sign: str = "小鹅优选") -> None:
        """A customer replies (posted to ``reply_url``); any thread."""

        def go() -> None:
            item = {
                "extend": "",
                "mobile": mobile,
                "nationcode": "86",
                "sign": sign,
                "text": text,
                "time": int(time.time()),
            }
            self.post_later(self.config.reply_url, json.dumps(item, ensure_ascii=False).encode(), "reply")

        self.call_soon(go)


def _rid() -> str:
    return f"{random.getrandbits(128):032x}"


def _ok(resp: dict[str, Any]) -> bytes:
    return json.dumps({"Response": {**resp, "RequestId": _rid()}}, ensure_ascii=False).encode()


def _error(code: str, message: str) -> bytes:
    return json.dumps(
        {"Response": {"Error": {"Code": code, "Message": message}, "RequestId": _rid()}}
    ).encode()


def main(argv: list[str] | None = None) -> int:
    """Run the simulator in the foreground."""
    p = argparse.ArgumentParser(description="Tencent Cloud SMS simulator (loopback only)")
    p.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "::1", "localhost"])
    p.add_argument("--port", type=int, default=8702)
    p.add_argument("--key", action="append", default=[], metavar="SECRET_ID=SECRET_KEY")
    p.add_argument("--app-id", default=TencentSimConfig.app_id)
    p.add_argument("--sign", action="append", default=[])
    p.add_argument("--template", action="append", default=[], metavar="ID=TEXT")
    for name in ("qps", "rate", "p_hang", "hang_s", "status_delay", "p_dup_status", "p_undeliv"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(TencentSimConfig, name))
    p.add_argument("--status-url", default="")
    p.add_argument("--reply-url", default="")
    a = p.parse_args(argv)
    cfg = TencentSimConfig(
        app_id=a.app_id,
        status_url=a.status_url,
        reply_url=a.reply_url,
        **{
            k: getattr(a, k)
            for k in ("qps", "rate", "p_hang", "hang_s", "status_delay", "p_dup_status", "p_undeliv")
        },
    )
    if a.key:
        cfg.keys = dict(k.split("=", 1) for k in a.key)
    if a.sign:
        cfg.signs = set(a.sign)
    cfg.templates = dict(t.split("=", 1) for t in a.template)
    sim = TencentSim(cfg, a.host, a.port)
    print(f"Tencent simulator on http://{a.host}:{a.port}/ (app {cfg.app_id})", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(sim.serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
