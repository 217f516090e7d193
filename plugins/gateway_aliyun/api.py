"""Dysmsapi 2017-05-25 requests, signed: the actions Pigeon calls and how each request is built.

Parameters travel in the query string of ``POST /`` with an empty body, as the official SDK sends
RPC-style actions; the request is signed with ACS3-HMAC-SHA256 (``algorithm = "acs3"``, the
default) or the older RPC HMAC-SHA1 (``"rpc"``), see :mod:`plugins.gateway_aliyun.signing`.
:meth:`Signer.target` gives the request target as it goes on the wire: the canonical query the
signature was computed over (sorted, percent-encoded once), so a 14 KB SendSms of 1,000 numbers is
encoded once and never parsed again.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Literal

from plugins.gateway_aliyun.signing import (
    EMPTY_SHA256,
    acs3_authorization,
    canonical_query,
    iso_timestamp,
    percent,
    rpc_signature,
)

__all__ = ["DEFAULT_HOST", "VERSION", "Signer", "create_links_query", "encode_query", "link_log_query"]

DEFAULT_HOST = "dysmsapi.aliyuncs.com"
VERSION = "2017-05-25"

Algorithm = Literal["acs3", "rpc"]


def encode_query(query: Mapping[str, str]) -> str:
    """The query string as sent (RFC 3986 percent-encoding, so every value arrives unchanged)."""
    return "&".join(f"{percent(k)}={percent(v)}" for k, v in query.items())


def create_links_query(numbers: Sequence[str], source_url: str, out_id: str = "") -> dict[str, str]:
    """``CreateSmartShortUrl`` parameters: ``PhoneNumbers`` (national numbers, comma-joined),
    ``SourceUrl`` and ``OutId`` (left out when empty), as the SDK's request model names them."""
    query = {"PhoneNumbers": ",".join(numbers), "SourceUrl": source_url}
    if out_id:
        query["OutId"] = out_id
    return query


def link_log_query(start: str, end: str, page: int, size: int) -> dict[str, str]:
    """``QueryPageSmartShortUrlLog`` parameters: links made from ``start`` to ``end`` (Beijing
    dates ``yyyyMMdd``, sent as the SDK's integers print), page ``page`` (from 1) of ``size`` rows."""
    return {"CreateDateStart": start, "CreateDateEnd": end, "PageNo": str(page), "PageSize": str(size)}


class Signer:
    """Signs Dysmsapi requests with one AccessKey pair."""

    def __init__(self, key_id: str, secret: str, *, host: str = DEFAULT_HOST, algorithm: Algorithm = "acs3"):
        self.key_id = key_id
        self._secret = secret
        self.host = host
        self.algorithm: Algorithm = algorithm

    def sign(
        self, action: str, params: Mapping[str, str], *, now: float | None = None, nonce: str | None = None
    ) -> tuple[dict[str, str], dict[str, str]]:
        """(query parameters, headers) of a signed ``POST /`` calling ``action`` with ``params``."""
        query, headers, _ = self._signed(action, params, now, nonce)
        return query, headers

    def target(
        self, action: str, params: Mapping[str, str], *, now: float | None = None, nonce: str | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """(request target ``/?<query>``, headers) of the same signed ``POST /`` as :meth:`sign`:
        the query is the canonical one the signature covers (its order is the sorted one; the
        server reads parameters by name)."""
        query, headers, canonical = self._signed(action, params, now, nonce)
        if self.algorithm == "rpc":
            canonical += "&Signature=" + percent(query["Signature"])
        return ("/?" + canonical).encode("ascii"), headers

    def _signed(
        self, action: str, params: Mapping[str, str], now: float | None, nonce: str | None
    ) -> tuple[dict[str, str], dict[str, str], str]:
        """(query, headers, the canonical query without ``Signature``)."""
        stamp = iso_timestamp(now)
        nonce = nonce or secrets.token_hex(16)
        if self.algorithm == "rpc":
            query = {
                **params,
                "AccessKeyId": self.key_id,
                "Action": action,
                "Format": "JSON",
                "SignatureMethod": "HMAC-SHA1",
                "SignatureNonce": nonce,
                "SignatureVersion": "1.0",
                "Timestamp": stamp,
                "Version": VERSION,
            }
            canonical = canonical_query(query)
            query["Signature"] = rpc_signature("POST", query, self._secret, canonical)
            return query, {"host": self.host, "accept": "application/json"}, canonical
        query = dict(params)
        canonical = canonical_query(query)
        headers = {
            "host": self.host,
            "accept": "application/json",
            "x-acs-action": action,
            "x-acs-version": VERSION,
            "x-acs-date": stamp,
            "x-acs-signature-nonce": nonce,
            "x-acs-content-sha256": EMPTY_SHA256,
        }
        headers["Authorization"] = acs3_authorization(
            "POST", "/", query, headers, EMPTY_SHA256, self.key_id, self._secret, canonical
        )
        return query, headers, canonical
