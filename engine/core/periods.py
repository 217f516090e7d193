"""Periods written in config files (``30s``, ``15m``, ``24h``, ``7d``, ``calendar_day``) as seconds."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["parse_period"]

_PERIOD: Final = re.compile(r"^(\d+)\s*(s|m|h|d)$")
_UNIT: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_period(text: str) -> float | None:
    """Seconds of a rolling period (``30s``, ``15m``, ``24h``, ``7d``); None for ``calendar_day``.

    Raises ValueError for anything else.
    """
    if text == "calendar_day":
        return None
    m = _PERIOD.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"{text!r} is not a period: write e.g. 30s, 15m, 24h, 7d or calendar_day")
    return int(m.group(1)) * _UNIT[m.group(2)]
