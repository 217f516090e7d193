"""Pigeon's Aliyun (ACS3, RPC) and Tencent (TC3) signing agree byte for byte with the official SDKs.

The SDKs are test dependencies only. Each test gives the SDK and Pigeon identical inputs (fixed
nonce, time, parameters, body) over hypothesis-generated values — Unicode, many numbers, every
character the percent-encoding treats specially — and compares the signatures. The SDKs are
driven through their real request builders (their network call is replaced by a capture), so
what is compared is what each SDK would have sent.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import string
from typing import Any
from unittest import mock
from urllib.parse import parse_qsl, quote

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

alibaba = pytest.importorskip("alibabacloud_dysmsapi20170525.client", reason="pip install -e '.[dev]'")
tencent_sms = pytest.importorskip("tencentcloud.sms.v20210111.sms_client", reason="pip install -e '.[dev]'")

from alibabacloud_dysmsapi20170525 import models as dysms  # noqa: E402
from alibabacloud_tea_openapi import models as openapi  # noqa: E402
from alibabacloud_tea_openapi.utils import Utils as AliUtils  # noqa: E402
from darabonba.core import DaraCore  # noqa: E402
from darabonba.request import DaraRequest  # noqa: E402
from darabonba.runtime import RuntimeOptions  # noqa: E402
from tencentcloud.common import credential  # noqa: E402
from tencentcloud.common.http.request import RequestInternal  # noqa: E402
from tencentcloud.common.profile.client_profile import ClientProfile  # noqa: E402
from tencentcloud.common.profile.http_profile import HttpProfile  # noqa: E402
from tencentcloud.common.sign import Sign  # noqa: E402

from plugins.gateway_aliyun.api import Signer as AliyunSigner  # noqa: E402
from plugins.gateway_aliyun.signing import acs3_authorization, percent, rpc_signature  # noqa: E402
from plugins.gateway_tencent.api import Signer as TencentSigner  # noqa: E402
from plugins.gateway_tencent.signing import tc3_authorization, tc3_signature, tc3_string_to_sign  # noqa: E402

SPECIAL = " +*~%&=/?#:;,'\"!$()[]{}|\\^`<>@\t\n\r\x00\x7f"
_text = st.text(
    alphabet=st.one_of(
        st.characters(blacklist_categories=["Cs"]),  # any code point UTF-8 can carry
        st.sampled_from(SPECIAL),
        st.sampled_from("张三李四【】，。！拒收请回复R😀𠮷é"),
    ),
    max_size=40,
)
_numbers = st.lists(
    st.from_regex(r"\A(\+?86)?1[3-9][0-9]{9}\Z", fullmatch=True), min_size=1, max_size=1000
).map(",".join)
_key = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=12)
_secret = st.text(alphabet=string.ascii_letters + string.digits + "+/=", min_size=1, max_size=40)
_time = st.integers(min_value=1_500_000_000, max_value=2_100_000_000)
_nonce = st.text(alphabet=string.ascii_letters + string.digits + "-", min_size=1, max_size=40)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class _Captured(Exception):
    pass


def _aliyun_sdk_request(call: Any, *, algorithm: str, stamp: str, nonce: str) -> Any:
    """The request the Aliyun SDK builds for ``call(client)``, with its clock and nonce fixed."""
    captured: list[Any] = []

    def do_action(request: Any, runtime: Any) -> Any:
        captured.append(request)
        raise _Captured

    cfg = openapi.Config(
        access_key_id="LTAI5tExampleKeyId",
        access_key_secret="ExampleSecret",
        endpoint="dysmsapi.aliyuncs.com",
        signature_algorithm=algorithm,
    )
    client = alibaba.Client(cfg)
    with (
        mock.patch.object(DaraCore, "do_action", do_action),
        mock.patch.object(AliUtils, "get_nonce", return_value=nonce),
        mock.patch.object(AliUtils, "get_timestamp", return_value=stamp),
        contextlib.suppress(Exception),
    ):  # the SDK wraps the capture in its own exception
        call(client)
    assert captured, "the SDK built no request"
    return captured[0]


def _stamp(t: int) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@example(
    numbers="+8613800138000,8613900139000",
    sign=SPECIAL,
    params={"a": SPECIAL + "张三😀𠮷"},
    t=1_767_225_600,
    nonce="n",
)
@SETTINGS
@given(numbers=_numbers, sign=_text, params=st.dictionaries(_key, _text, max_size=8), t=_time, nonce=_nonce)
def test_acs3_send_sms_matches_the_sdk(
    numbers: str, sign: str, params: dict[str, str], t: int, nonce: str
) -> None:
    """SendSms through the SDK's V3 path: same query, and our signature over its exact request."""
    template_param = json.dumps(params, ensure_ascii=False)
    request = dysms.SendSmsRequest(
        phone_numbers=numbers,
        sign_name=sign or "签名",
        template_code="SMS_123",
        template_param=template_param,
    )
    sdk = _aliyun_sdk_request(
        lambda c: c.send_sms_with_options(request, RuntimeOptions(autoretry=False)),
        algorithm="ACS3-HMAC-SHA256",
        stamp=_stamp(t),
        nonce=nonce,
    )
    headers = {k: v for k, v in sdk.headers.items() if k != "Authorization"}
    ours = acs3_authorization(
        "POST",
        sdk.pathname,
        sdk.query,
        headers,
        headers["x-acs-content-sha256"],
        "LTAI5tExampleKeyId",
        "ExampleSecret",
    )
    assert ours == sdk.headers["Authorization"]
    # And the request our own builder makes carries the same parameters the SDK sends.
    query, own_headers = AliyunSigner("LTAI5tExampleKeyId", "ExampleSecret").sign(
        "SendSms",
        {
            "PhoneNumbers": numbers,
            "SignName": sign or "签名",
            "TemplateCode": "SMS_123",
            "TemplateParam": template_param,
        },
        now=t,
        nonce=nonce,
    )
    assert query == sdk.query
    assert own_headers["x-acs-date"] == sdk.headers["x-acs-date"]
    assert own_headers["x-acs-content-sha256"] == sdk.headers["x-acs-content-sha256"]


