"""Tencent Cloud API 3.0 request signing: TC3-HMAC-SHA256.

Written from the published algorithm (reference providers §3.2); the official SDK is a test oracle
only (``tests/property/test_cloud_signing.py`` compares bytes over generated inputs)::

    CanonicalRequest = METHOD \\n / \\n query \\n "content-type:<ct>\\nhost:<host>\\n" \\n
                       "content-type;host" \\n hex(sha256(body))
    StringToSign     = "TC3-HMAC-SHA256" \\n <unix timestamp> \\n <date>/<service>/tc3_request \\n
                       hex(sha256(CanonicalRequest))
    key              = hmac(hmac(hmac("TC3" + SecretKey, date), service), "tc3_request")
    Authorization    = TC3-HMAC-SHA256 Credential=<SecretId>/<date>/<service>/tc3_request,
                       SignedHeaders=content-type;host, Signature=hex(hmac_sha256(key, StringToSign))

``date`` is the UTC date (``YYYY-MM-DD``) of the timestamp; the server refuses a timestamp more
than five minutes off (``AuthFailure.SignatureExpire``).
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["TC3", "tc3_authorization", "tc3_signature", "tc3_string_to_sign", "utc_date"]

TC3 = "TC3-HMAC-SHA256"
SIGNED_HEADERS = "content-type;host"


def utc_date(timestamp: int) -> str:
    """``YYYY-MM-DD`` of ``timestamp`` in UTC (the credential scope's date)."""
    return time.strftime("%Y-%m-%d", time.gmtime(timestamp))


def tc3_string_to_sign(
    *,
    method: str,
    host: str,
    content_type: str,
    body: bytes,
    timestamp: int,
    service: str,
    query: str = "",
    path: str = "/",
) -> str:
    """The StringToSign of one request."""
    canonical = (
        f"{method}\n{path}\n{query}\ncontent-type:{content_type}\nhost:{host}\n\n{SIGNED_HEADERS}\n"
        f"{hashlib.sha256(body).hexdigest()}"
    )
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{TC3}\n{timestamp}\n{utc_date(timestamp)}/{service}/tc3_request\n{digest}"


def _mac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def tc3_signature(secret_key: str, date: str, service: str, string_to_sign: str) -> str:
    """hex HMAC-SHA256 of ``string_to_sign`` with the key derived from ``secret_key``."""
    key = _mac(_mac(_mac(("TC3" + secret_key).encode("utf-8"), date), service), "tc3_request")
    return hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def tc3_authorization(
    *,
    secret_id: str,
    secret_key: str,
    host: str,
    content_type: str,
    body: bytes,
    timestamp: int,
    service: str,
    method: str = "POST",
    query: str = "",
) -> str:
    """The ``Authorization`` header of one request."""
    date = utc_date(timestamp)
    to_sign = tc3_string_to_sign(
        method=method,
        host=host,
        content_type=content_type,
        body=body,
        timestamp=timestamp,
        service=service,
        query=query,
    )
    signature = tc3_signature(secret_key, date, service, to_sign)
    return (
        f"{TC3} Credential={secret_id}/{date}/{service}/tc3_request, "
        f"SignedHeaders={SIGNED_HEADERS}, Signature={signature}"
    )
