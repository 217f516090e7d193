"""CreateSmartShortUrl and QueryPageSmartShortUrlLog: Pigeon's parameters and signatures agree with the official SDK.

The SDK (``alibabacloud_dysmsapi20170525`` 4.6.0) is the oracle for the parameter names and how
their values print (``CreateDateStart`` is an integer there: ``20261204``); its request is captured
before it leaves, with the clock and nonce fixed, as in ``test_cloud_signing.py``.
"""

from __future__ import annotations

import datetime

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

pytest.importorskip("alibabacloud_dysmsapi20170525.client", reason="pip install -e '.[dev]'")

from alibabacloud_dysmsapi20170525 import models as dysms
from alibabacloud_tea_openapi.utils import Utils as AliUtils
from darabonba.runtime import RuntimeOptions

from plugins.gateway_aliyun.api import Signer, create_links_query, link_log_query
from plugins.gateway_aliyun.signing import acs3_authorization
from tests.property.test_cloud_signing import _aliyun_sdk_request, _nonce, _stamp, _text, _time

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEY, SECRET = "LTAI5tExampleKeyId", "ExampleSecret"
_numbers = st.lists(st.from_regex(r"\A1[3-9][0-9]{9}\Z", fullmatch=True), min_size=1, max_size=100)
_url = st.builds(lambda path: "https://shop.example.cn/p?" + path, _text)
_day = st.dates(datetime.date(2020, 1, 1), datetime.date(2030, 12, 31)).map(lambda d: d.strftime("%Y%m%d"))


def _acs3_matches(sdk: object) -> None:
    headers = {k: v for k, v in sdk.headers.items() if k != "Authorization"}  # type: ignore[attr-defined]
    ours = acs3_authorization(
        "POST",
        "/",
        sdk.query,
        headers,
        headers["x-acs-content-sha256"],
        KEY,
        SECRET,  # type: ignore[attr-defined]
    )
    assert ours == sdk.headers["Authorization"]  # type: ignore[attr-defined]


@SETTINGS
@given(
    numbers=_numbers, url=_url, out_id=st.text("abcdefghij-_0123456789", max_size=30), t=_time, nonce=_nonce
)
def test_create_smart_short_url_matches_the_sdk(
    numbers: list[str], url: str, out_id: str, t: int, nonce: str
) -> None:
    request = dysms.CreateSmartShortUrlRequest(
        phone_numbers=",".join(numbers), source_url=url, out_id=out_id or None
    )
    sdk = _aliyun_sdk_request(
        lambda c: c.create_smart_short_url_with_options(request, RuntimeOptions(autoretry=False)),
        algorithm="ACS3-HMAC-SHA256",
        stamp=_stamp(t),
        nonce=nonce,
    )
    assert sdk.headers["x-acs-action"] == "CreateSmartShortUrl"
    _acs3_matches(sdk)
    query, headers = Signer(KEY, SECRET).sign(
        "CreateSmartShortUrl", create_links_query(numbers, url, out_id), now=t, nonce=nonce
    )
    assert query == sdk.query
    assert headers["x-acs-date"] == sdk.headers["x-acs-date"]
    # RPC: the SDK's own function signs our parameters to our signature
    rpc, _ = Signer(KEY, SECRET, algorithm="rpc").sign(
        "CreateSmartShortUrl", create_links_query(numbers, url, out_id), now=t, nonce=nonce
    )
    mine = rpc.pop("Signature")
    assert mine == AliUtils.get_rpcsignature(rpc, "POST", SECRET)


@SETTINGS
@given(start=_day, end=_day, page=st.integers(1, 10_000), size=st.integers(1, 100), t=_time, nonce=_nonce)
def test_query_page_smart_short_url_log_matches_the_sdk(
    start: str, end: str, page: int, size: int, t: int, nonce: str
) -> None:
    request = dysms.QueryPageSmartShortUrlLogRequest(
        create_date_start=int(start), create_date_end=int(end), page_no=page, page_size=size
    )
    sdk = _aliyun_sdk_request(
        lambda c: c.query_page_smart_short_url_log_with_options(request, RuntimeOptions(autoretry=False)),
        algorithm="ACS3-HMAC-SHA256",
        stamp=_stamp(t),
        nonce=nonce,
    )
    assert sdk.headers["x-acs-action"] == "QueryPageSmartShortUrlLog"
    _acs3_matches(sdk)
    query, _ = Signer(KEY, SECRET).sign(
        "QueryPageSmartShortUrlLog", link_log_query(start, end, page, size), now=t, nonce=nonce
    )
    assert query == sdk.query


def test_the_sdk_models_read_what_the_gateway_reads() -> None:
    """The answer fields the gateway reads are the SDK models' names."""
    created = dysms.CreateSmartShortUrlResponseBody().from_map(
        {
            "Code": "OK",
            "Model": [{"PhoneNumber": "13800138000", "ShortUrl": "https://dx.test/a", "Expiration": 1}],
        }
    )
    assert created.model[0].short_url == "https://dx.test/a"
    assert created.model[0].phone_number == "13800138000"
    log = dysms.QueryPageSmartShortUrlLogResponseBody().from_map(
        {
            "Code": "OK",
            "Model": {
                "List": [
                    {"PhoneNumber": "1", "ShortUrl": "u", "ClickState": 1, "ClickTime": 2, "CreateTime": 3}
                ],
                "TotalPage": 1,
            },
        }
    )
    row = log.model.list[0]
    assert (row.click_state, row.click_time, row.create_time, row.short_url) == (1, 2, 3, "u")
    assert log.model.total_page == 1
