"""What the ledger records: recipient states and events, campaign and message records, counts, errors."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any, Final

import msgspec

from engine.core.errors import EngineError, RunHalt
from engine.core.messages import (
    Outcome,
)

__all__ = [
    "STATE_NAMES",
    "CampaignCounts",
    "CampaignRecord",
    "CampaignStatus",
    "Fingerprint",
    "LeaseLost",
    "LedgerError",
    "LedgerStalled",
    "LedgerState",
    "LedgerWriteError",
    "MessageRecord",
    "RowOutcomes",
    "Semantics",
    "default_semantics",
    "file_fingerprint",
]


class LedgerError(EngineError):
    """A campaign's ledger refuses what was asked (finished, cancelled, changed segment…)."""


class LeaseLost(LedgerError, RunHalt):
    """Another process took this run's campaign over (this one was stopped or cut off for longer
    than the lease lives): it hands nothing more over."""

    reason = "lease_lost"


class LedgerStalled(LedgerError, RunHalt):
    """Requests in a row got no answer: the gateway is hanging or gone."""

    reason = "gateway_stalled"


class LedgerState(StrEnum):
    """The state of one recipient in a campaign's ledger."""

    PENDING = "pending"
    """Not handled yet (or held back and to be tried again)."""
    SUBMITTING = "submitting"
    """Handed to a gateway; its answer is not recorded yet."""
    SUBMITTED = "submitted"
    """Accepted by a gateway (``sent`` in a run's summary)."""
    DELIVERED = "delivered"
    """A delivery report says the handset has it."""
    FAILED = "failed"
    """Refused by a gateway, or a delivery report says it failed / expired / was rejected."""
    SUPPRESSED = "suppressed"
    REJECTED = "rejected"
    DEFERRED = "deferred"
    UNKNOWN = "unknown"
    """A gateway may or may not have taken it (a timeout, or a crash while submitting): never resent
    under at-most-once; a delivery report settles it."""


class _Code(IntEnum):
    PENDING = 0
    SUBMITTING = 1
    SUBMITTED = 2
    DELIVERED = 3
    FAILED = 4
    SUPPRESSED = 5
    REJECTED = 6
    DEFERRED = 7
    UNKNOWN = 8


_STATE_OF: Final = {c: LedgerState[c.name] for c in _Code}
STATE_NAMES: Final = tuple(_STATE_OF[c].value for c in sorted(_Code))
"""State code (as in :attr:`RowOutcomes.state`) → state name."""


_OUTCOME_CODE: Final = {Outcome.ACCEPTED: _Code.SUBMITTED, Outcome.UNKNOWN: _Code.UNKNOWN}
"""A gateway's per-message answer → the recipient's state (anything else final is ``failed``)."""


_CODE_OF: Final = {LedgerState[c.name].value: c for c in _Code}


class _Event(IntEnum):
    DROP = 1
    SUBMITTING = 2
    OUTCOME = 3


class Semantics(StrEnum):
    """What a crash may cost a campaign's recipients."""

    AT_MOST_ONCE = "at-most-once"
    """Never twice: a message whose hand-over was cut short is recorded ``unknown``, not resent."""
    AT_LEAST_ONCE = "at-least-once"
    """Never skipped: such a message is sent again on resume (with its idempotency key)."""


def default_semantics(kind: str) -> Semantics:
    """Marketing: at-most-once (a promotion twice is worse than once not); transactional:
    at-least-once (a verification code must arrive)."""
    return Semantics.AT_LEAST_ONCE if kind == "transactional" else Semantics.AT_MOST_ONCE


class CampaignStatus(StrEnum):
    """Where a campaign stands."""

    RUNNING = "running"
    """Started and not finished: ``pigeon send`` / ``pigeon resume`` continue it."""
    FINISHED = "finished"
    """Every row of the segment was handled."""
    CANCELLED = "cancelled"
    """Stopped for good by ``pigeon cancel``."""


