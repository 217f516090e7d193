"""An Aliyun SMS (Dysmsapi 2017-05-25) simulator on loopback: signed calls checked, templates
rendered, limits enforced with Aliyun's own error bodies, receipts and replies pushed.

* **Signatures** are checked independently of Pigeon's client code, the way a server must: from
  the request as it arrived (its raw query string decoded, its headers, the hash of its body),
  ACS3-HMAC-SHA256 (``Authorization`` header) or RPC HMAC-SHA1 (``Signature`` parameter); a bad
  one is ``403 SignatureDoesNotMatch``.
* **SendSms** (≤ 1,000 numbers, else ``isv.MOBILE_COUNT_OVER_LIMIT``) and **SendBatchSms** (≤ 100):
  the signature must be filed (``isv.SMS_SIGNATURE_ILLEGAL``), the template too
  (``isv.SMS_TEMPLATE_ILLEGAL``) and every placeholder given (``isv.TEMPLATE_MISSING_PARAMETERS``);
  a blacklisted number refuses the request (``isv.BLACK_KEY_CONTROL_LIMIT``). Each message sent
  is logged as ``(number, text)`` with the text rendered from the filed template.
* **Limits**: ``qps`` requests per second (``Throttling.User``) and ``rate`` numbers per second
  (``isv.BUSINESS_LIMIT_CONTROL`` "触发分钟级流控Permits:N") — nothing over them is sent.
* **Faults**: ``p_hang`` takes the messages and then never answers (a client timeout that did
  send), ``p_system_error`` answers ``isp.SYSTEM_ERROR`` without sending; a request holding a
  number of ``hang_numbers`` is taken and never answered, one holding a number of
  ``drop_numbers`` is read and its connection closed without taking it.
* **Receipts** (SmsReport, a JSON array per push) go to ``report_url`` after ``report_delay``;
  ``p_dup_report`` pushes a push twice. **Replies** (SmsUp) go to ``up_url``: :meth:`inject_reply`.
* **QuerySendDetails** answers from the log, each message's true fate (``SendStatus`` 3
  delivered, 2 failed with its code — ``p_undeliv`` of them — or 1 until its receipt is due),
  ``OutId`` echoed, dates in Beijing time.
* **CreateSmartShortUrl** (≤ ``links_limit`` numbers, else ``isv.MOBILE_COUNT_OVER_LIMIT``; a
  blacklisted number refuses the request with ``isv.MOBILE_NUMBER_ILLEGAL``) makes one link per
  number, ``https://<link_domain>/<name>``: the name a hash of (OutId, number, SourceUrl, how many
  links that number got before), so the same calls give the same links. **Clicks**: :meth:`click`
  (any thread) or ``GET /click/<name>`` (no signature: a visitor) mark a link clicked, the first
  time only. **QueryPageSmartShortUrlLog** pages the links made between ``CreateDateStart`` and
  ``CreateDateEnd`` (Beijing ``yyyyMMdd``), oldest first, with ``ClickState`` 1 and ``ClickTime``
  (epoch ms) once clicked, else 0.

Start it with one command::

    python -m loadtests.sim_aliyun --port 8701 --rate 5000 --report-url http://127.0.0.1:8080/v1/webhooks/aliyun/reports
"""

from __future__ import annotations

import argparse
import asyncio
import base64
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
from urllib.parse import parse_qsl

from loadtests.sim_cloud import Answer, CloudSim, RateWindow

__all__ = ["AliyunSim", "AliyunSimConfig"]

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")


def _pct(text: str) -> str:
    """RFC 3986 encoding, byte by byte (written here, not shared with the client)."""
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in text.encode("utf-8"))


@dataclass
class AliyunSimConfig:
    """What the simulator knows and does."""

    keys: dict[str, str] = field(default_factory=lambda: {"LTAIsimKeyId": "simSecret"})
    signs: set[str] = field(default_factory=lambda: {"小鹅优选"})
    templates: dict[str, str] = field(default_factory=dict)
    """Filed templates: code → approved text with ``${name}`` placeholders."""
    blacklist: set[str] = field(default_factory=set)
    qps: float = 0.0
    rate: float = 0.0
    p_hang: float = 0.0
    hang_s: float = 30.0
    p_system_error: float = 0.0
    report_url: str = ""
    up_url: str = ""
    report_delay: float = 0.0
    p_dup_report: float = 0.0
    p_undeliv: float = 0.0
    hang_numbers: set[str] = field(default_factory=set)
    """A request holding one of these numbers is taken and never answered."""
    drop_numbers: set[str] = field(default_factory=set)
    """A request holding one of these numbers is read and hung up on, not taken."""
    undeliv_numbers: set[str] = field(default_factory=set)
    """Numbers whose messages always fail (besides ``p_undeliv`` of the others)."""
    seed: int = 1
    links_limit: int = 1000
    """Numbers a CreateSmartShortUrl takes (Aliyun documents none)."""
    link_domain: str = "dx.test"
    """The host of the short links made."""


