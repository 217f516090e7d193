"""Aliyun and Tencent callback parsers: receipts to reports by the provider ids the gateways record,
repeats dropped, replies to MO (an R opts out), the acknowledgement each provider expects."""

from __future__ import annotations

import json

import pytest

from engine.core.messages import DeliveryStatus
from engine.sending.webhooks import WebhookError
from engine.state.optout import is_opt_out_reply
from plugins.gateway_aliyun.webhooks import AliyunParser
from plugins.gateway_tencent.webhooks import TencentParser


def _aliyun_report(phone: str, ok: bool = True, biz: str = "900^1") -> dict[str, object]:
    return {
        "phone_number": phone,
        "send_time": "2026-01-02 10:00:00",
        "report_time": "2026-01-02 10:00:05",
        "success": ok,
        "err_code": "DELIVERED" if ok else "MK:0001",
        "err_msg": "用户接收成功",
        "sms_size": "1",
        "biz_id": biz,
        "out_id": "pg1",
    }


def test_aliyun_receipts_name_the_gateways_provider_id_and_repeats_count_once() -> None:
    p = AliyunParser(None, "aliyun")
    body = json.dumps([_aliyun_report("13800138000"), _aliyun_report("+8613900139000", ok=False)]).encode()
    first = p.reports(body, "aliyun")
    assert [(r.provider_id, r.status, r.code) for r in first] == [
        ("900^1-13800138000", DeliveryStatus.DELIVERED, "DELIVERED"),
        ("900^1-13900139000", DeliveryStatus.FAILED, "MK:0001"),
    ]
    assert first[0].done_at == 1767319205.0  # 10:00:05 in Beijing
    assert p.reports(body, "aliyun") == []  # pushed again after a network fault: dropped
    assert p.duplicates == 2
    assert p.answer("reports", 2, 2) == (b'{"code":0,"msg":"\xe6\x88\x90\xe5\x8a\x9f"}', "application/json")


def test_aliyun_replies_become_mo_and_an_r_opts_out_once() -> None:
    p = AliyunParser(None, "aliyun")
    up = [
        {
            "phone_number": "13800138000",
            "content": "R",
            "send_time": "2026-01-02 10:00:00",
            "dest_code": "1234",
            "sequence_id": 7,
        }
    ]
    (reply,) = p.replies(json.dumps(up).encode(), "aliyun")
    assert (reply.from_, reply.to, reply.text) == ("13800138000", "1234", "R")
    assert is_opt_out_reply(reply.text, ["R", "TD", "退订"])
    assert p.replies(json.dumps(up).encode(), "aliyun") == []


def test_a_token_guards_unsigned_pushes() -> None:
    p = AliyunParser(b"s3cret", "aliyun")
    p.verify(b"[]", {}, 0.0, query={"token": "s3cret"})
    with pytest.raises(WebhookError, match="token"):
        p.verify(b"[]", {}, 0.0, query={})
    with pytest.raises(WebhookError, match="not an Aliyun SmsReport"):
        p.reports(b'{"not": "a list"}', "aliyun")


def test_tencent_status_and_reply_callbacks() -> None:
    p = TencentParser(None, "tencent")
    status = [
        {
            "user_receive_time": "2026-01-02 10:00:05",
            "nationcode": "86",
            "mobile": "13800138000",
            "report_status": "SUCCESS",
            "errmsg": "DELIVRD",
            "description": "用户短信送达成功",
            "sid": "1:abc",
        }
    ]
    (r,) = p.reports(json.dumps(status).encode(), "tencent")
    assert (r.provider_id, r.status, r.code) == ("1:abc", DeliveryStatus.DELIVERED, "DELIVRD")
    assert p.reports(json.dumps(status).encode(), "tencent") == []
    reply = {
        "extend": "",
        "mobile": "13800138000",
        "nationcode": "86",
        "sign": "小鹅优选",
        "text": "退订",
        "time": 1767319205,
    }
    (mo,) = p.replies(json.dumps(reply).encode(), "tencent")
    assert (mo.from_, mo.text, mo.at) == ("13800138000", "退订", 1767319205.0)
    assert p.answer("replies", 1, 1) == (b'{"result":0,"errmsg":"OK"}', "application/json")
