"""Webhook input over arbitrary bytes: the signature parser, the generic parser and the time check
raise :class:`WebhookError` (a 401 or a 422) and nothing else, whatever arrives."""

from __future__ import annotations

import math
import time

from hypothesis import example, given, settings, strategies as st

from engine.core.timestamps import EARLIEST, FUTURE_SLACK, epoch_seconds
from engine.sending.webhooks import GenericParser, WebhookError, parse_signature, sign, verify_signature

SECRET = b"s3cret"
NOW = 1_764_614_400.0

# What a header can hold as Starlette hands it over: any bytes, read as latin-1.
header_bytes = st.binary(max_size=2048).map(lambda b: b.decode("latin-1"))
# And bytes shaped like the real thing, where parsers slip: digits of other scripts, signs, spaces,
# huge numbers, repeated and empty keys, non-ASCII hex look-alikes.
piece = st.one_of(
    st.text(alphabet="0123456789²³¹٣६𝟗-+ .e_", max_size=30),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.text(alphabet="0123456789abcdefABCDEFéÿ\x00\u0660", min_size=0, max_size=80),
    st.just("9" * 5000),
)
shaped = st.lists(
    st.tuples(
        st.sampled_from(["t", "v1", "v0", "", "T", " t", "v1 "]), st.sampled_from(["=", "", "=="]), piece
    ),
    max_size=5,
).map(lambda kvs: ",".join(k + eq + v for k, eq, v in kvs))


def _only_webhook_errors(header: str | None, body: bytes = b"{}") -> None:
    try:
        t, mac = parse_signature(header)
    except WebhookError:
        pass
    else:
        assert 0 <= t < 10**12 and len(mac) == 64 and int(mac, 16) >= 0 and mac == mac.lower()
    try:
        verify_signature(SECRET, header, body, NOW)
    except WebhookError:
        return
    raise AssertionError(f"{header!r} verified without the secret")


@settings(max_examples=1500, deadline=None)
@given(header_bytes)
@example("t=²,v1=" + "0" * 64)
@example("t=" + "9" * 5000 + ",v1=" + "0" * 64)
@example("t=1764614400,v1=" + "é" * 64)
@example("t=1764614400,v1=" + "\x00" * 64)
def test_any_header_bytes_are_a_webhook_error_or_a_parsed_signature(header: str) -> None:
    _only_webhook_errors(header)


@settings(max_examples=1500, deadline=None)
@given(shaped)
def test_headers_shaped_like_signatures_are_a_webhook_error_or_a_parsed_signature(header: str) -> None:
    _only_webhook_errors(header)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512), st.integers(0, 10**12 - 1), st.binary(min_size=1, max_size=64))
def test_only_the_right_secret_body_and_time_verify(body: bytes, t: int, other: bytes) -> None:
    header = sign(SECRET, body, t)
    assert parse_signature(header) == (t, header.split("v1=")[1])
    verify_signature(SECRET, header, body, float(t))  # signed now: verifies
    for secret, data, now in ((other, body, t), (SECRET, body + b" ", t), (SECRET, body, t + 301.0)):
        if secret == SECRET and data == body and now == t:
            continue
        try:
            verify_signature(secret, header, data, float(now))
        except WebhookError:
            continue
        raise AssertionError("verified with the wrong secret, body or time")


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=4096))
@example(b'{"reports": [{"id": "x", "junk": ' + b"[" * 5000 + b"]" * 5000 + b"}]}")
@example(b'{"replies": [{"from": "1", "text": "R", "at": 1e999}]}')
@example(b'{"reports": [{"id": "x", "done_at": -1}]}')
def test_any_body_is_reports_replies_or_a_webhook_error(body: bytes) -> None:
    parser = GenericParser(SECRET)
    now = time.time()
    for read in (parser.reports, parser.replies):
        try:
            items = read(body, "gw")
        except WebhookError:
            continue
        for item in items:
            when = getattr(item, "done_at", None)
            if when is None:
                when = item.at  # type: ignore[union-attr]
            assert when == 0 or EARLIEST <= when <= now + FUTURE_SLACK + 1


@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(2**70), max_value=2**70),
    )
)
def test_a_time_is_sane_seconds_or_none(value: float) -> None:
    seconds = epoch_seconds(value, NOW)
    if seconds is None:
        return
    assert seconds == 0.0 or EARLIEST <= seconds <= NOW + FUTURE_SLACK
    assert math.isfinite(seconds)


@given(st.floats(min_value=EARLIEST, max_value=NOW))
def test_seconds_stay_and_milliseconds_come_back_as_seconds(seconds: float) -> None:
    assert epoch_seconds(seconds, NOW) == seconds
    back = epoch_seconds(seconds * 1000, NOW)
    assert back is not None and math.isclose(back, seconds, rel_tol=1e-12)
