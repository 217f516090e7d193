"""Text from outside, made fit for a log line: phone-like digit runs masked, length bounded, tracebacks too.

An exception's message often quotes what caused it — a file name, a header, a phone number —
so a traceback in a log may carry a recipient's number. :func:`format_exception` formats the
frames as Python does (file, line, function and source line) and passes each frame and each
message through :func:`redact`.
"""

from __future__ import annotations

import re
import traceback

from engine.core.phone import mask

__all__ = ["MAX_MESSAGE", "format_exception", "redact"]

MAX_MESSAGE = 300
"""Characters of a redacted text kept (the rest is counted, not shown)."""

_DIGITS = re.compile(r"\+?[0-9０-９](?:[0-9０-９ -]{3,}[0-9０-９])")
"""A run of digits (ASCII or full-width), possibly with spaces, dashes or a leading ``+``."""


def _mask(m: re.Match[str]) -> str:
    text = m.group(0)
    digits = sum(c.isdigit() for c in text)
    return mask(text) if digits >= 5 else text


def redact(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` with every phone-like run of 5 or more digits masked (``138****8000``) and cut
    to ``limit`` characters."""
    if len(text) > 4 * limit:  # mask only what is shown
        text = text[: 4 * limit]
        cut = True
    else:
        cut = False
    out = _DIGITS.sub(_mask, text)
    if len(out) > limit or cut:
        out = out[:limit] + "…(cut)"
    return out


def format_exception(exc: BaseException, *, chain: int = 5) -> str:
    """A traceback of ``exc`` (and up to ``chain`` causes) with every message :func:`redact`-ed."""
    seen: set[int] = set()
    excs: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and len(excs) < chain:
        seen.add(id(cur))
        excs.append(cur)
        cur = cur.__cause__ or (None if cur.__suppress_context__ else cur.__context__)
    parts: list[str] = []
    for i, e in enumerate(reversed(excs)):
        if i:
            parts.append("\nThe above exception led to the following one:\n\n")
        if e.__traceback__ is not None:
            parts.append("Traceback (most recent call last):\n")
            parts.extend(redact(frame, 4 * MAX_MESSAGE) for frame in traceback.format_tb(e.__traceback__))
        kind = type(e)
        name = kind.__qualname__
        if kind.__module__ != "builtins":
            name = f"{kind.__module__}.{name}"
        try:
            message = str(e)
        except Exception:  # a broken __str__ must not break the log line
            message = "<unprintable>"
        parts.append(f"{name}: {redact(message)}\n" if message else f"{name}\n")
    return "".join(parts).rstrip("\n")
