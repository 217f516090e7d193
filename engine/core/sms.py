"""SMS length and billing arithmetic: GSM-7 vs UCS-2, billed parts, and splitting into parts.

Rules (``reference/protocols-carriers-compliance.md`` §2):

* A message that is entirely GSM-7 (basic table plus extension table) is billed 160 septets in one
  part, 153 per part when split; extension characters (``\\f ^ { } \\ [ ] ~ | €``) take two septets.
* Anything else is UCS-2: 70 UTF-16 units in one part, 67 per part when split; characters outside
  the BMP (emoji, CJK Ext-B) take two units.
* A split never cuts a surrogate pair or a GSM escape sequence, so a message whose two-unit
  characters straddle a boundary can need one more part than ``ceil(units / per_part)``.
* A message may have at most 255 parts (the 8-bit UDH sequence field).
"""

from __future__ import annotations

import re
from typing import Final, Literal

__all__ = [
    "ASTRAL",
    "GSM7_BASIC",
    "GSM7_EXTENSION",
    "GSM7_EXT_RE",
    "MAX_PARTS",
    "NOT_GSM7",
    "Encoding",
    "count_parts",
    "encoding_of",
    "most_parts",
    "parts_for_units",
    "split",
    "units",
]

Encoding = Literal["gsm7", "ucs2"]

GSM7_BASIC: Final = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION: Final = "\f^{}\\[~]|€"
MAX_PARTS: Final = 255

SINGLE: Final[dict[Encoding, int]] = {"gsm7": 160, "ucs2": 70}
MULTI: Final[dict[Encoding, int]] = {"gsm7": 153, "ucs2": 67}

NOT_GSM7: Final = re.compile("[^" + re.escape(GSM7_BASIC + GSM7_EXTENSION) + "]")
GSM7_EXT_RE: Final = re.compile("[" + re.escape(GSM7_EXTENSION) + "]")
ASTRAL: Final = re.compile("[\U00010000-\U0010ffff]")


def encoding_of(text: str) -> Encoding:
    """GSM-7 if every character is in the GSM 03.38 tables, otherwise UCS-2."""
    return "ucs2" if NOT_GSM7.search(text) else "gsm7"


def _double_width(text: str, enc: Encoding) -> re.Pattern[str]:
    return GSM7_EXT_RE if enc == "gsm7" else ASTRAL


def units(text: str, enc: Encoding | None = None) -> int:
    """Billed length: septets for GSM-7, UTF-16 code units for UCS-2."""
    enc = enc or encoding_of(text)
    return len(text) + len(_double_width(text, enc).findall(text))


def parts_for_units(n: int, enc: Encoding) -> int:
    """Parts for a message of ``n`` units with no two-unit character near a part boundary."""
    if n <= SINGLE[enc]:
        return 1
    per = MULTI[enc]
    return -(-n // per)


def split(text: str, enc: Encoding | None = None, per_part: int | None = None) -> list[str]:
    """Split a message into its parts as a sender must, never cutting a two-unit character.

    ``per_part`` overrides the units a part of a long message holds (153 GSM-7 / 67 UCS-2 with
    the usual 6-byte header; a 7-byte header with a 16-bit reference leaves 152 / 66).
    """
    enc = enc or encoding_of(text)
    wide = _double_width(text, enc)
    n = len(text) + len(wide.findall(text))
    if n <= SINGLE[enc]:
        return [text]
    per = per_part or MULTI[enc]
    out: list[str] = []
    start = used = 0
    for i, ch in enumerate(text):
        w = 2 if wide.match(ch) else 1
        if used + w > per:
            out.append(text[start:i])
            start, used = i, 0
        used += w
    out.append(text[start:])
    return out


def count_parts(text: str) -> int:
    """Billed SMS parts for ``text`` (which already holds signature and opt-out text)."""
    enc = encoding_of(text)
    wide = _double_width(text, enc)
    if wide.search(text) is None:
        return parts_for_units(len(text), enc)
    return len(split(text, enc))


def most_parts(max_units: int) -> int:
    """The most parts a message of at most ``max_units`` billed units can take, in any encoding:
    UCS-2 (the worst), with a two-unit character wasting a unit at every part boundary."""
    if max_units <= SINGLE["ucs2"]:
        return 1
    return -(-max_units // (MULTI["ucs2"] - 1))
