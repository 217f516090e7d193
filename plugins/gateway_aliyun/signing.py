"""Aliyun OpenAPI request signing: ACS3-HMAC-SHA256 (V3, the default) and the older RPC HMAC-SHA1.

Both are written from the published algorithms (reference providers §3.2); the official SDK is a
test oracle only (``tests/property/test_cloud_signing.py`` compares bytes over generated inputs).

**ACS3-HMAC-SHA256**::

    CanonicalRequest = METHOD \\n path \\n canonical query \\n canonical headers \\n signed headers \\n
                       hex(sha256(body))
    StringToSign     = "ACS3-HMAC-SHA256" \\n hex(sha256(CanonicalRequest))
    Authorization    = ACS3-HMAC-SHA256 Credential=<key id>,SignedHeaders=<names>,Signature=
                       hex(hmac_sha256(secret, StringToSign))

The canonical query is ``name=value`` pairs sorted by name, each percent-encoded as RFC 3986
(UTF-8, only ``A-Z a-z 0-9 - _ . ~`` left as they are), joined by ``&``; the canonical headers are
the signed headers' lower-cased names, sorted, each ``name:trimmed value\\n``.

**RPC (V2, HMAC-SHA1)**: every parameter, the signature's own (``SignatureMethod``,
``SignatureNonce``, ``SignatureVersion``, ``Timestamp``, ``AccessKeyId``, ``Format``,
``Action``, ``Version``) included, is percent-encoded and sorted as above; ``StringToSign =
METHOD + "&%2F&" + percent(canonical query)``; ``Signature = base64(hmac_sha1(secret + "&",
StringToSign))``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping
from urllib.parse import quote

__all__ = [
    "ACS3",
    "EMPTY_SHA256",
    "acs3_authorization",
    "acs3_string_to_sign",
    "canonical_headers",
    "canonical_query",
    "iso_timestamp",
    "percent",
    "rpc_signature",
    "rpc_string_to_sign",
]

ACS3 = "ACS3-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
"""``x-acs-content-sha256`` of a request whose parameters all travel in the query (RPC style)."""


_UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~"


def percent(value: str) -> str:
    """RFC 3986 percent-encoding of UTF-8 ``value``: only unreserved characters stay as they are.

    A long ASCII value (the 1,000 numbers of a SendSms, JSON of ASCII values) is escaped with a few
    C-level passes — the characters to escape found by one :meth:`bytes.translate`, then one
    :meth:`str.replace` per distinct character (``%`` first) — instead of :func:`urllib.parse.quote`'s
    loop over every byte; the same text either way (``tests/property/test_cloud_signing.py``)."""
    if len(value) < 64 or not value.isascii():
        return quote(value, safe="~", encoding="utf-8")
    rest = value.encode("ascii").translate(None, _UNRESERVED)
    for c in sorted(set(rest), key=lambda c: c != 0x25):  # "%" first: the escapes bring their own
        value = value.replace(chr(c), f"%{c:02X}")
    return value


def canonical_query(params: Mapping[str, str]) -> str:
    """Sorted ``name=value`` pairs, percent-encoded, joined by ``&`` (``""`` for none)."""
    return "&".join(f"{percent(k)}={percent(v)}" for k, v in sorted(params.items()))


def canonical_headers(headers: Mapping[str, str]) -> tuple[str, str]:
    """(canonical headers, signed header names) of ``headers``: every one given is signed."""
    merged: dict[str, list[str]] = {}
    for name, value in headers.items():
        merged.setdefault(name.lower(), []).append(value.strip())
    names = sorted(merged)
    text = "".join(f"{n}:{','.join(sorted(merged[n]))}\n" for n in names)
    return text, ";".join(names)


def acs3_string_to_sign(
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    payload_sha256: str,
    canonical: str | None = None,
) -> tuple[str, str]:
    """(StringToSign, signed header names) of a V3 request (``canonical``: ``query``'s canonical
    form when the caller has it already)."""
    canon_headers, signed = canonical_headers(headers)
    canon_query = canonical_query(query) if canonical is None else canonical
    request = f"{method}\n{path or '/'}\n{canon_query}\n{canon_headers}\n{signed}\n{payload_sha256}"
    digest = hashlib.sha256(request.encode("utf-8")).hexdigest()
    return f"{ACS3}\n{digest}", signed


def acs3_authorization(
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    payload_sha256: str,
    key_id: str,
    secret: str,
    canonical: str | None = None,
) -> str:
    """The ``Authorization`` header of a V3 request signing every header in ``headers``."""
    to_sign, signed = acs3_string_to_sign(method, path, query, headers, payload_sha256, canonical)
    signature = hmac.new(secret.encode("utf-8"), to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"{ACS3} Credential={key_id},SignedHeaders={signed},Signature={signature}"


def rpc_string_to_sign(method: str, params: Mapping[str, str], canonical: str | None = None) -> str:
    """The V2 StringToSign of ``params`` (every parameter of the request but ``Signature``)."""
    return f"{method}&%2F&{percent(canonical_query(params) if canonical is None else canonical)}"


def rpc_signature(method: str, params: Mapping[str, str], secret: str, canonical: str | None = None) -> str:
    """The V2 ``Signature`` parameter."""
    to_sign = rpc_string_to_sign(method, params, canonical)
    mac = hmac.new((secret + "&").encode("utf-8"), to_sign.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(mac).decode("ascii")


def iso_timestamp(now: float | None = None) -> str:
    """UTC time as Aliyun wants it in ``x-acs-date`` and ``Timestamp``: ``2026-01-02T03:04:05Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))
