"""Normalize phone numbers as merchants write them to E.164, with a reason for every refusal.

The fast path (an 11-digit ASCII string starting with ``1``) lives in the ``normalize`` stage and
never calls into this module; :func:`parse_phone` handles everything else: ``+86 138-0013-8000``,
``0086…``, ``86…``, full-width digits, Excel's ``13800138000.0``, and international numbers
(through ``phonenumbers``, off the fast path).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from engine.core.messages import RejectReason

__all__ = ["ParsedPhone", "mask", "parse_phone"]

_SEPARATORS = " \t\u3000\xa0\u2002\u2003\u2009\u200b-‐‑‒–—－()（）.．/'\"＋"
_TRANSLATE = str.maketrans(
    {
        **{chr(0xFF10 + d): str(d) for d in range(10)},  # full-width digits
        **{ch: None for ch in _SEPARATORS if ch != "＋"},
        "＋": "+",
    }
)

_EXCEL_FLOAT = re.compile(r"^\d+\.0+$")
"""Excel's float of a number cell (``13800138000.0``); never with a ``+``, which makes Excel keep
the value as text — there a dot separates digits (``+1.415.555.1234``)."""
_SCIENTIFIC = re.compile(r"^\d(?:\.\d+)?[eE]\+?\d+$")


class ParsedPhone(NamedTuple):
    """The result of :func:`parse_phone`: either a number or a reject reason with detail."""

    national: str
    """The 11-digit Chinese mobile number (``13800138000``), or ``""``."""
    e164: str
    """The E.164 form (``+8613800138000`` / ``+447700900123``), or ``""`` when rejected."""
    reason: RejectReason | None
    detail: str


def _reject(reason: RejectReason, detail: str) -> ParsedPhone:
    return ParsedPhone("", "", reason, detail)


def parse_phone(raw: str) -> ParsedPhone:
    """Normalize one phone value in any common form.

    A Chinese mobile comes back with ``national`` set (the carrier table decides whether its prefix
    is sendable); an international number with only ``e164``; anything else with a reason.
    """
    s = raw.strip()
    if not s:
        return _reject(RejectReason.MISSING_PHONE, "the phone column is empty")
    if "." in s or "e" in s or "E" in s:
        if _EXCEL_FLOAT.match(s):
            s = s.split(".", 1)[0]
        elif _SCIENTIFIC.match(s):
            return _reject(
                RejectReason.INVALID_NUMBER,
                "number in scientific notation (Excel rounded it); export the column as text",
            )
    s = s.translate(_TRANSLATE)
    if s.startswith("+86"):
        national = s[3:]
    elif s.startswith("0086"):
        national = s[4:]
    elif s.startswith("+"):
        return _parse_international(s)
    elif s.startswith("00"):
        return _parse_international("+" + s[2:])
    elif len(s) == 13 and s.startswith("86"):
        national = s[2:]
    else:
        national = s
    if not (national.isascii() and national.isdigit()):
        return _reject(RejectReason.INVALID_NUMBER, "contains characters that are not digits")
    if len(national) == 11 and national[0] == "1":
        return ParsedPhone(national, "+86" + national, None, "")
    if len(national) == 13 and national.startswith("14"):
        return _reject(RejectReason.IOT_NUMBER, "13-digit IoT number (data only, no SMS)")
    if national.startswith("0") and len(national) >= 10:
        return _reject(RejectReason.NOT_MOBILE, "looks like a landline (area code); SMS needs a mobile")
    return _reject(
        RejectReason.INVALID_NUMBER,
        f"a Chinese mobile has 11 digits starting with 1; got {len(national)} digits",
    )


@lru_cache(maxsize=1)
def _phonenumbers() -> object:
    import phonenumbers  # imported lazily: ~50 ms and 25 MB, only for international numbers

    return phonenumbers


def _parse_international(s: str) -> ParsedPhone:
    pn = _phonenumbers()
    try:
        num = pn.parse(s, None)  # type: ignore[attr-defined]
    except Exception as exc:  # phonenumbers.NumberParseException; message is user-readable
        return _reject(RejectReason.INVALID_NUMBER, f"not a valid international number: {exc}")
    if num.country_code == 86:
        national = str(num.national_number)
        return parse_phone(national)
    if not pn.is_valid_number(num):  # type: ignore[attr-defined]
        return _reject(RejectReason.INVALID_NUMBER, "not a valid number for its country code")
    ntype = pn.number_type(num)  # type: ignore[attr-defined]
    mobile_types = (pn.PhoneNumberType.MOBILE, pn.PhoneNumberType.FIXED_LINE_OR_MOBILE)  # type: ignore[attr-defined]
    if ntype not in mobile_types:
        return _reject(RejectReason.NOT_MOBILE, "not a mobile number")
    e164 = pn.format_number(num, pn.PhoneNumberFormat.E164)  # type: ignore[attr-defined]
    return ParsedPhone("", e164, None, "")


def mask(number: str) -> str:
    """Mask a phone number for logs and reports, the same way whichever form it was written in.

    The value is first read as :func:`parse_phone` reads it (separators and spaces dropped,
    full-width digits, Excel's ``.0``, ``+86``/``0086``/``86`` before a Chinese number, ``00`` for
    ``+``), then:

    - a Chinese number keeps its first 3 and last 4 digits: ``13800138000``, ``+86 138-0013-8000``,
      ``8613800138000`` and ``１３８００１３８０００`` all become ``138****8000``;
    - an international number keeps ``+``, the first 2 digits and the last 4:
      ``+44 7911 123456`` and ``0044 7911 123456`` become ``+44******3456``;
    - digits are shown only when at least 4 stay hidden (11 digits or more for a Chinese number,
      10 or more after ``+``); a shorter one has every digit starred: ``12345`` → ``*****``,
      ``+6834001`` → ``+*******``;
    - anything that is not a number (letters, Excel's scientific notation, a name typed into the
      phone column) becomes one ``*`` per character: ``n/a`` → ``***``.

    So a masked value never shows more than 7 digits, nor more than 4 in a row, nor anything but
    digits, ``*`` and a leading ``+``.
    """
    if len(number) == 11 and number.isascii() and number.isdigit():  # the usual case
        return number[:3] + "****" + number[7:]
    s = number.strip()
    if "." in s and _EXCEL_FLOAT.match(s):
        s = s.split(".", 1)[0]
    s = s.translate(_TRANSLATE)
    if s.startswith("00"):
        s = "+" + s[2:]
    plus = s.startswith("+")
    digits = s[1:] if plus else s
    if not (digits.isascii() and digits.isdigit()):
        return "*" * len(number.strip())
    if plus and digits.startswith("86"):
        plus, digits = False, digits[2:]
        if not digits:  # "+86" alone
            return "*" * len(number.strip())
    elif not plus and len(digits) == 13 and digits.startswith("86"):
        digits = digits[2:]
    if plus:
        n = len(digits)
        return "+" + (digits[:2] + "*" * (n - 6) + digits[-4:] if n >= 10 else "*" * n)
    n = len(digits)
    return digits[:3] + "*" * (n - 7) + digits[-4:] if n >= 11 else "*" * n