@SETTINGS
@given(
    rows=st.lists(
        st.tuples(st.from_regex(r"\A1[3-9][0-9]{9}\Z", fullmatch=True), _text), min_size=1, max_size=100
    ),
    t=_time,
    nonce=_nonce,
)
def test_acs3_send_batch_sms_matches_the_sdk(rows: list[tuple[str, str]], t: int, nonce: str) -> None:
    """SendBatchSms (JSON arrays in the query) through the SDK's V3 path."""
    numbers = json.dumps([n for n, _ in rows])
    signs = json.dumps(["签名"] * len(rows), ensure_ascii=False)
    params = json.dumps([{"name": v} for _, v in rows], ensure_ascii=False)
    request = dysms.SendBatchSmsRequest(
        phone_number_json=numbers, sign_name_json=signs, template_code="SMS_9", template_param_json=params
    )
    sdk = _aliyun_sdk_request(
        lambda c: c.send_batch_sms_with_options(request, RuntimeOptions(autoretry=False)),
        algorithm="ACS3-HMAC-SHA256",
        stamp=_stamp(t),
        nonce=nonce,
    )
    headers = {k: v for k, v in sdk.headers.items() if k != "Authorization"}
    ours = acs3_authorization(
        "POST",
        "/",
        sdk.query,
        headers,
        headers["x-acs-content-sha256"],
        "LTAI5tExampleKeyId",
        "ExampleSecret",
    )
    assert ours == sdk.headers["Authorization"]