class Fingerprint(msgspec.Struct, frozen=True, kw_only=True):
    """What a campaign's run is bound to: the segment's content and the template."""

    segment: str = ""
    """The segment file (as configured)."""
    size: int = -1
    """Its size in bytes (-1: not a file)."""
    sha256: str = ""
    """Hex SHA-256 of its content."""
    template: str = ""
    """Hex SHA-256 of the template text, signature and opt-out text."""

    def differences(self, other: Fingerprint) -> list[str]:
        """What changed from ``self`` (recorded) to ``other`` (now), in words."""
        out: list[str] = []
        if self.segment != other.segment:
            out.append(f"the segment is now {other.segment!r} (was {self.segment!r})")
        if self.size != other.size or self.sha256 != other.sha256:
            out.append(
                f"the segment's content changed (size {self.size:,} → {other.size:,} bytes, "
                f"sha256 {self.sha256[:12]}… → {other.sha256[:12]}…)"
            )
        if self.template != other.template:
            out.append("the template (text, signature or opt-out text) changed")
        return out


def file_fingerprint(path: Path | None, segment_label: str, template_parts: Sequence[str]) -> Fingerprint:
    """The :class:`Fingerprint` of a segment file (read once, 1 MiB at a time) and a template."""
    th = hashlib.sha256("\x1f".join(template_parts).encode()).hexdigest()
    if path is None or not path.is_file():
        return Fingerprint(segment=segment_label, template=th)
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return Fingerprint(segment=segment_label, size=size, sha256=h.hexdigest(), template=th)


class CampaignRecord(msgspec.Struct, kw_only=True):
    """A campaign as the ledger knows it."""

    id: str
    kind: str
    semantics: Semantics
    status: CampaignStatus
    fingerprint: Fingerprint
    created_at: float
    updated_at: float
    runs: int = 0
    """How many runs (send, resumes) worked on it."""
    campaign_file: str = ""
    """The campaign file it was last sent from (for ``pigeon resume``)."""
    engine_file: str = ""


class MessageRecord(msgspec.Struct, kw_only=True):
    """What the ledger knows about one message."""

    message_id: str
    campaign: str
    row: int
    state: LedgerState
    reason: str = ""
    gateway: str = ""
    provider_id: str = ""
    attempts: int = 0
    """Hand-overs to a gateway (a resume under at-least-once hands a message over again)."""
    submitted_at: float = 0.0
    """When it was first handed to a gateway (epoch seconds; 0: never)."""
    answered_at: float = 0.0
    """When the gateway's answer was recorded."""
    delivery_status: str = ""
    delivery_code: str = ""
    delivered_at: float = 0.0
    """``done_at`` of the delivery report."""
    carrier: str = ""
    """The carrier it was routed to (once handed over)."""
    parts: int = 0
    """Billed parts (once handed over)."""


class CampaignCounts(msgspec.Struct, kw_only=True):
    """A campaign's recipients by state, and by reason within each state."""

    campaign: str
    states: dict[str, int]
    reasons: dict[str, dict[str, int]]

    @property
    def total(self) -> int:
        """Every row the ledger knows about."""
        return sum(self.states.values())


class LedgerWriteError(LedgerError, RunHalt):
    """The store refused a ledger write (disk full, read-only, I/O error): the run stops; every
    transaction committed before is intact."""

    reason = "store_unwritable"


class RowOutcomes(msgspec.Struct, kw_only=True):
    """Every row of a campaign as arrays indexed by row number (for the outcomes report).

    Index 0 and rows the ledger never saw are ``pending`` with no event (``seen`` False).
    """

    state: Any
    """uint8 state codes: :data:`STATE_NAMES` gives each its name."""
    reason: Any
    """int32 index into :attr:`labels` (0: no reason)."""
    labels: list[str]
    seen: Any
    """bool: the ledger has an event for the row."""
    carrier: Any
    """int8 index into :attr:`carriers` (0: not handed over)."""
    carriers: list[str]
    parts: Any
    """int32 billed parts of the row's message (0: not handed over)."""
    submitted_at: Any
    """float64 epoch seconds of its first hand-over (0: never)."""
    decided_at: Any
    """float64 epoch seconds when a stage's drop of the row was recorded (0: none)."""
    delivered_at: Any
    """float64 epoch seconds of a *delivered* receipt's ``done_at`` (0: none)."""
