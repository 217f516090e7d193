"""The flow runner: fires due timers in batches through a sender, once across crashes, late ones paced.

Each step of :meth:`FlowRunner.fire_due`:

1. fetch up to ``batch`` pending timers due now, earliest first (paused flows left out), no more
   than the catch-up budget allows (``max_per_second``: after downtime a backlog goes out in due
   order at that pace, not in one burst);
2. end those past their flow's ``expire_after`` (``expired``) and hold marketing steps outside
   their send window to the window's next opening (still ``pending``: deferred, never dropped);
3. take a message id for each of the rest and mark them ``firing`` with it (one transaction);
4. hand them to the sender (the service's lanes: the same stages, caps, opt-outs, ledger as
   ``POST /v1/messages``); those the stages end at once (suppressed, rejected) are ``fired`` with
   that reason; those queued are ``fired`` once the ledger has recorded their hand-over
   (:meth:`confirm`).

A crash leaves some timers ``firing``. :meth:`recover`, before the first step after a start, asks
the ledger about their message ids: recorded → ``fired`` (the message went, or is accounted for as
``unknown`` there); never recorded → sent again under the *same* id. So a step is never sent twice
(the ledger commits a hand-over before the request leaves) and never lost.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from engine.core.clock import Clock
from engine.core.errors import CoordinatorUnavailable
from engine.core.phone import mask
from engine.flows.config import Flow, Step
from engine.state.flowstore import FlowStore, SqliteFlowStore
from engine.state.timers import DueTimer, TimerState, TimerStore

__all__ = ["FiredCounts", "FlowRunner", "Outcome", "SendItem", "StepSender"]

log = logging.getLogger("pigeon.flows")

LATE_AFTER = 5.0
"""A timer fired more than this many seconds after it was due counts as late (metrics)."""

_dec = msgspec.json.Decoder(dict[str, str])


@dataclass(frozen=True, slots=True)
class SendItem:
    """One step's message for the sender."""

    message_id: str
    step: Step
    phone: str
    fields: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the sender did with one item: ``queued`` (in a lane, its hand-over to come),
    ``deferred`` (held by quiet hours: fire again at ``until``) or a final state with a reason
    (``suppressed``/``rejected``/``failed``, ``submitted``…)."""

    state: str
    reason: str = ""
    until: float = 0.0


class StepSender(Protocol):
    """Where the runner sends steps (the service's lanes; a test's fake)."""

    def reserve(self, lane: str, n: int) -> list[str]:
        """``n`` fresh message ids of ``lane``."""
        ...

    async def send(self, lane: str, items: Sequence[SendItem]) -> list[Outcome]:
        """Send ``items`` (one lane); per item its outcome."""
        ...

    def settled(self, message_ids: Sequence[str]) -> dict[str, str]:
        """Of ``message_ids`` (queued before), those whose hand-over (or end) the ledger has
        recorded: id → state (``deferred``: held in the lane after all — over a shared cap —
        to be tried again at :meth:`retry_at`)."""
        ...

    def recorded(self, message_ids: Sequence[str]) -> dict[str, str]:
        """Of ``message_ids``, those the ledger has any record of (after a restart): id → state."""
        ...

    def retry_at(self, message_id: str, reason: str, now: float) -> float:
        """When a step :meth:`settled` called ``deferred`` is tried again."""
        ...


@dataclass
class FiredCounts:
    """What the runner has done since start (for metrics)."""

    fired: int = 0
    """Timers claimed and handed to the sender."""
    late: int = 0
    sent: int = 0
    """Steps whose message was handed over (or is in a final sent state)."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Steps the stages ended without sending, by state."""
    deferred: int = 0
    expired: int = 0
    recovered: int = 0
    adopted: int = 0
    """Timers of a stopped host taken over (a shared store)."""
    resent: int = 0