@SETTINGS
@given(numbers=_numbers, params=st.dictionaries(_key, _text, max_size=8), t=_time, nonce=_nonce)
def test_rpc_hmac_sha1_matches_the_sdk(numbers: str, params: dict[str, str], t: int, nonce: str) -> None:
    """The older RPC signature (``signature_algorithm = "v2"`` in the SDK) and ours, over the
    SDK's own parameter set, and our builder's parameters signed by the SDK's function."""
    template_param = json.dumps(params, ensure_ascii=False)
    request = dysms.SendSmsRequest(
        phone_numbers=numbers, sign_name="阿里云短信", template_code="SMS_1", template_param=template_param
    )
    sdk = _aliyun_sdk_request(
        lambda c: c.send_sms_with_options(request, RuntimeOptions(autoretry=False)),
        algorithm="v2",
        stamp=_stamp(t),
        nonce=nonce,
    )
    signed = {k: v for k, v in sdk.query.items() if k != "Signature"}
    assert rpc_signature("POST", signed, "ExampleSecret") == sdk.query["Signature"]
    query, _ = AliyunSigner("LTAI5tExampleKeyId", "ExampleSecret", algorithm="rpc").sign(
        "SendSms",
        {
            "PhoneNumbers": numbers,
            "SignName": "阿里云短信",
            "TemplateCode": "SMS_1",
            "TemplateParam": template_param,
        },
        now=t,
        nonce=nonce,
    )
    mine = query.pop("Signature")
    assert mine == AliUtils.get_rpcsignature(query, "POST", "ExampleSecret")


@SETTINGS
@given(
    query=st.dictionaries(_text.filter(bool), _text, max_size=10),
    secret=_secret,
    payload=st.binary(max_size=64),
)
def test_acs3_function_matches_the_sdk_function(query: dict[str, str], secret: str, payload: bytes) -> None:
    """The bare functions on arbitrary query values (the SDK leaves names unencoded, so names here
    are drawn from the characters both encode alike: any name the API has)."""
    query = {k: v for k, v in query.items() if k.isalnum() and k.isascii()} or {"A": "b"}
    headers = {
        "host": "dysmsapi.aliyuncs.com",
        "x-acs-action": "SendSms",
        "x-acs-date": "2026-01-02T03:04:05Z",
    }
    req = DaraRequest()
    req.method, req.pathname, req.query, req.headers = "POST", "/", query, headers
    digest = hashlib.sha256(payload).hexdigest()
    assert acs3_authorization(
        "POST", "/", query, headers, digest, "AK", secret
    ) == AliUtils.get_authorization(req, "ACS3-HMAC-SHA256", digest, "AK", secret)


def _tencent_sdk_request(action: str, params: dict[str, Any], t: int, secret_key: str) -> RequestInternal:
    cred = credential.Credential("AKIDexample", secret_key)
    profile = ClientProfile(httpProfile=HttpProfile(endpoint="sms.tencentcloudapi.com"))
    client = tencent_sms.SmsClient(cred, "ap-guangzhou", profile)
    req = RequestInternal("sms.tencentcloudapi.com", "POST", "/")
    with mock.patch("time.time", return_value=t + 0.25):
        client._build_req_inter(action, params, req)
    return req


@example(numbers=["+8613800138000"], values=[SPECIAL, "张三😀"], sign=SPECIAL, t=1_767_225_600, secret="k")
@SETTINGS
@given(
    numbers=st.lists(st.from_regex(r"\A\+861[3-9][0-9]{9}\Z", fullmatch=True), min_size=1, max_size=200),
    values=st.lists(_text, max_size=6),
    sign=_text,
    t=_time,
    secret=_secret,
)
def test_tc3_matches_the_sdk(numbers: list[str], values: list[str], sign: str, t: int, secret: str) -> None:
    """SendSms through the SDK's TC3 path: our Authorization over its exact body and timestamp."""
    params = {
        "PhoneNumberSet": numbers,
        "SmsSdkAppId": "1400000000",
        "SignName": sign,
        "TemplateId": "1234567",
        "TemplateParamSet": values,
        "SessionContext": "pigeon-c1-7",
    }
    sdk = _tencent_sdk_request("SendSms", params, t, secret)
    body = sdk.data.encode("utf-8")
    ours = tc3_authorization(
        secret_id="AKIDexample",
        secret_key=secret,
        host="sms.tencentcloudapi.com",
        content_type=sdk.header["Content-Type"],
        body=body,
        timestamp=t,
        service="sms",
    )
    assert ours == sdk.header["Authorization"]
    mine = TencentSigner("AKIDexample", secret, region="ap-guangzhou").headers("SendSms", body, timestamp=t)
    assert mine["Authorization"] == sdk.header["Authorization"]
    assert mine["X-TC-Timestamp"] == sdk.header["X-TC-Timestamp"]


