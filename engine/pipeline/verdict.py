"""Whether a segment's rows are usable: a verdict with the breakdown and what to change."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from engine.core.messages import RejectReason, State, SuppressReason

__all__ = ["NOTHING_SENDABLE", "SAMPLE_ROWS", "TOO_MANY_REJECTED", "Verdict", "judge", "sendable_rows"]

SAMPLE_ROWS = 2000
"""Rows of a segment run through the stages before anything is sent (or recorded), to refuse a
broken file while nothing has happened yet."""
NOTHING_SENDABLE = "nothing_sendable"
TOO_MANY_REJECTED = "too_many_rejected"


@dataclass(frozen=True)
class Verdict:
    """A segment judged unusable: ``reason`` (a bounded label) and the operator's message."""

    reason: str
    message: str


_HINTS: dict[str, str] = {
    RejectReason.UNDECODABLE: (
        "the rows are not valid in the segment's encoding: Excel exports from Chinese Windows are "
        'GBK — try segment.encoding = "gbk" (or "gb18030")'
    ),
    RejectReason.INVALID_NUMBER: (
        "most phone values are not phone numbers: is segment.phone_field the column that holds them?"
    ),
    RejectReason.MISSING_PHONE: (
        "the phone column is empty in most rows: is segment.phone_field the right column?"
    ),
    RejectReason.MISSING_FIELD: (
        "the template's fields are empty in most rows: check the template's {field} names against the "
        "segment's columns"
    ),
    RejectReason.MALFORMED_ROW: (
        "most rows do not have the header's number of columns: check segment.delimiter (and quotechar)"
    ),
    RejectReason.UNALLOCATED_PREFIX: (
        "most numbers have prefixes no carrier allocated: is this the right file?"
    ),
    RejectReason.NOT_MOBILE: "most numbers are landlines or service numbers, which cannot receive SMS",
}


def _breakdown(reasons: Mapping[str, int]) -> str:
    return ", ".join(f"{r} {n:,}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1]))


def sendable_rows(
    rows: int, states: Mapping[str, int], reasons: Mapping[str, Mapping[str, int]], handled: int = 0
) -> int:
    """The messages a run over ``rows`` could send: neither rejected nor suppressed, plus those an
    earlier run ``handled`` — and those another host or worker claimed first through a shared
    coordinator (``suppressed``, ``claimed_elsewhere``): they were sendable and are sent there, so
    a worker whose every recipient went elsewhere has not failed, nor are they missing."""
    elsewhere = reasons.get(State.SUPPRESSED, {}).get(SuppressReason.CLAIMED_ELSEWHERE, 0)
    return rows - states.get(State.REJECTED, 0) - states.get(State.SUPPRESSED, 0) + elsewhere + handled


def judge(
    rows: int,
    states: Mapping[str, int],
    reasons: Mapping[str, Mapping[str, int]],
    *,
    max_rejected_share: float,
    sendable: int | None = None,
    first_rows: bool = False,
) -> Verdict | None:
    """A :class:`Verdict` when the rows read are not worth a send, else None.

    ``rows`` read, ``states``/``reasons`` as a run or preview counts them. A segment is refused
    when it has no data rows, when more than ``max_rejected_share`` of its rows are rejected, or —
    given ``sendable``, the messages a whole run could send (sent, queued, deferred or already
    handled) — when nothing at all could be sent. ``first_rows``: only the segment's first rows
    were read (before anything is sent).
    """
    where = f"the first {rows:,} rows of the segment" if first_rows else f"the {rows:,} rows read"
    if rows == 0:
        return Verdict(
            NOTHING_SENDABLE,
            "the segment has no data rows (a header alone?): nothing to send. Check the file, and that "
            "its lines end with newlines",
        )
    rejected = states.get(State.REJECTED, 0)
    by_reason = reasons.get(State.REJECTED, {})
    top = max(by_reason.items(), key=lambda kv: kv[1])[0] if by_reason else ""
    hint = _HINTS.get(top, "")
    if rejected > max_rejected_share * rows:
        return Verdict(
            TOO_MANY_REJECTED,
            f"{rejected:,} of {where} are rejected ({rejected / rows:.0%}, over policy.max_rejected_share "
            f"= {max_rejected_share:g}): {_breakdown(by_reason)}. "
            + (f"Probably {hint}. " if hint else "")
            + "Fix the segment or the campaign ("
            + ("`pigeon preview --rejects FILE` lists" if first_rows else "rejects.csv lists")
            + " each row and why), or raise policy.max_rejected_share if this is expected",
        )
    if sendable == 0:
        suppressed = reasons.get(State.SUPPRESSED, {})
        parts = [f"rejected {rejected:,}"] if rejected else []
        if suppressed:
            parts.append(f"suppressed {sum(suppressed.values()):,} ({_breakdown(suppressed)})")
        return Verdict(
            NOTHING_SENDABLE,
            f"none of {where} could be sent: {'; '.join(parts) or 'no row passed the stages'}. "
            + (f"Probably {hint}. " if hint and rejected else "")
            + "The campaign is left unfinished: fix the segment and send it again, or `pigeon cancel` it "
            "if this is expected",
        )
    return None
