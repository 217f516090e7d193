"""Short link codes: base62 text of a keyed hash, per campaign group or per recipient, and their URLs.

Three ways a campaign can carry a link (``[links] mode``, docs/outcomes.md):

* ``group`` — one constant link per campaign and group, ``{domain}/{code}``, the code a hash of
  (campaign, group): the reliable default in China since 2025 (carriers bind a filed template to
  one link); clicks are counted per group, not per person.
* ``recipient`` — one code per recipient on the merchant's own filed short domain; a click names
  the recipient. Only where the channel allows a link in a variable (not Tencent, not Huawei).
* ``provider`` — per-phone links the gateway's provider makes and tracks (Aliyun
  ``CreateSmartShortUrl``); Pigeon only carries the contract (:mod:`engine.sending.gateway`).

A code is ``length`` base62 characters (7: 3.5·10¹² codes) of HMAC-SHA256 under the store's links
secret, so codes cannot be guessed from each other; ``attempt`` > 0 gives the next code when one is
taken by another recipient (the store resolves such rare collisions).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

__all__ = ["ALPHABET", "LINK_MODES", "code", "link_url"]

ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
LINK_MODES: Final = ("group", "recipient", "provider")


def code(secret: bytes, campaign: str, key: str, length: int = 7, attempt: int = 0) -> str:
    """The code of ``key`` (a group name, or a row number as text) in ``campaign``."""
    msg = f"{campaign}\x1f{key}\x1f{attempt}".encode()
    n = int.from_bytes(hmac.new(secret, msg, hashlib.sha256).digest()[:12], "big")
    out = []
    for _ in range(length):
        n, r = divmod(n, 62)
        out.append(ALPHABET[r])
    return "".join(out)


def link_url(domain: str, short: str) -> str:
    """``{domain}/{code}`` (one slash between them)."""
    return domain.rstrip("/") + "/" + short