@SETTINGS
@given(body=st.binary(max_size=256), t=_time, secret=_secret, service=st.sampled_from(["sms", "cvm", "cam"]))
def test_tc3_function_matches_sign_tc3(body: bytes, t: int, secret: str, service: str) -> None:
    """Our key derivation and HMAC against ``Sign.sign_tc3`` on any body bytes."""
    to_sign = tc3_string_to_sign(
        method="POST",
        host="sms.tencentcloudapi.com",
        content_type="application/json",
        body=body,
        timestamp=t,
        service=service,
    )
    date = datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d")
    assert tc3_signature(secret, date, service, to_sign) == Sign.sign_tc3(secret, date, service, to_sign)


def test_a_changed_input_changes_the_signature() -> None:
    """The comparisons above could not pass by accident: one byte of difference shows."""
    a = acs3_authorization("POST", "/", {"A": "张三"}, {"host": "h"}, "0", "AK", "s")
    b = acs3_authorization("POST", "/", {"A": "张四"}, {"host": "h"}, "0", "AK", "s")
    assert a != b
    assert rpc_signature("POST", {"A": "1"}, "s") != rpc_signature("POST", {"A": "1"}, "t")
    kw: dict[str, Any] = {"host": "h", "content_type": "application/json", "timestamp": 1, "service": "sms"}
    assert tc3_authorization(secret_id="i", secret_key="k", body=b"{}", **kw) != tc3_authorization(
        secret_id="i", secret_key="k", body=b"{ }", **kw
    )


@SETTINGS
@given(value=st.one_of(_text, st.text(alphabet=string.printable, max_size=300), _numbers))
@example(value="%" * 70 + ",{}" * 30)
def test_percent_is_quote_whatever_the_text(value: str) -> None:
    """The fast escaping of long ASCII values gives :func:`urllib.parse.quote`'s text, to the byte
    (the SDK's encoding: every signature above depends on it)."""
    assert percent(value) == quote(value, safe="~", encoding="utf-8")


@SETTINGS
@given(numbers=_numbers, params=st.dictionaries(_key, _text, max_size=8), t=_time, nonce=_nonce)
@pytest.mark.parametrize("algorithm", ["acs3", "rpc"])
def test_the_wire_target_carries_what_was_signed(
    algorithm: str, numbers: str, params: dict[str, str], t: int, nonce: str
) -> None:
    """The request target sent (the canonical query, encoded once) holds exactly the parameters
    and headers :meth:`Signer.sign` signs — the SDK's, by the tests above."""
    signer = AliyunSigner("LTAI5tExampleKeyId", "ExampleSecret", algorithm=algorithm)  # type: ignore[arg-type]
    args = {
        "PhoneNumbers": numbers,
        "SignName": "签名",
        "TemplateParam": json.dumps(params, ensure_ascii=False),
    }
    query, headers = signer.sign("SendSms", args, now=t, nonce=nonce)
    target, wire_headers = signer.target("SendSms", args, now=t, nonce=nonce)
    assert wire_headers == headers
    assert target.startswith(b"/?")
    pairs = parse_qsl(target[2:].decode("ascii"), keep_blank_values=True, strict_parsing=True)
    assert dict(pairs) == query and len(pairs) == len(query)
