"""Hot-path and wire structs: the messages the engine hands to gateways and the outcomes it records."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Final, overload

import msgspec

if TYPE_CHECKING:
    from engine.core.provider_template import ProviderParams

__all__ = [
    "ACCEPTED",
    "INTL_KEY_OFFSET",
    "DeliveryReport",
    "DeliveryStatus",
    "Message",
    "MessageBatch",
    "Outcome",
    "Reject",
    "RejectReason",
    "State",
    "SubmitResult",
    "SuppressReason",
    "number_key",
]


INTL_KEY_OFFSET: Final = 10**15
"""E.164 has at most 15 digits: international keys never meet Chinese national ones."""


def number_key(number: str) -> int:
    """An int identifying a normalized number (11-digit Chinese mobile, or ``+`` E.164).

    Used wherever numbers are counted or looked up in bulk: dedupe, opt-outs, caps.
    """
    return int(number) if number[0] != "+" else INTL_KEY_OFFSET + int(number[1:])


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
    UNKNOWN = "unknown"
    """Handed to a gateway that gave no clear answer (a timeout on a non-idempotent API): not resent,
    to be settled by its delivery report."""
    PENDING = "pending"
    """Read but not sent: the run halted (a gateway unreachable past ``outage.limit``, a store that
    cannot be written…) before it could go. Never handed over, or given back: a resume sends it."""


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
    URL_IN_FIELD = "url_in_field"
    PARAM_TOO_LONG = "param_too_long"
    """A value over the per-parameter limit of the provider's filed template."""
    NO_GATEWAY = "no_gateway"
    NO_LINK = "no_link"
    """``[links] mode = "provider"``: the gateway's provider made no link for the number."""


class SuppressReason(StrEnum):
    """Why a sendable row was deliberately not sent; a bounded set, safe as a metric label."""

    DUPLICATE = "duplicate"
    OPTED_OUT = "opted_out"
    CAPPED = "capped"
    SAME_CONTENT = "same_content"
    NO_CONSENT = "no_consent"
    CLAIMED_ELSEWHERE = "claimed_elsewhere"
    """Another worker of a coordinated campaign claimed the recipient first (it records the send)."""
    HELD_OUT = "held_out"
    """In the campaign's holdout (``[outcomes] holdout``): kept back to measure its effect."""


class Reject(msgspec.Struct, gc=False, frozen=True):
    """A row that leaves the pipeline without a message, with its row number and the reason.

    ``state`` is ``rejected`` (it cannot be sent: bad number, missing field…) or ``suppressed``
    (it is deliberately not sent: duplicate, opted out, over its cap).
    """

    row: int
    """Row number as the operator sees it (CSV: header is row 1; JSON Lines: line number)."""
    reason: str
    """A :class:`RejectReason` or :class:`SuppressReason` value."""
    detail: str = ""
    """Human-readable specifics (which field, what was expected)."""
    phone: str = ""
    """The phone value as written in the source (masked whenever it is written out)."""
    state: str = "rejected"
    """``rejected`` or ``suppressed``."""


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


