"""Structured logs: one JSON object per line and event (numbers masked by the caller; in tracebacks, here)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import msgspec

from engine.observability.redact import format_exception

__all__ = ["JsonFormatter", "setup_logging"]

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_enc = msgspec.json.Encoder(enc_hook=str)


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "event", …extra fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line."""
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info and record.exc_info[1] is not None:
            out["exception"] = format_exception(record.exc_info[1])
        return _enc.encode(out).decode("utf-8", "replace")


def setup_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Send the ``pigeon`` loggers to ``stream`` (stderr) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("pigeon")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
