"""The service's recent API messages and their states, in memory, bounded, for ``GET /v1/messages/{id}``."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.core.messages import DeliveryReport, MessageBatch, Reject, SubmitResult
from engine.service.wire import Delivery, MessageView

RECENT_RECORDS = 200_000
"""API messages kept in memory for fast look-ups (older ones come from the ledger)."""


@dataclass
class _Rec:
    view: MessageView


class ApiRecords:
    """Recent API messages in memory, told every outcome per batch (a ``RunRecorder`` sink)."""

    def __init__(self, limit: int = RECENT_RECORDS) -> None:
        self.limit = limit
        self.by_id: dict[str, MessageView] = {}
        self.by_provider: dict[str, str] = {}
        self.number_of: dict[str, bytes] = {}
        """Message id → a keyed digest of its recipient (for ``GET /v1/messages?to=``; no numbers
        are kept: the key is random per process)."""
        self._key = secrets.token_bytes(16)

    def digest(self, e164: str) -> bytes:
        """The keyed digest of a recipient in E.164 (what :attr:`number_of` holds)."""
        return hashlib.blake2b(e164.encode(), key=self._key, digest_size=8).digest()

    def add(self, views: Sequence[MessageView], numbers: Sequence[str] | None = None) -> None:
        """Remember new messages and (E.164) their recipients; the oldest are forgotten past ``limit``."""
        by_id = self.by_id
        for v in views:
            by_id[v.id] = v
        if numbers is not None:
            for v, n in zip(views, numbers, strict=True):
                self.number_of[v.id] = self.digest(n)
        over = len(by_id) - self.limit
        if over > 0:
            for k in list(itertools_islice(by_id, over)):
                v = by_id.pop(k)
                self.by_provider.pop(v.provider_id, None)
                self.number_of.pop(k, None)

    def search(
        self,
        *,
        to: str | None = None,
        campaign: str | None = None,
        state: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> tuple[list[MessageView], str | None]:
        """Recent messages, newest first, matching every filter given (``to`` in E.164), from the
        one after message ``after``; and the id to continue after, when there may be more."""
        wanted = self.digest(to) if to is not None else None
        out: list[MessageView] = []
        started = after is None
        for mid in reversed(self.by_id):
            if not started:
                started = mid == after
                continue
            v = self.by_id[mid]
            if campaign is not None and v.campaign != campaign:
                continue
            if state is not None and v.state != state:
                continue
            if wanted is not None and self.number_of.get(mid) != wanted:
                continue
            if len(out) == limit:
                return out, out[-1].id
            out.append(v)
        return out, None

    def _set(self, ids: Sequence[str], **values: Any) -> None:
        for mid in ids:
            v = self.by_id.get(mid)
            if v is not None:
                for k, val in values.items():
                    setattr(v, k, val)

    def handover(self, batch: MessageBatch, now: float) -> None:
        """A request is going to a gateway."""
        self._set(batch.ids, state="submitting", submitted_at=now)

    def suppressed(self, ids: Sequence[str], reason: str) -> None:
        """Messages held back in their lane (a shared opt-out or cap, ``pigeon serve`` with a
        coordinator): ``suppressed`` with ``reason``."""
        self._set(ids, state="suppressed", reason=reason)

    def dropped(self, records: Sequence[Reject]) -> None:
        """Nothing to do: suppressed and deferred API messages are recorded when accepted."""

    def results(self, gateway: str, batch: MessageBatch, results: Sequence[SubmitResult]) -> None:
        """A request's answers."""
        now = time.time()
        for mid, r in zip(batch.ids, results, strict=True):
            v = self.by_id.get(mid)
            if v is None:
                continue
            v.gateway, v.answered_at = gateway, now
            if r.outcome.value == "accepted":
                v.state = "submitted"
                if r.provider_id:
                    v.provider_id = r.provider_id
                    self.by_provider[r.provider_id] = mid
            elif r.outcome.value == "unknown":
                v.state, v.reason = "unknown", r.code or "unknown"
            else:
                v.state, v.reason = "failed", f"{r.outcome.value}:{r.code or r.outcome.value}"

    def failed(self, gateway: str, batch: MessageBatch, reason: str) -> None:
        """A whole request failed."""
        self._set(batch.ids, state="failed", reason=reason, gateway=gateway, answered_at=time.time())

    def unknown(self, gateway: str, batch: MessageBatch, reason: str) -> None:
        """A request the gateway may or may not have taken."""
        self._set(batch.ids, state="unknown", reason=reason, gateway=gateway, answered_at=time.time())

    def released(self, gateway: str, batch: MessageBatch, reason: str) -> None:
        """A request that did not go through (the gateway could not be reached, or said "again"):
        queued again until its next hand-over."""
        self._set(batch.ids, state="queued", reason=reason)

    def reports(
        self,
        reports: Sequence[DeliveryReport],
        unmatched: list[DeliveryReport] | None = None,
        *,
        latencies: dict[int, float] | None = None,
    ) -> int:
        """Apply delivery reports to the messages in memory; how many matched (the others are
        appended to ``unmatched`` when it is given). ``latencies``, if given, gets report index →
        seconds from the hand-over to the report (its ``done_at``, or now)."""
        n = 0
        now = time.time()
        for i, r in enumerate(reports):
            mid = self.by_provider.get(r.provider_id, "") if r.provider_id else ""
            v = self.by_id.get(mid or r.message_id)
            if v is None:
                if unmatched is not None:
                    unmatched.append(r)
                continue
            n += 1
            if latencies is not None and v.submitted_at > 0:
                latencies[i] = max(0.0, (r.done_at or now) - v.submitted_at)
            v.delivery = Delivery(status=r.status.value, code=r.code, done_at=r.done_at)
            v.state = "delivered" if r.status.value == "delivered" else "failed"
            if v.state == "failed":
                v.reason = f"dlr:{r.code or r.status.value}"
        return n


def itertools_islice(d: Mapping[str, Any], n: int) -> list[str]:
    """The first ``n`` keys of ``d`` (insertion order)."""
    out: list[str] = []
    for k in d:
        if len(out) >= n:
            break
        out.append(k)
    return out
