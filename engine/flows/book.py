"""Events to timers: which flows an event starts (its steps scheduled) and which pending steps it cancels."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from engine.core.phone import mask, parse_phone
from engine.flows.config import EVENT_NAME, Flow
from engine.flows.events import EventIn, EventResult, EventsResponse
from engine.state.timers import NewTimer, TimerStore

__all__ = ["FlowBook", "IngestCounts"]

log = logging.getLogger("pigeon.flows")

FUTURE_SLACK = 86400.0
"""An event's ``at`` may be at most this far ahead of now (clocks differ; a year ahead is a bug)."""
MAX_FIELDS = 50

_enc = msgspec.json.Encoder()


@dataclass
class IngestCounts:
    """What ingesting has done since start (for metrics)."""

    events: dict[str, int] = field(default_factory=lambda: {"accepted": 0, "duplicate": 0, "rejected": 0})
    scheduled: int = 0
    cancelled: int = 0
    expired: int = 0


class FlowBook:
    """The flows by trigger and cancel event, over a :class:`TimerStore`."""

    def __init__(self, flows: Mapping[str, Flow], store: TimerStore) -> None:
        self.flows = dict(flows)
        self.store = store
        self.counts = IngestCounts()
        self.by_trigger: dict[str, list[Flow]] = {}
        self.by_cancel: dict[str, list[Flow]] = {}
        for f in self.flows.values():
            self.by_trigger.setdefault(f.trigger, []).append(f)
            for ev in f.cancel_on | frozenset().union(*(s.cancel_on for s in f.steps)):
                self.by_cancel.setdefault(ev, []).append(f)

    def _check(self, ev: EventIn, now: float) -> tuple[str, str] | str:
        """(E.164, why not) → the customer's number, or the reason the event is refused."""
        if not EVENT_NAME.match(ev.type):
            return "type: lowercase letters, digits and _ (order_paid, custom_vip)"
        parsed = parse_phone(ev.phone)
        if parsed.reason is not None or not parsed.e164:
            return f"phone: not a phone number ({parsed.reason or 'invalid'})"
        if ev.at is not None and not (946684800 <= ev.at <= now + FUTURE_SLACK):
            return "at: Unix seconds, after 2000-01-01 and at most a day ahead"
        if len(ev.fields) > MAX_FIELDS or any(len(k) > 64 or len(v) > 500 for k, v in ev.fields.items()):
            return f"fields: at most {MAX_FIELDS}, names up to 64 and values up to 500 characters"
        return (parsed.e164, "")

    def ingest(self, events: Sequence[EventIn], now: float) -> EventsResponse:
        """Take ``events`` in order, in one transaction: record their ids (an id seen before is a
        duplicate and does nothing), cancel the pending steps they cancel, schedule the steps of the
        flows they start."""
        results: list[EventResult] = []
        checked: list[tuple[int, EventIn, str]] = []
        for i, ev in enumerate(events):
            got = self._check(ev, now)
            if isinstance(got, str):
                results.append(EventResult(index=i, id=ev.id[:200], state="rejected", reason=got))
            else:
                checked.append((i, ev, got[0]))
        store = self.store
        with store.batch():
            fresh = store.take_events([ev.id for _, ev, _ in checked], now)
            for (i, ev, customer), new in zip(checked, fresh, strict=True):
                if not new:
                    results.append(EventResult(index=i, id=ev.id, state="duplicate"))
                    continue
                results.append(self._apply(i, ev, customer, now))
        results.sort(key=lambda r: r.index)
        resp = EventsResponse(
            accepted=sum(r.state == "accepted" for r in results),
            duplicates=sum(r.state == "duplicate" for r in results),
            rejected=sum(r.state == "rejected" for r in results),
            scheduled=sum(r.scheduled for r in results),
            cancelled=sum(r.cancelled for r in results),
            events=results,
        )
        c = self.counts
        c.events["accepted"] += resp.accepted
        c.events["duplicate"] += resp.duplicates
        c.events["rejected"] += resp.rejected
        c.scheduled += resp.scheduled
        c.cancelled += resp.cancelled
        return resp

    def _apply(self, index: int, ev: EventIn, customer: str, now: float) -> EventResult:
        store = self.store
        subject = ev.order_id
        cancelled = 0
        for flow in self.by_cancel.get(ev.type, ()):
            steps = flow.cancelled_steps(ev.type)
            cancelled += store.cancel(customer, subject, flow.name, steps, now)
        started: list[str] = []
        skipped: list[str] = []
        scheduled = 0
        at = ev.at if ev.at is not None else now
        for flow in self.by_trigger.get(ev.type, ()):
            if store.has_pending(flow.name, customer, subject):
                skipped.append(f"{flow.name}: already running for this {'order' if subject else 'customer'}")
                continue
            if flow.limit is not None:
                count, period = flow.limit
                if store.starts_since(flow.name, customer, at - period) >= count:
                    per = flow.config.limit.period if flow.config.limit else ""
                    skipped.append(f"{flow.name}: limit of {count} per {per} reached")
                    continue
            fields = _enc.encode(ev.fields) if ev.fields else None
            timers: list[NewTimer] = []
            base = at
            for step in flow.steps:
                base = step.wait.due(base, flow.tz)
                if flow.expire_after is not None and now - base > flow.expire_after:
                    self.counts.expired += 1
                    continue  # a back-fill's step long past: never worth sending now
                timers.append(NewTimer(flow.name, step.index, customer, subject, base, fields))
            store.started(flow.name, customer, at)
            store.schedule_in_batch(timers)
            scheduled += len(timers)
            started.append(flow.name)
        if started or cancelled:
            log.debug(
                "event taken",
                extra={
                    "event": "flows.event",
                    "type": ev.type,
                    "to": mask(customer),
                    "started": started,
                    "cancelled": cancelled,
                },
            )
        return EventResult(
            index=index,
            id=ev.id,
            state="accepted",
            started=started,
            scheduled=scheduled,
            cancelled=cancelled,
            skipped=skipped,
        )
