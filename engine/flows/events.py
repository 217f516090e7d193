"""Events in: the wire shape of an order or customer event; JSON Lines / CSV files of them for back-fills."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Final

import msgspec

__all__ = ["EventIn", "EventResult", "EventsIn", "EventsResponse", "decode_event", "read_events"]


class EventIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One event: what happened to whom (and which order), when, and the fields its messages use."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    """The sender's id: an event sent again (a retry, an overlapping back-fill) is taken once."""
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    """``order_created``, ``order_paid``, ``order_shipped``, ``order_delivered``, ``order_closed``,
    ``refund``, ``birthday``… or your own ``custom_…``."""
    phone: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    """The customer's number (13800138000, +86…, E.164)."""
    order_id: Annotated[str, msgspec.Meta(max_length=200)] = ""
    """The order it is about ('' for customer events): cancel events match the same order."""
    at: float | None = None
    """When it happened (Unix seconds; default: when it arrives). Waits count from here, so a
    back-fill schedules steps at the times they would have had."""
    fields: dict[str, str] = {}
    """Values for the flow's templates (``name``, ``item``, ``tracking_no``…)."""


class EventsIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/events``: a batch of events."""

    events: list[EventIn]


class EventResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What became of one event."""

    index: int
    id: str
    state: str
    """``accepted`` (taken: it started and/or cancelled flows, or matched none), ``duplicate`` (its
    id was taken before: nothing done again) or ``rejected`` (see ``reason``; nothing done)."""
    started: list[str] = []
    """Flows it started."""
    scheduled: int = 0
    """Steps it scheduled."""
    cancelled: int = 0
    """Pending steps it cancelled."""
    skipped: list[str] = []
    """Flows it would have started but did not (``flow: reason``: limit reached, already running)."""
    reason: str = ""


class EventsResponse(msgspec.Struct, kw_only=True):
    """The answer to a batch of events (in their order)."""

    accepted: int
    duplicates: int
    rejected: int
    scheduled: int
    cancelled: int
    events: list[EventResult]


_dec: Final = msgspec.json.Decoder(EventIn)
_CSV_KEYS: Final = ("id", "type", "phone", "order_id", "at")


def read_events(
    path: Path, *, chunk: int = 1000
) -> Iterator[tuple[list[int], list[EventIn], list[tuple[int, str]]]]:
    """Events of a JSON Lines (``.jsonl``/``.ndjson``) or CSV file in chunks: (line numbers,
    events, [(line, reason)] of lines that are not an event). CSV: columns ``id, type, phone,
    order_id, at``; every other column is a field."""
    lines: list[int] = []
    events: list[EventIn] = []
    bad: list[tuple[int, str]] = []
    if path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            missing = [k for k in ("id", "type", "phone") if k not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(
                    f"{path}: the header has no {', '.join(missing)} column: "
                    "CSV columns are id, type, phone, order_id, at and the fields"
                )
            for n, row in enumerate(reader, start=2):
                try:
                    at_text = (row.get("at") or "").strip()
                    ev = EventIn(
                        id=(row.get("id") or "").strip(),
                        type=(row.get("type") or "").strip(),
                        phone=(row.get("phone") or "").strip(),
                        order_id=(row.get("order_id") or "").strip(),
                        at=float(at_text) if at_text else None,
                        fields={k: v for k, v in row.items() if k and k not in _CSV_KEYS and v is not None},
                    )
                    msgspec.convert(msgspec.to_builtins(ev), EventIn)  # the wire's checks (lengths)
                except (ValueError, msgspec.ValidationError) as exc:
                    bad.append((n, str(exc)[:300]))
                    continue
                lines.append(n)
                events.append(ev)
                if len(events) >= chunk:
                    yield lines, events, bad
                    lines, events, bad = [], [], []
    else:
        with path.open("rb") as fb:
            for n, raw in enumerate(fb, start=1):
                if not raw.strip():
                    continue
                try:
                    ev = _dec.decode(raw)
                except msgspec.DecodeError as exc:
                    bad.append((n, str(exc)[:300]))
                    continue
                lines.append(n)
                events.append(ev)
                if len(events) >= chunk:
                    yield lines, events, bad
                    lines, events, bad = [], [], []
    if events or bad:
        yield lines, events, bad


def decode_event(raw: bytes) -> EventIn | None:
    """One event from its JSON (a message queue's entry); None when it is not one."""
    try:
        return _dec.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