class MessageBatch(Sequence[Message]):
    """Messages of one carrier as parallel columns: what crosses into a lane and into a gateway.

    Batch-aware gateways read the columns (:attr:`ids`, :attr:`tos`, :attr:`texts`, :attr:`parts`)
    and never pay for a per-message object; simple gateways iterate it and get :class:`Message`
    structs built on demand. Slicing gives a batch, not a list. Ids and E.164 numbers are derived
    on first use (``<id_prefix><row>``; ``+86`` before Chinese national numbers).

    Messages rendered from a template filed with a provider also carry :attr:`params` (the
    template and the parameter values of each message) for the gateways that send by template;
    those of an A/B test carry :attr:`variants` (each message's variant name, for the ledger).
    """

    __slots__ = (
        "_ids",
        "_numbers",
        "_prefix",
        "_tos",
        "carrier",
        "params",
        "parts",
        "rows",
        "texts",
        "variants",
    )

    def __init__(
        self,
        carrier: str,
        *,
        rows: Sequence[int],
        numbers: Sequence[str],
        texts: Sequence[str],
        parts: Sequence[int],
        id_prefix: str = "",
        ids: Sequence[str] | None = None,
        params: Sequence[ProviderParams | None] | None = None,
        variants: Sequence[str] | None = None,
    ) -> None:
        self.carrier = carrier
        self.rows = rows
        """Source row numbers (0 for messages that did not come from a segment)."""
        self.texts = texts
        self.parts = parts
        self.params = params
        """Per message: its filed provider template and parameter values (None: free text); None
        when no message of the batch has any (:mod:`engine.core.provider_template`)."""
        self.variants = variants
        """Per message: the name of its A/B variant; None when the campaign has no A/B test."""
        self._numbers = numbers
        self._prefix = id_prefix
        self._ids = ids
        self._tos: Sequence[str] | None = None

    @classmethod
    def of(cls, messages: Sequence[Message]) -> MessageBatch:
        """A batch holding ``messages`` (all of one carrier)."""
        carriers = {m.carrier for m in messages}
        if len(carriers) > 1:
            raise ValueError(f"a MessageBatch holds one carrier, got {sorted(carriers)}")
        return cls(
            carriers.pop() if carriers else "",
            rows=[m.row for m in messages],
            numbers=[m.to for m in messages],
            texts=[m.text for m in messages],
            parts=[m.parts for m in messages],
            ids=[m.id for m in messages],
        )

    @classmethod
    def concat(cls, batches: Sequence[MessageBatch]) -> MessageBatch:
        """One batch holding ``batches`` in order (all of one carrier); each column is copied once."""
        if len(batches) == 1:
            return batches[0]
        carrier = batches[0].carrier
        if any(b.carrier != carrier for b in batches):
            raise ValueError("MessageBatch.concat needs batches of one carrier")
        prefix = batches[0]._prefix
        lazy = all(b._ids is None and b._prefix == prefix for b in batches)
        rows: list[int] = []
        numbers: list[str] = []
        texts: list[str] = []
        parts: list[int] = []
        ids: list[str] | None = None if lazy else []
        for b in batches:  # list += sequence extends in C
            rows += b.rows
            numbers += b._numbers
            texts += b.texts
            parts += b.parts
            if ids is not None:
                ids += b.ids
        params: list[ProviderParams | None] | None = None
        if any(b.params is not None for b in batches):
            params = []
            for b in batches:
                params += b.params if b.params is not None else [None] * len(b)
        variants: list[str] | None = None
        if any(b.variants is not None for b in batches):
            variants = []
            for b in batches:
                variants += b.variants if b.variants is not None else [""] * len(b)
        return cls(
            carrier,
            rows=rows,
            numbers=numbers,
            texts=texts,
            parts=parts,
            id_prefix=prefix,
            ids=ids,
            params=params,
            variants=variants,
        )

    @property
    def ids(self) -> Sequence[str]:
        """Message ids, index-aligned with the other columns."""
        if self._ids is None:
            prefix = self._prefix
            self._ids = [f"{prefix}{n}" for n in self.rows]
        return self._ids

    def with_ids(self, ids: Sequence[str]) -> MessageBatch:
        """The same messages under the ids ``ids`` (index-aligned)."""
        if len(ids) != len(self):
            raise ValueError("with_ids needs one id per message")
        return MessageBatch(
            self.carrier,
            rows=self.rows,
            numbers=self._numbers,
            texts=self.texts,
            parts=self.parts,
            ids=ids,
            params=self.params,
        )

    def take(self, indices: Sequence[int]) -> MessageBatch:
        """The messages at ``indices``, as a batch (for the ones to retry or to send elsewhere)."""
        if len(indices) == len(self):
            return self
        ids = self.ids
        params, variants = self.params, self.variants
        return MessageBatch(
            self.carrier,
            rows=[self.rows[i] for i in indices],
            numbers=[self._numbers[i] for i in indices],
            texts=[self.texts[i] for i in indices],
            parts=[self.parts[i] for i in indices],
            ids=[ids[i] for i in indices],
            params=[params[i] for i in indices] if params is not None else None,
            variants=[variants[i] for i in indices] if variants is not None else None,
        )

    @property
    def numbers(self) -> Sequence[str]:
        """Recipients as normalized (national for China, else E.164), index-aligned."""
        return self._numbers

    def keys(self) -> list[int]:
        """The recipients as :func:`number_key` ints."""
        return list(map(number_key, self._numbers))

    @property
    def tos(self) -> Sequence[str]:
        """Recipients in E.164."""
        if self._tos is None:
            self._tos = ["+86" + n if n[0] != "+" else n for n in self._numbers]
        return self._tos

    def total_parts(self) -> int:
        """Billed parts of the whole batch."""
        return sum(self.parts)

    def __len__(self) -> int:
        return len(self.texts)

    @overload
    def __getitem__(self, index: int) -> Message: ...
    @overload
    def __getitem__(self, index: slice) -> MessageBatch: ...
    def __getitem__(self, index: int | slice) -> Message | MessageBatch:
        if isinstance(index, slice):
            return MessageBatch(
                self.carrier,
                rows=self.rows[index],
                numbers=self._numbers[index],
                texts=self.texts[index],
                parts=self.parts[index],
                id_prefix=self._prefix,
                ids=self._ids[index] if self._ids is not None else None,
                params=self.params[index] if self.params is not None else None,
                variants=self.variants[index] if self.variants is not None else None,
            )
        return Message(
            self.ids[index],
            self.tos[index],
            self.texts[index],
            self.carrier,
            self.parts[index],
            self.rows[index],
        )

    def __iter__(self) -> Iterator[Message]:
        c = self.carrier
        for i, to, text, parts, row in zip(
            self.ids, self.tos, self.texts, self.parts, self.rows, strict=True
        ):
            yield Message(i, to, text, c, parts, row)


class Outcome(StrEnum):
    """What a gateway said about one message."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    RETRY = "retry"
    THROTTLED = "throttled"
    UNKNOWN = "unknown"
    """The provider could not say whether it took the message (an internal timeout): the message
    ends ``unknown`` and is not resent; a delivery report settles it. Gateways that are idempotent
    answer ``retry`` instead."""


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


class DeliveryStatus(StrEnum):
    """A carrier's final word on a submitted message (from a delivery report)."""

    DELIVERED = "delivered"
    FAILED = "failed"
    EXPIRED = "expired"
    REJECTED = "rejected"
    UNKNOWN = "unknown"


class DeliveryReport(msgspec.Struct, frozen=True, kw_only=True):
    """A carrier's word on one submitted message, as a gateway's webhook or SMPP deliver_sm brings it."""

    provider_id: str
    """The id the gateway gave when it accepted the message."""
    status: DeliveryStatus
    message_id: str = ""
    """Pigeon's id when the provider echoes it back."""
    code: str = ""
    """The provider's raw status code, e.g. ``DELIVRD``, ``UNDELIV``, ``MK:0001``."""
    done_at: float = 0.0
    """Epoch seconds the carrier reported (0: unknown)."""
    gateway: str = ""
    """The gateway name it came through."""
