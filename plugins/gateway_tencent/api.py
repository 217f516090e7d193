"""Tencent Cloud SMS 2021-01-11 requests, signed: JSON bodies posted to ``/`` with TC3 headers."""

from __future__ import annotations

import time

from plugins.gateway_tencent.signing import tc3_authorization

__all__ = ["CONTENT_TYPE", "DEFAULT_HOST", "SERVICE", "VERSION", "Signer"]

DEFAULT_HOST = "sms.tencentcloudapi.com"
SERVICE = "sms"
VERSION = "2021-01-11"
CONTENT_TYPE = "application/json"


class Signer:
    """Signs Tencent Cloud SMS requests with one SecretId/SecretKey pair."""

    def __init__(
        self, secret_id: str, secret_key: str, *, host: str = DEFAULT_HOST, region: str = ""
    ) -> None:
        self.secret_id = secret_id
        self._secret_key = secret_key
        self.host = host
        self.region = region

    def headers(self, action: str, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
        """The headers of a signed ``POST /`` calling ``action`` with the JSON ``body``."""
        ts = int(time.time()) if timestamp is None else timestamp
        out = {
            "Host": self.host,
            "Content-Type": CONTENT_TYPE,
            "X-TC-Action": action,
            "X-TC-Version": VERSION,
            "X-TC-Timestamp": str(ts),
        }
        if self.region:
            out["X-TC-Region"] = self.region
        out["Authorization"] = tc3_authorization(
            secret_id=self.secret_id,
            secret_key=self._secret_key,
            host=self.host,
            content_type=CONTENT_TYPE,
            body=body,
            timestamp=ts,
            service=SERVICE,
        )
        return out
