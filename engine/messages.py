"""Hot-path and wire structs: the messages the engine hands to gateways and the outcomes it records."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

import msgspec

__all__ = [
    "ACCEPTED",
    "Message",
    "Outcome",
    "Reject",
    "RejectReason",
    "State",
    "SubmitResult",
]


class State(StrEnum):
    """The one recorded end state of a recipient in a run."""

    SENT = "sent"
    """Handed to a gateway and accepted by it."""
    FAILED = "failed"
    """A gateway refused the message (permanently or after the retry budget)."""
    REJECTED = "rejected"
    """Never sendable: bad number, missing field, undecodable row, too long… (with a reason)."""
    SUPPRESSED = "suppressed"
    """Deliberately not sent: duplicate, opted out, over its frequency cap (with a reason)."""
    DEFERRED = "deferred"
    """Held for later (outside the allowed sending hours)."""


class RejectReason(StrEnum):
    """Why a row could not become a message; a bounded set, safe as a metric label."""

    MISSING_PHONE = "missing_phone"
    INVALID_NUMBER = "invalid_number"
    UNALLOCATED_PREFIX = "unallocated_prefix"
    IOT_NUMBER = "iot_number"
    SATELLITE_NUMBER = "satellite_number"
    SPECIAL_NUMBER = "special_number"
    NOT_MOBILE = "not_mobile"
    MISSING_FIELD = "missing_field"
    MALFORMED_ROW = "malformed_row"
    UNDECODABLE = "undecodable"
    TOO_LONG = "too_long"
    NO_GATEWAY = "no_gateway"


class Reject(msgspec.Struct, gc=False, frozen=True):
    """A row that cannot be sent, with its row number in the source and the reason."""

    row: int
    """Row number as the operator sees it (CSV: header is row 1; JSON Lines: line number)."""
    reason: str
    """A :class:`RejectReason` value."""
    detail: str = ""
    """Human-readable specifics (which field, what was expected)."""
    phone: str = ""
    """The phone value as written in the source (masked whenever it is written out)."""


class Message(msgspec.Struct, gc=False):
    """One rendered SMS ready for a gateway."""

    id: str
    """Unique message id: ``<campaign id>-<row>`` for blasts."""
    to: str
    """Recipient in E.164 (``+8613800138000``)."""
    text: str
    """The full text as the handset shows it: signature, body and opt-out text."""
    carrier: str
    """Routing carrier: ``cm``, ``cu``, ``ct``, ``cbn`` or ``intl``."""
    parts: int
    """Billed SMS parts."""
    row: int = 0
    """Source row number (0 for messages that did not come from a segment)."""


class Outcome(StrEnum):
    """What a gateway said about one message."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    RETRY = "retry"
    THROTTLED = "throttled"


class SubmitResult(msgspec.Struct, gc=False, frozen=True):
    """A gateway's answer for one message, index-aligned with the batch it was sent in."""

    outcome: Outcome
    provider_id: str = ""
    code: str = ""
    """Provider error code for rejected messages."""
    permanent: bool = False
    """For ``rejected``: sending again can never succeed."""
    retry_after: float = 0.0
    """For ``retry``/``throttled``: seconds to wait, 0 if the provider did not say."""


ACCEPTED: Final = SubmitResult(Outcome.ACCEPTED)
"""A shared accepted result without a provider id (for gateways that have none)."""