def _beijing(ts: float, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return time.strftime(fmt, time.gmtime(ts + 8 * 3600))


class AliyunSim(CloudSim):
    """The server; run it with :class:`loadtests.sim_cloud.SimThread` or :func:`main`."""

    def __init__(self, config: AliyunSimConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.config = config
        self.rng = random.Random(config.seed)
        self.qps = RateWindow(config.qps)
        self.rate = RateWindow(config.rate)
        self.sent: list[tuple[str, str]] = []
        """(number, text) of every message taken, in order."""
        self.records: list[dict[str, Any]] = []
        self._biz = itertools.count(1)
        self._nonces: set[str] = set()
        self.actions: list[str] = []
        self.links: dict[str, dict[str, Any]] = {}
        """Short name → the link made (number, url, source, out_id, created and clicked epoch ms)."""
        self._made: dict[tuple[str, str, str], int] = {}

    # -- the signature, checked as a server would ------------------------------------------

    def _verify(self, method: str, path: str, raw_query: str, headers: dict[str, str], body: bytes) -> str:
        """The error code of a badly signed request, or ``""``."""
        pairs = parse_qsl(raw_query, keep_blank_values=True)
        query = dict(pairs)
        auth = headers.get("authorization", "")
        if auth.startswith("ACS3-HMAC-SHA256 "):
            fields = dict(p.split("=", 1) for p in auth[len("ACS3-HMAC-SHA256 ") :].split(","))
            secret = self.config.keys.get(fields.get("Credential", ""))
            if secret is None:
                return "InvalidAccessKeyId.NotFound"
            if hashlib.sha256(body).hexdigest() != headers.get("x-acs-content-sha256"):
                return "SignatureDoesNotMatch"
            names = fields.get("SignedHeaders", "").split(";")
            if "host" not in names or any(n not in headers for n in names):
                return "IncompleteSignature"
            canon_q = "&".join(f"{_pct(k)}={_pct(v)}" for k, v in sorted(pairs))
            canon_h = "".join(f"{n}:{headers[n].strip()}\n" for n in names)
            creq = "\n".join(
                [method, path, canon_q, canon_h, ";".join(names), headers["x-acs-content-sha256"]]
            )
            sts = "ACS3-HMAC-SHA256\n" + hashlib.sha256(creq.encode()).hexdigest()
            want = hmac.new(secret.encode(), sts.encode(), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(want, fields.get("Signature", "")):
                return "SignatureDoesNotMatch"
            nonce = headers.get("x-acs-signature-nonce", "")
        elif "Signature" in query:
            secret = self.config.keys.get(query.get("AccessKeyId", ""))
            if secret is None:
                return "InvalidAccessKeyId.NotFound"
            rest = sorted((k, v) for k, v in pairs if k != "Signature")
            canon = "&".join(f"{_pct(k)}={_pct(v)}" for k, v in rest)
            sts = f"{method}&%2F&{_pct(canon)}"
            mac = hmac.new((secret + "&").encode(), sts.encode(), hashlib.sha1).digest()
            if not hmac.compare_digest(base64.b64encode(mac).decode(), query["Signature"]):
                return "SignatureDoesNotMatch"
            nonce = query.get("SignatureNonce", "")
        else:
            return "IncompleteSignature"
        if nonce in self._nonces:
            return "SignatureNonceUsed"
        self._nonces.add(nonce)
        return ""

    # -- the API ---------------------------------------------------------------------------

    async def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer | None:
        self.stats["requests"] += 1
        path, _, raw = target.partition("?")
        if method == "GET" and path == "/stats":
            return 200, json.dumps(dict(self.stats)).encode()
        if method == "GET" and path.startswith("/click/"):
            found = self.click(path[len("/click/") :])
            return (200, json.dumps({"Location": found}).encode()) if found else (404, _err("NotFound", path))
        bad = self._verify(method, path, raw, headers, body)
        if bad:
            self.stats[bad] += 1
            return 403 if bad != "SignatureNonceUsed" else 400, _err(
                bad, "Specified signature is not matched."
            )
        q = dict(parse_qsl(raw, keep_blank_values=True))
        action = headers.get("x-acs-action") or q.get("Action", "")
        self.actions.append(action)
        if action == "QuerySendDetails":
            return 200, self._query(q)
        if action == "QueryPageSmartShortUrlLog":
            return self._link_log(q)
        if not self.qps.admit(1):
            self.stats["Throttling.User"] += 1
            return 400, _err("Throttling.User", "Request was denied due to user flow control.")
        if action == "CreateSmartShortUrl":
            return self._create_links(q)
        if action == "SendSms":
            numbers = [n for n in q.get("PhoneNumbers", "").split(",") if n]
            signs = [q.get("SignName", "")] * len(numbers)
            params = [q.get("TemplateParam", "{}")] * len(numbers)
            limit = 1000
        elif action == "SendBatchSms":
            try:
                numbers = json.loads(q.get("PhoneNumberJson", "[]"))
                signs = json.loads(q.get("SignNameJson", "[]"))
                params = [json.dumps(p) for p in json.loads(q.get("TemplateParamJson", "[]"))] or [
                    "{}"
                ] * len(numbers)
            except ValueError:
                return 400, _err("isv.INVALID_JSON_PARAM", "JSON参数不合法")
            limit = 100
        else:
            return 404, _err("InvalidAction.NotFound", f"no action {action}")
        if self.config.drop_numbers & set(numbers):  # read, not taken, hung up on
            self.stats["dropped"] += 1
            return None
        answer = self._send(numbers, signs, params, q, limit)
        if answer[1] is None:  # taken, and the answer never comes
            self.stats["hung"] += 1
            await asyncio.sleep(self.config.hang_s)
            return None
        return answer[0], answer[1]

    def _send(
        self, numbers: list[str], signs: list[str], params: list[str], q: dict[str, str], limit: int
    ) -> tuple[int, bytes | None]:
        cfg = self.config
        if not numbers or len(signs) != len(numbers) or len(params) != len(numbers):
            return 200, _err("isv.INVALID_PARAMETERS", "参数异常")
        if len(numbers) > limit:
            self.stats["isv.MOBILE_COUNT_OVER_LIMIT"] += 1
            return 200, _err("isv.MOBILE_COUNT_OVER_LIMIT", "手机号码数量超过限制")
        if any(s not in cfg.signs for s in signs):
            self.stats["isv.SMS_SIGNATURE_ILLEGAL"] += 1
            return 200, _err("isv.SMS_SIGNATURE_ILLEGAL", "该账号下找不到对应签名")
        text = cfg.templates.get(q.get("TemplateCode", ""))
        if text is None:
            self.stats["isv.SMS_TEMPLATE_ILLEGAL"] += 1
            return 200, _err("isv.SMS_TEMPLATE_ILLEGAL", "该账号下找不到对应模板")
        names = set(re.findall(r"\$\{(\w+)\}", text))
        rendered: list[str] = []
        for sign, raw in zip(signs, params, strict=True):
            try:
                values = json.loads(raw)
            except ValueError:
                return 200, _err("isv.INVALID_JSON_PARAM", "JSON参数不合法")
            if not isinstance(values, dict) or names - set(values):
                self.stats["isv.TEMPLATE_MISSING_PARAMETERS"] += 1
                return 200, _err("isv.TEMPLATE_MISSING_PARAMETERS", "模板缺少变量")
            body = re.sub(r"\$\{(\w+)\}", lambda m, v=values: str(v[m.group(1)]), text)
            rendered.append(f"【{sign}】{body}")
        if any(n in cfg.blacklist for n in numbers):
            self.stats["isv.BLACK_KEY_CONTROL_LIMIT"] += 1
            return 200, _err("isv.BLACK_KEY_CONTROL_LIMIT", "黑名单管控")
        if self.rng.random() < cfg.p_system_error:
            self.stats["isp.SYSTEM_ERROR"] += 1
            return 500, _err("isp.SYSTEM_ERROR", "系统异常")
        if not self.rate.admit(len(numbers)):
            self.stats["isv.BUSINESS_LIMIT_CONTROL"] += 1
            return 200, _err("isv.BUSINESS_LIMIT_CONTROL", f"触发分钟级流控Permits:{int(cfg.rate)}")
        biz = f"{next(self._biz):06d}^{int(time.time() * 1000)}"
        out_id = q.get("OutId", "")
        now = time.time()
        fates = [self.rng.random() >= cfg.p_undeliv and n not in cfg.undeliv_numbers for n in numbers]
        for n, text_, ok in zip(numbers, rendered, fates, strict=True):
            self.sent.append((n, text_))
            self.records.append(
                {
                    "n": n,
                    "text": text_,
                    "biz": biz,
                    "out_id": out_id,
                    "at": now,
                    "ok": ok,
                    "due": now + cfg.report_delay,
                }
            )
        self.stats["sent"] += len(numbers)
        self._report(biz, numbers, out_id, fates)
        if self.rng.random() < cfg.p_hang or cfg.hang_numbers & set(numbers):
            return 200, None
        return 200, json.dumps({"Code": "OK", "Message": "OK", "BizId": biz, "RequestId": _rid()}).encode()

    def _report(self, biz: str, numbers: list[str], out_id: str, fates: list[bool]) -> None:
        cfg = self.config
        if not cfg.report_url:
            return
        stamp = _beijing(time.time())
        items = []
        for n, ok in zip(numbers, fates, strict=True):
            items.append(
                {
                    "phone_number": n,
                    "send_time": stamp,
                    "report_time": stamp,
                    "success": ok,
                    "err_code": "DELIVERED" if ok else "MK:0001",
                    "err_msg": "用户接收成功" if ok else "空号",
                    "sms_size": "1",
                    "biz_id": biz,
                    "out_id": out_id,
                }
            )
        body = json.dumps(items, ensure_ascii=False).encode()
        self.post_later(cfg.report_url, body, "report", cfg.report_delay)
        if self.rng.random() < cfg.p_dup_report:
            self.stats["report_duplicated"] += 1
            self.post_later(cfg.report_url, body, "report", cfg.report_delay + 0.05)

    def inject_reply(self, number: str, content: str, dest_code: str = "1234") -> None:
        """A customer replies (posted as SmsUp to ``up_url``); any thread."""
        seq = next(self._biz)

        def go() -> None:
            stamp = _beijing(time.time())
            item = {
                "phone_number": number,
                "content": content,
                "send_time": stamp,
                "dest_code": dest_code,
                "sequence_id": seq,
            }
            self.post_later(self.config.up_url, json.dumps([item], ensure_ascii=False).encode(), "up")

        self.call_soon(go)

    def _query(self, q: dict[str, str]) -> bytes:
        number, day = q.get("PhoneNumber", ""), q.get("SendDate", "")
        self.stats["queries"] += 1
        now = time.time()
        found = [r for r in self.records if r["n"] == number and _beijing(r["at"], "%Y%m%d") == day]
        size = int(q.get("PageSize", "50") or 50)
        page = int(q.get("CurrentPage", "1") or 1)
        rows = [
            {
                "PhoneNum": r["n"],
                "SendStatus": 1 if r["due"] > now else 3 if r["ok"] else 2,
                "ErrCode": "" if r["due"] > now else "DELIVERED" if r["ok"] else "MK:0001",
                "TemplateCode": "",
                "Content": r["text"],
                "SendDate": _beijing(r["at"]),
                "ReceiveDate": "" if r["due"] > now else _beijing(r["due"]),
                "OutId": r["out_id"],
            }
            for r in found[(page - 1) * size : page * size]
        ]
        doc = {
            "Code": "OK",
            "Message": "OK",
            "RequestId": _rid(),
            "TotalCount": str(len(found)),
            "SmsSendDetailDTOs": {"SmsSendDetailDTO": rows},
        }
        return json.dumps(doc, ensure_ascii=False).encode()

    # -- smart short links -----------------------------------------------------------------

    def _create_links(self, q: dict[str, str]) -> Answer:
        numbers = [n for n in q.get("PhoneNumbers", "").split(",") if n]
        source, out_id = q.get("SourceUrl", ""), q.get("OutId", "")
        if not numbers or not source:
            return 400, _err("MissingParameter", "PhoneNumbers and SourceUrl are required")
        if len(numbers) > self.config.links_limit:
            self.stats["isv.MOBILE_COUNT_OVER_LIMIT"] += 1
            return 200, _err("isv.MOBILE_COUNT_OVER_LIMIT", "手机号码数量超过限制")
        if any(not n.isdigit() or n in self.config.blacklist for n in numbers):
            self.stats["isv.MOBILE_NUMBER_ILLEGAL"] += 1
            return 200, _err("isv.MOBILE_NUMBER_ILLEGAL", "非法手机号")
        if self.rng.random() < self.config.p_system_error:
            self.stats["isp.SYSTEM_ERROR"] += 1
            return 500, _err("isp.SYSTEM_ERROR", "系统异常")
        now_ms = int(time.time() * 1000)
        model = []
        for n in numbers:
            k = self._made.get((out_id, n, source), 0)
            self._made[(out_id, n, source)] = k + 1
            digest = hashlib.sha256(f"{out_id}\x1f{n}\x1f{source}\x1f{k}".encode()).digest()
            name = base64.b32encode(digest[:5]).decode().lower()
            url = f"https://{self.config.link_domain}/{name}"
            expires = now_ms + 30 * 86400 * 1000
            self.links[name] = {
                "n": n,
                "url": url,
                "source": source,
                "out_id": out_id,
                "created": now_ms,
                "clicked": 0,
            }
            model.append(
                {
                    "PhoneNumber": n,
                    "ShortUrl": url,
                    "ShortName": name,
                    "Domain": self.config.link_domain,
                    "Expiration": expires,
                }
            )
        self.stats["links_made"] += len(numbers)
        return 200, json.dumps({"Code": "OK", "Message": "OK", "RequestId": _rid(), "Model": model}).encode()

    def click(self, url_or_name: str, at: float | None = None) -> str:
        """A visitor opens a short link (its URL or name): the first click is logged. The link's
        source URL ("" when there is no such link); any thread."""
        link = self.links.get(url_or_name.rsplit("/", 1)[-1])
        if link is None:
            return ""
        self.stats["clicks"] += 1
        if not link["clicked"]:
            link["clicked"] = int((time.time() if at is None else at) * 1000)
        return str(link["source"])

    def _link_log(self, q: dict[str, str]) -> Answer:
        try:
            start, end = int(q["CreateDateStart"]), int(q["CreateDateEnd"])
            page, size = int(q["PageNo"]), int(q["PageSize"])
        except (KeyError, ValueError):
            return 400, _err(
                "MissingParameter", "CreateDateStart, CreateDateEnd, PageNo, PageSize are required"
            )
        if page < 1 or not 1 <= size <= 100:
            return 400, _err("InvalidParameter", "PageNo ≥ 1, PageSize 1–100")
        self.stats["link_log_pages"] += 1
        phone, short = q.get("PhoneNumber", ""), q.get("ShortUrl", "")
        found = [
            link
            for link in list(self.links.values())
            if start <= int(_beijing(link["created"] / 1000, "%Y%m%d")) <= end
            and (not phone or link["n"] == phone)
            and (not short or link["url"] == short)
        ]
        rows = [
            {
                "PhoneNumber": link["n"],
                "ShortUrl": link["url"],
                "ShortName": link["url"].rsplit("/", 1)[-1],
                "ClickState": 1 if link["clicked"] else 0,
                "ClickTime": link["clicked"],
                "CreateTime": link["created"],
            }
            for link in found[(page - 1) * size : page * size]
        ]
        model = {
            "List": rows,
            "PageNo": page,
            "PageSize": size,
            "TotalCount": len(found),
            "TotalPage": -(-len(found) // size),
        }
        doc = {"Code": "OK", "Message": "OK", "RequestId": _rid(), "Success": True, "Model": model}
        return 200, json.dumps(doc).encode()


def _rid() -> str:
    return f"{random.getrandbits(64):016X}"


def _err(code: str, message: str) -> bytes:
    return json.dumps({"Code": code, "Message": message, "RequestId": _rid()}, ensure_ascii=False).encode()


def main(argv: list[str] | None = None) -> int:
    """Run the simulator in the foreground."""
    p = argparse.ArgumentParser(description="Aliyun SMS simulator (loopback only)")
    p.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "::1", "localhost"])
    p.add_argument("--port", type=int, default=8701)
    p.add_argument("--key", action="append", default=[], metavar="ID=SECRET", help="an AccessKey pair")
    p.add_argument("--sign", action="append", default=[], help="a filed signature")
    p.add_argument("--template", action="append", default=[], metavar="CODE=TEXT", help="a filed template")
    for name in (
        "qps",
        "rate",
        "p_hang",
        "hang_s",
        "p_system_error",
        "report_delay",
        "p_dup_report",
        "p_undeliv",
    ):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(AliyunSimConfig, name))
    p.add_argument("--report-url", default="")
    p.add_argument("--up-url", default="")
    a = p.parse_args(argv)
    cfg = AliyunSimConfig(
        report_url=a.report_url,
        up_url=a.up_url,
        **{
            k: getattr(a, k)
            for k in (
                "qps",
                "rate",
                "p_hang",
                "hang_s",
                "p_system_error",
                "report_delay",
                "p_dup_report",
                "p_undeliv",
            )
        },
    )
    if a.key:
        cfg.keys = dict(k.split("=", 1) for k in a.key)
    if a.sign:
        cfg.signs = set(a.sign)
    cfg.templates = dict(t.split("=", 1) for t in a.template)
    sim = AliyunSim(cfg, a.host, a.port)
    print(f"Aliyun simulator on http://{a.host}:{a.port}/ (keys: {', '.join(cfg.keys)})", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(sim.serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
