"""Events to timers: which flows an event starts (its steps scheduled) and which pending steps it cancels."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from engine.core.phone import mask, parse_phone
from engine.flows.config import EVENT_NAME, Flow
from engine.flows.events import EventIn, EventResult, EventsResponse
from engine.state.flowstore import EventApplied, EventPlan, FlowStore, StartPlan, apply_sqlite
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
    """The flows by trigger and cancel event, over a :class:`TimerStore` (the CLI's, synchronous)
    or a :class:`~engine.state.flowstore.FlowStore` (the service's)."""

    def __init__(self, flows: Mapping[str, Flow], store: TimerStore | FlowStore) -> None:
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
        """Take ``events`` in order, in one transaction of the embedded store: record their ids (an
        id seen before is a duplicate and does nothing), cancel the pending steps they cancel,
        schedule the steps of the flows they start."""
        assert isinstance(self.store, TimerStore), "a shared flow store: use ingest_async"
        results, checked, plans = self._plan(events, now)
        return self._finish(results, checked, apply_sqlite(self.store, plans, now))

    async def ingest_async(self, events: Sequence[EventIn], now: float) -> EventsResponse:
        """:meth:`ingest` through a :class:`~engine.state.flowstore.FlowStore` (one call for the
        batch); :class:`~engine.core.errors.CoordinatorUnavailable` if a shared store does not
        answer (then nothing was taken, or all of it — the ids make sending it again harmless)."""
        store = self.store
        results, checked, plans = self._plan(events, now)
        if isinstance(store, TimerStore):
            applied = apply_sqlite(store, plans, now)
        else:
            applied = await store.apply(plans, now) if plans else []
        return self._finish(results, checked, applied)

    def _plan(
        self, events: Sequence[EventIn], now: float
    ) -> tuple[list[EventResult], list[tuple[int, EventIn, str]], list[EventPlan]]:
        """The rejected events' results, the checked ones (index, event, E.164) and their plans."""
        results: list[EventResult] = []
        checked: list[tuple[int, EventIn, str]] = []
        plans: list[EventPlan] = []
        for i, ev in enumerate(events):
            got = self._check(ev, now)
            if isinstance(got, str):
                results.append(EventResult(index=i, id=ev.id[:200], state="rejected", reason=got))
            else:
                checked.append((i, ev, got[0]))
                plans.append(self._plan_one(ev, got[0], now))
        return results, checked, plans

    def _plan_one(self, ev: EventIn, customer: str, now: float) -> EventPlan:
        subject = ev.order_id
        cancels = [(flow.name, flow.cancelled_steps(ev.type)) for flow in self.by_cancel.get(ev.type, ())]
        at = ev.at if ev.at is not None else now
        starts: list[StartPlan] = []
        for flow in self.by_trigger.get(ev.type, ()):
            fields = _enc.encode(ev.fields) if ev.fields else None
            timers: list[NewTimer] = []
            expired = 0
            base = at
            for step in flow.steps:
                base = step.wait.due(base, flow.tz)
                if flow.expire_after is not None and now - base > flow.expire_after:
                    expired += 1
                    continue  # a back-fill's step long past: never worth sending now
                timers.append(NewTimer(flow.name, step.index, customer, subject, base, fields))
            limit, period = flow.limit if flow.limit is not None else (0, 0.0)
            starts.append(StartPlan(flow.name, at, timers, limit, at - period, period, expired))
        return EventPlan(ev.id, customer, subject, [c for c in cancels if c[1] is None or c[1]], starts)

    def _finish(
        self,
        results: list[EventResult],
        checked: Sequence[tuple[int, EventIn, str]],
        applied: Sequence[EventApplied],
    ) -> EventsResponse:
        for (i, ev, customer), got in zip(checked, applied, strict=True):
            if got.duplicate:
                results.append(EventResult(index=i, id=ev.id, state="duplicate"))
                continue
            self.counts.expired += got.expired
            what = "order" if ev.order_id else "customer"
            skipped = [f"{name}: already running for this {what}" for name in got.running]
            for name in got.limited:
                flow = self.flows[name]
                count = flow.limit[0] if flow.limit else 0
                per = flow.config.limit.period if flow.config.limit else ""
                skipped.append(f"{name}: limit of {count} per {per} reached")
            if got.started or got.cancelled:
                log.debug(
                    "event taken",
                    extra={
                        "event": "flows.event",
                        "type": ev.type,
                        "to": mask(customer),
                        "started": got.started,
                        "cancelled": got.cancelled,
                    },
                )
            results.append(
                EventResult(
                    index=i,
                    id=ev.id,
                    state="accepted",
                    started=got.started,
                    scheduled=got.scheduled,
                    cancelled=got.cancelled,
                    skipped=skipped,
                )
            )
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