class FlowRunner:
    """Fires due timers of ``flows`` from ``store`` through ``sender``."""

    def __init__(
        self,
        flows: Mapping[str, Flow],
        store: FlowStore | TimerStore,
        sender: StepSender,
        clock: Clock,
        *,
        batch: int = 500,
        max_per_second: float = 1000.0,
    ) -> None:
        self.flows = dict(flows)
        self.store: FlowStore = SqliteFlowStore(store) if isinstance(store, TimerStore) else store
        self.sender = sender
        self.clock = clock
        self.batch = batch
        self.max_per_second = max_per_second
        self.counts = FiredCounts()
        self.inflight: dict[str, int] = {}
        """Message id → timer id: queued, hand-over not yet recorded."""
        self._busy: dict[str, str] = {}
        """Message id → customer, of marketing steps in flight: a customer's next marketing step
        waits for the hand-over of the one before (the caps count at hand-over: two steps queued
        at once would both pass a cap of one)."""
        self._taken: set[int] = set()
        """Timer ids the running :meth:`fire_due` took and has not yet claimed, settled or given back."""
        self._strays = False
        """The store failed (did not answer) during a step: give back stray taken timers first."""
        self._tokens = float(batch)
        self._last = clock.monotonic()

    # -- pacing ------------------------------------------------------------------------------

    def _budget(self) -> int:
        """Timers the catch-up cap lets fire now (a token bucket of ``max_per_second``, one batch deep)."""
        now = self.clock.monotonic()
        self._tokens = min(float(self.batch), self._tokens + (now - self._last) * self.max_per_second)
        self._last = now
        return int(self._tokens)

    async def wait_hint(self) -> float:
        """Seconds until there may be work: the next due timer, or the budget refilling."""
        if self.inflight:
            return 0.05
        if self._tokens < 1:
            return (1 - self._tokens) / self.max_per_second
        nxt = await self.store.next_due(skip_flows=await self.store.paused())
        if nxt is None:
            return 3600.0
        return max(0.0, nxt - self.clock.time())

    # -- firing ------------------------------------------------------------------------------

    async def recover(self) -> int:
        """Settle the timers a crash left ``firing``: recorded in the ledger → ``fired``; never
        recorded → sent again with the same message id. Returns how many were found."""
        found = last = 0
        while True:
            left = await self.store.firing(self.batch, after=last)
            if not left:
                break
            last = left[-1].id
            found += len(left)
            known = self.sender.recorded([t.message or "" for t in left])
            done = [(t.id, f"recovered:{known[t.message]}") for t in left if t.message in known]
            if done:
                await self.store.settle(done, self.clock.time(), TimerState.FIRED)
            again = [t for t in left if t.message not in known]
            self.counts.recovered += len(done)
            self.counts.resent += len(again)
            if again:
                await self._send(again)
            if len(left) < self.batch:
                break
        if found:
            log.info(
                "flow timers recovered",
                extra={"event": "flows.recovered", "count": found, "resent": self.counts.resent},
            )
        return found

    async def fire_due(self) -> int:
        """One step: fire what is due (within the budget); how many timers were acted on.

        A shared store's :meth:`~FlowStore.due` *takes* the timers (``firing``, this host's, no
        message id). If a later call of the step fails, the timers not yet claimed are given back
        (best effort); when the store did not answer (:class:`CoordinatorUnavailable`, the give-back
        may have failed too, or a take's answer was lost), the next step first gives back every
        firing timer of this host without a message id (:meth:`_give_back_strays`)."""
        if self._strays:
            await self._give_back_strays()
        budget = self._budget()
        if budget < 1:
            return 0
        now = self.clock.time()
        try:
            due = await self.store.due(now, min(budget, self.batch), skip_flows=await self.store.paused())
        except CoordinatorUnavailable:
            self._strays = True  # an answer lost: the take may have happened
            raise
        if not due:
            return 0
        self._taken = {t.id for t in due}
        try:
            return await self._fire(now, due)
        except Exception as exc:
            if isinstance(exc, CoordinatorUnavailable):
                self._strays = True
            taken = sorted(self._taken)
            if taken:
                try:
                    await self.store.release(taken)
                except CoordinatorUnavailable:
                    self._strays = True
            raise
        finally:
            self._taken = set()

    async def _give_back_strays(self) -> int:
        """Give back (pending) this host's firing timers without a message id that are not in
        flight: taken by a step that failed while the store did not answer. How many."""
        held = set(self.inflight.values())
        found = last = 0
        while True:
            left = await self.store.firing(self.batch, after=last)
            if not left:
                break
            last = left[-1].id
            stray = [t.id for t in left if not t.message and t.id not in held]
            if stray:
                await self.store.release(stray)
                found += len(stray)
            if len(left) < self.batch:
                break
        self._strays = False
        if found:
            log.warning(
                "flow timers taken before the store failed given back: %d",
                found,
                extra={"event": "flows.released", "count": found},
            )
        return found

    async def _fire(self, now: float, due: Sequence[DueTimer]) -> int:
        """Act on the timers :meth:`fire_due` took (tracked in ``_taken`` until claimed)."""
        expired: list[tuple[int, str]] = []
        held: list[tuple[int, float, str]] = []
        ready: list[DueTimer] = []
        busy = set(self._busy.values())
        waiting: list[int] = []
        for t in due:
            flow = self.flows.get(t.flow)
            if flow is None or t.step >= len(flow.steps):
                expired.append((t.id, "flow_removed"))
                continue
            if flow.expire_after is not None and now - (t.planned or t.due) > flow.expire_after:
                expired.append((t.id, "expired"))
                continue
            if flow.steps[t.step].lane == "marketing":
                if not flow.window.is_open(now):
                    held.append((t.id, flow.window.next_open(now), "outside_send_window"))
                    continue
                if t.customer in busy:
                    waiting.append(t.id)
                    continue  # stays pending: fetched again once the step before is handed over
                busy.add(t.customer)
            ready.append(t)
        if waiting:
            await self.store.release(waiting)
            self._taken.difference_update(waiting)
        if expired:
            await self.store.settle(expired, now, TimerState.EXPIRED)
            self._taken.difference_update(tid for tid, _ in expired)
            self.counts.expired += len(expired)
        if held:
            await self.store.reschedule(held)
            self._taken.difference_update(tid for tid, _, _ in held)
            self.counts.deferred += len(held)
        self._tokens -= len(ready) + len(expired)
        self.counts.late += sum(1 for t in ready if now - t.due > LATE_AFTER)
        if ready:
            await self._send(ready)
        return len(ready) + len(expired) + len(held)  # (not those waiting for a step before them)

    async def _send(self, timers: Sequence[DueTimer]) -> None:
        """Claim (a message id each, kept for a timer that has one) and send, one lane at a time."""
        by_lane: dict[str, list[DueTimer]] = {}
        for t in timers:
            by_lane.setdefault(self.flows[t.flow].steps[t.step].lane, []).append(t)
        for lane, ts in by_lane.items():
            fresh = [t for t in ts if not t.message]
            ids = iter(self.sender.reserve(lane, len(fresh)) if fresh else [])
            mids = [t.message or next(ids) for t in ts]
            new_claims = [(t.id, m) for t, m in zip(ts, mids, strict=True) if not t.message]
            claimed = set(await self.store.claim(new_claims)) if new_claims else set()
            self._taken.difference_update(t.id for t in ts)  # claimed, or no longer this host's
            pairs = [(t, m) for t, m in zip(ts, mids, strict=True) if t.message or t.id in claimed]
            if not pairs:
                continue
            items = [
                SendItem(
                    m, self.flows[t.flow].steps[t.step], t.customer, _dec.decode(t.fields) if t.fields else {}
                )
                for t, m in pairs
            ]
            # in flight from now on (until the sender says otherwise): what waits on the runner
            # (confirm, a drain, a test) never sees them neither due nor on their way
            self.inflight.update((m, t.id) for t, m in pairs)
            if lane == "marketing":
                self._busy.update((m, t.customer) for t, m in pairs)
            outcomes = await self.sender.send(lane, items)
            self.counts.fired += len(items)
            now = self.clock.time()
            ended: list[tuple[int, str]] = []
            again: list[tuple[int, float, str]] = []
            for (t, m), o in zip(pairs, outcomes, strict=True):
                if o.state == "queued":
                    continue
                self.inflight.pop(m, None)
                self._busy.pop(m, None)
                if o.state == "deferred":
                    again.append((t.id, max(o.until, now + 1.0), o.reason or "deferred"))
                else:
                    ended.append((t.id, f"{o.state}:{o.reason}" if o.reason else o.state))
                    self.counts.dropped[o.state] = self.counts.dropped.get(o.state, 0) + 1
                    if o.state not in ("suppressed", "rejected", "failed"):
                        self.counts.sent += 1
            if ended:
                await self.store.settle(ended, now, TimerState.FIRED)
            if again:
                await self.store.reschedule(again)
                self.counts.deferred += len(again)
            if ended and log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "flow steps ended",
                    extra={"event": "flows.ended", "to": [mask(t.customer) for t, _ in pairs[:5]]},
                )

    async def confirm(self) -> int:
        """Mark ``fired`` the queued steps whose hand-over the ledger has recorded (those the lane
        held after all: ``pending`` again, at the sender's retry time); how many."""
        if not self.inflight:
            return 0
        got = self.sender.settled(list(self.inflight))
        if not got:
            return 0
        now = self.clock.time()
        ended: list[tuple[int, str]] = []
        again: list[tuple[int, float, str]] = []
        for m, state in got.items():
            self._busy.pop(m, None)
            tid = self.inflight.pop(m)
            if state == "deferred":  # held in its lane after it was queued (a shared cap): later
                again.append((tid, max(self.sender.retry_at(m, "capped", now), now + 1.0), "deferred:capped"))
            else:
                ended.append((tid, state))
        if again:
            await self.store.reschedule(again)
            self.counts.deferred += len(again)
        if ended:
            await self.store.settle(ended, now, TimerState.FIRED)
        self.counts.sent += sum(1 for _, s in ended if s not in ("suppressed", "rejected", "failed"))
        return len(ended) + len(again)
