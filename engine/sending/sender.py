"""Send lanes: pace each carrier, keep a gateway's in-flight window full, retry, fail over, record.

A lane serves one primary gateway. Each request goes through, in order: a gateway that can be
reached (:class:`RouteHealth`; failover in the carrier's order), the carrier's and the gateway's
rate budgets (SMS parts per second, charged until the answer: :mod:`engine.sending.ratelimit`), the
in-flight window (a bounded number of requests at once), the hand-over hook (the ledger records
the rows ``submitting`` and the caps count them, in one transaction) and the gateway.

What each outcome does to the recipients (docs/ledger.md draws the whole state machine):

* accepted / rejected — recorded as they are;
* ``retry`` / ``throttled`` answers and answered failures (5xx) — the rows go back to ``pending``
  in the ledger, then again after a backoff (a ``Retry-After`` is honoured); one attempt is spent;
* the gateway cannot be reached (:class:`~engine.core.errors.GatewayUnreachable`: the request never
  left) — the rows go back to ``pending`` and *no* attempt is spent; the route pauses (another
  gateway of the carrier takes over if it can), is probed with a growing pause, and when it stays
  down past ``outage.limit`` the run halts with everyone not sent still ``pending``;
* no answer (a timeout) on a gateway that is not idempotent — ``unknown``, never resent blindly;
* credentials, account, signature or template refused — the gateway is not used again in this
  run (failover, else the run halts, recipients ``pending``).

Nothing leaves a lane unrecorded: after a halt, what is still queued is counted ``pending``.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from engine.core.clock import Clock
from engine.core.errors import CoordinatorUnavailable, GatewayAuthError, GatewayError, RunHalt
from engine.core.messages import ACCEPTED, MessageBatch, Outcome, SubmitResult
from engine.observability.metric_names import request_outcome
from engine.observability.report import RunRecorder
from engine.sending.gateway import Gateway, handing_over, reset_handing_over
from engine.sending.ratelimit import SlidingWindowLimiter, Ticket
from engine.sending.retry import Breaker, RetryPolicy

__all__ = [
    "Accumulator",
    "Halt",
    "HandoverHook",
    "Lane",
    "LaneItem",
    "RouteHealth",
    "SharedGate",
    "split_parts",
]

log = logging.getLogger("pigeon.sender")

HandoverHook = Callable[[MessageBatch, bool, str], None]
"""Called just before a request goes, with its messages, whether they are handed over for the
first time (``False`` on a retry) and the gateway's name: records the rows ``submitting`` and
counts the caps. Raises a
:class:`~engine.core.errors.RunHalt` when the request must not go (store unwritable, stalled
gateways, the campaign's lease lost): the run then halts."""

LaneItem = MessageBatch
"""What crosses into a lane: a batch of one carrier's messages."""

_AGAIN = (Outcome.RETRY, Outcome.THROTTLED)


class SharedGate(Protocol):
    """What a lane asks of the workers' shared coordination (``engine.coordination.gate``), per
    request: the recipients' claims before their first hand-over, then the shared rate budgets.

    :meth:`claim` and :meth:`charge` raise :class:`~engine.core.errors.CoordinatorUnavailable` when
    the shared store does not answer: the lane then waits :attr:`pause` seconds and asks again —
    a request never goes without its claims and its booked budget.
    """

    pause: float
    """Seconds a lane waits before asking a store that did not answer again."""

    async def claim(
        self, batch: MessageBatch
    ) -> tuple[list[int], list[int], list[int], dict[str, list[int]]]:
        """Claim the request's recipients for this worker: the indices another worker (or another
        row) holds, those opted out since the campaign started, those taken over from a dead
        worker that may have sent them already and must not be resent (they end ``unknown``), and —
        by reason (``capped``, ``same_content``) — those held back by a cap or a same-content window
        counted across the workers (they end ``suppressed`` with that reason)."""
        ...

    async def release(self, batch: MessageBatch) -> None:
        """Give back this worker's claims on a request that never left (best effort)."""
        ...

    def burst(self, gateway: str, carrier: str) -> int | None:
        """The most parts one request to ``gateway`` for ``carrier`` may take (None: no budget)."""
        ...

    async def charge(self, gateway: str, carrier: str, parts: int) -> float:
        """Book a request's parts on the shared budgets: 0.0, or the seconds to wait (nothing booked)."""
        ...

    async def throttled(self, gateway: str, carrier: str) -> None:
        """``gateway`` answered "too fast" for ``carrier``: slow the shared budget for every worker
        (best effort: a store that does not answer leaves it as it is)."""
        ...

    def unavailable(self, error: CoordinatorUnavailable, waiting: int) -> None:
        """The store did not answer (``waiting`` recipients wait): say so, now and then."""
        ...

    def available(self) -> None:
        """The store answered: say so if it had not."""
        ...


class Accumulator:
    """Packs one carrier's messages into requests of at most ``size`` (a gateway's ``max_batch``).

    Pure and synchronous: :meth:`add` returns the batches to send now and keeps the rest;
    :meth:`flush` returns what is left at the end. Small per-carrier groups are joined until they
    fill a request; a group of at least half a request goes as it is (no copy, no wait). So every
    request but the last carries at least ``size // 2`` messages, whatever the carrier mix.
    """

    __slots__ = ("_count", "_pending", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._pending: list[MessageBatch] = []
        self._count = 0

    def add(self, messages: MessageBatch) -> list[MessageBatch]:
        """Take ``messages``; return the batches of ``size`` that are now full.

        Incoming batches are cut, never the merged one, so each message is copied once on its
        way to a request (twice for the few at a cut).
        """
        full: list[MessageBatch] = []
        size = self.size
        if not self._count and size // 2 <= len(messages) <= size:
            return [messages]  # big enough already: no copy, no wait
        while len(messages):
            room = size - self._count
            if len(messages) < room:
                self._pending.append(messages)
                self._count += len(messages)
                break
            self._pending.append(messages[:room] if len(messages) > room else messages)
            full.append(MessageBatch.concat(self._pending))
            self._pending, self._count = [], 0
            messages = messages[room:]
        return full

    def flush(self) -> list[MessageBatch]:
        """Whatever is pending, as one batch (or none)."""
        if not self._count:
            return []
        merged = MessageBatch.concat(self._pending)
        self._pending, self._count = [], 0
        return [merged]


class _WorkQueue:
    """Request-sized batches waiting for a lane's workers; the feeder pauses while ``high`` wait."""

    __slots__ = ("_items", "_ready", "_room", "closed", "high")

    def __init__(self, high: int) -> None:
        self._items: deque[MessageBatch] = deque()
        self.high = high
        self.closed = False
        self._ready = anyio.Event()
        self._room = anyio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, batches: list[MessageBatch]) -> None:
        """Queue ``batches`` and wake the waiting workers."""
        self._items.extend(batches)
        self._ready.set()

    def close(self) -> None:
        """No more batches: workers stop once the queue is empty."""
        self.closed = True
        self._ready.set()

    async def get(self) -> MessageBatch | None:
        """The next batch, or None when the queue is closed and empty."""
        items = self._items
        while not items:
            if self.closed:
                return None
            if self._ready.is_set():
                self._ready = anyio.Event()
            await self._ready.wait()
        if len(items) <= self.high:
            self._room.set()
        return items.popleft()

    async def wait_for_room(self) -> None:
        """Return once fewer than ``high`` batches wait."""
        while len(self._items) >= self.high:
            if self._room.is_set():
                self._room = anyio.Event()
            await self._room.wait()


def split_parts(batch: MessageBatch, limit: float) -> list[MessageBatch]:
    """``batch`` cut in order into requests of at most ``limit`` billed parts each (every message
    fits on its own: the engine refuses at start a message longer than a rate)."""
    out: list[MessageBatch] = []
    start = used = 0
    for i, p in enumerate(batch.parts):
        if used + p > limit and i > start:
            out.append(batch[start:i])
            start, used = i, 0
        used += p
    out.append(batch[start:])
    return out


class Halt:
    """Why a run stops before the end of its segment because of a fault (never a request to stop).

    The first reason wins. Setting it stops the reader; the lanes stop sending and count what is
    still queued ``pending`` (never handed over: a resume sends it).
    """

    __slots__ = ("event", "message", "reason")

    def __init__(self) -> None:
        self.reason = ""
        """A bounded label: ``gateway_unreachable``, ``gateway_refused``, ``gateway_stalled``,
        ``store_unwritable``, ``lease_lost``; empty while the run goes on."""
        self.message = ""
        """What happened and what to do, for the operator."""
        self.event = anyio.Event()

    def __bool__(self) -> bool:
        return bool(self.reason)

    def __call__(self, reason: str, message: str) -> None:
        """Halt the run (the first call wins)."""
        if not self.reason:
            self.reason, self.message = reason, message
            log.warning("run halted: %s", message, extra={"event": "run.halted", "reason": reason})
            self.event.set()


_PROBE_FIRST = 0.2
"""Seconds before a gateway found unreachable is tried again; doubles up to :data:`_PROBE_MAX`."""
_PROBE_MAX = 5.0
_SAY_EVERY = 5.0
"""Seconds between two "still unreachable" lines."""


class RouteHealth:
    """Which gateways of a run can be reached, shared by its lanes.

    A gateway whose request could not leave (:class:`~engine.core.errors.GatewayUnreachable`) is *down*
    from then until it answers again: no request is handed over to it meanwhile. It is probed
    after 0.2 s, 0.4 s … 5 s (``gateway.probe()`` when the plugin has one — a connection, no
    message — else one request). While every gateway of a carrier is down the route is paused;
    when it has been down for ``limit`` seconds the run halts (``limit`` None: wait for ever, as the
    service's API lanes do). A gateway that refused its credentials, account or template is not
    used again in the run.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        limit: float | None = None,
        halt: Halt | None = None,
        notify: Callable[[str], None] | None = None,
        waiting: Callable[[], int] | None = None,
        campaign: str = "",
    ) -> None:
        self.clock = clock
        self.limit = limit
        self.halt = halt if halt is not None else Halt()
        self.notify = notify
        self.waiting = waiting
        """How many recipients wait to be sent (for the "paused" line)."""
        self.campaign = campaign
        self.down: dict[str, tuple[float, float, str]] = {}
        """Gateway → (monotonic and wall time it went down, the last error)."""
        self.refused: dict[str, str] = {}
        """Gateway → why it is not used again in this run."""
        self._probe_at: dict[str, float] = {}
        self._probe_delay: dict[str, float] = {}
        self._probing: set[str] = set()
        self._said = -math.inf

    def unreachable(self, gateway: str, error: str) -> None:
        """A request to ``gateway`` could not leave this machine."""
        now = self.clock.monotonic()
        if gateway not in self.down:
            self.down[gateway] = (now, time.time(), error)
            self._probe_delay[gateway] = _PROBE_FIRST
            log.warning(
                "gateway %s unreachable: %s",
                gateway,
                error,
                extra={"event": "gateway.down", "gateway": gateway},
            )
        else:
            since, wall, _ = self.down[gateway]
            self.down[gateway] = (since, wall, error)
            self._probe_delay[gateway] = min(_PROBE_MAX, self._probe_delay[gateway] * 2)
        self._probe_at[gateway] = now + self._probe_delay[gateway]

    def answered(self, gateway: str) -> None:
        """``gateway`` answered (anything): it is up."""
        if self.down.pop(gateway, None) is not None:
            log.info("gateway %s reachable again", gateway, extra={"event": "gateway.up", "gateway": gateway})
            if self.notify is not None:
                self.notify(f"gateway {gateway} answers again: sending resumed")

    def refuse(self, gateway: str, why: str) -> None:
        """``gateway`` refused credentials, account, signature or template: not used again."""
        self.refused.setdefault(gateway, why)

    async def usable(self, gw: Gateway) -> bool:
        """Whether a request may be handed over to ``gw`` now (probing it when it is due)."""
        name = gw.name
        if name in self.refused:
            return False
        if name not in self.down:
            return True
        if self.clock.monotonic() < self._probe_at.get(name, 0.0) or name in self._probing:
            return False
        probe = getattr(gw, "probe", None)
        if probe is None:
            self._probe_at[name] = math.inf  # one request tries; its outcome decides
            return True
        self._probing.add(name)
        try:
            await probe()
        except GatewayError as exc:
            self.unreachable(name, f"{type(exc).__name__}: {exc}")
            return False
        except Exception as exc:  # a plugin's probe must not end the run
            self.unreachable(name, f"probe failed: {type(exc).__name__}")
            return False
        finally:
            self._probing.discard(name)
        self.answered(name)
        return True

    def next_look(self, candidates: Sequence[Gateway]) -> float:
        """Seconds until one of ``candidates`` (all unusable now) may be tried again (≤ 1 s)."""
        now = self.clock.monotonic()
        due = [self._probe_at.get(g.name, now) for g in candidates if g.name not in self.refused]
        return max(0.01, min(1.0, min(due, default=now + 1.0) - now))

    def paused(self, carrier: str, candidates: Sequence[Gateway]) -> None:
        """No gateway of ``carrier`` is usable now: say so every few seconds, halt when it lasts."""
        usable = [g.name for g in candidates if g.name not in self.refused]
        if not usable:
            why = "; ".join(f"{g.name}: {self.refused[g.name]}" for g in candidates)
            self.halt(
                "gateway_refused",
                f"no gateway for carrier {carrier} will take messages ({why}). Fix the gateway's "
                f"credentials, account, signature or template, then `pigeon resume {self.campaign}`"
                ": everyone not sent is pending",
            )
            return
        down = [self.down[g] for g in usable if g in self.down]
        if len(down) < len(usable):
            return  # some gateway is only resting (breaker) or being probed
        now = self.clock.monotonic()
        since = max(d[0] for d in down)
        wall = max(d[1] for d in down)
        names = ", ".join(usable)
        waiting = self.waiting() if self.waiting is not None else 0
        when = time.strftime("%H:%M:%S", time.localtime(wall))
        last = down[-1][2]
        if self.limit is not None and now - since >= self.limit:
            self.halt(
                "gateway_unreachable",
                f"gateway {names} unreachable since {when} ({now - since:.0f} s, outage.limit = "
                f"{self.limit:g} s; last error: {last}): the run stopped, {waiting:,} recipients not sent "
                f"are pending. `pigeon resume {self.campaign}` sends them once it answers",
            )
            return
        if self.notify is not None and now - self._said >= _SAY_EVERY:
            self._said = now
            limit = f"; the run stops at {self.limit:g} s (outage.limit)" if self.limit is not None else ""
            self.notify(
                f"gateway {names} unreachable since {when} ({now - since:.0f} s): paused, {waiting:,} "
                f"recipients waiting{limit}"
            )


async def _budget_freed(limiters: Sequence[SlidingWindowLimiter], longest: float) -> None:
    """Wait until a request charged to one of ``limiters`` is answered (or ``longest`` seconds)."""
    ev = anyio.Event()
    for lim in limiters:
        lim.waiters.append(ev)
    try:
        with anyio.move_on_after(longest):
            await ev.wait()
    finally:
        for lim in limiters:
            if ev in lim.waiters:
                lim.waiters.remove(ev)


def _wake(limiters: Sequence[SlidingWindowLimiter]) -> None:
    for lim in limiters:
        if lim.waiters:
            for ev in lim.waiters:
                ev.set()
            lim.waiters.clear()


class Lane:
    """Everything that sends through one primary gateway.

    :param gateways: carrier → the gateways serving it, primary first (failover order).
    :param breakers: gateway name → its circuit breaker (shared by every lane using it).
    :param in_flight: requests this lane keeps open at once.
    :param health: which gateways can be reached (shared by the run's lanes; default: a fresh one
        that waits for ever).
    :param on_idle: called before any of its workers waits (see :attr:`on_idle`).
    :param gate: the claims and rate budgets shared with other workers (``pigeon send
        --coordinator``): each request's recipients are claimed before their first hand-over (those
        another worker holds are recorded ``suppressed``, ``claimed_elsewhere``) and its parts
        booked on the shared budgets after the local ones; a store that does not answer pauses it.
    """

    def __init__(
        self,
        primary: Gateway,
        *,
        gateways: Mapping[str, Sequence[Gateway]],
        limiters: Mapping[str, SlidingWindowLimiter],
        gateway_limiters: Mapping[str, SlidingWindowLimiter] | None = None,
        breakers: Mapping[str, Breaker],
        clock: Clock,
        recorder: RunRecorder,
        on_handover: HandoverHook | None = None,
        policy: RetryPolicy | None = None,
        in_flight: int = 1,
        seed: int | None = None,
        priority: str = "marketing",
        on_idle: Callable[[], None] | None = None,
        health: RouteHealth | None = None,
        gate: SharedGate | None = None,
    ) -> None:
        self.primary = primary
        self.gateways = gateways
        self.limiters = limiters
        """Carrier → its budget (shared by every lane)."""
        self.gateway_limiters = gateway_limiters or {}
        """Gateway name → its account's budget; slowed down when the provider throttles."""
        self.breakers = breakers
        self.clock = clock
        self.recorder = recorder
        self.on_handover = on_handover
        self.policy = policy or RetryPolicy()
        self.in_flight = in_flight
        self._rng = random.Random(seed)
        self.priority = priority
        """The queue lane its messages are counted in (``pigeon_queued_messages``)."""
        self.on_idle = on_idle
        """Called when a worker is about to wait (no work queued, a rate-limit, breaker or retry
        delay): the ledger commits the answers it holds for the next hand-over
        (``CampaignLedger.group_commit``)."""
        self.health = health if health is not None else RouteHealth(clock)
        self.halt = self.health.halt
        self.gate = gate
        """The workers' shared claims and budgets (None: this process alone sends the campaign)."""

    async def run(self, inbox: MemoryObjectReceiveStream[LaneItem]) -> None:
        """Send everything that arrives in ``inbox``; returns when it is closed and drained.

        ``in_flight`` workers each send one request at a time (with its retries) from a shared
        queue of request-sized batches: no task, semaphore or channel hop per request.
        """
        size = self.primary.max_batch
        queue = _WorkQueue(high=2 * self.in_flight)
        async with inbox, anyio.create_task_group() as tg:
            for _ in range(self.in_flight):
                tg.start_soon(self._worker, queue)
            async for messages in inbox:
                if len(messages) <= size:
                    queue.put([messages])
                else:
                    queue.put([messages[start : start + size] for start in range(0, len(messages), size)])
                await queue.wait_for_room()
            queue.close()

    async def _worker(self, queue: _WorkQueue) -> None:
        idle = self.on_idle
        while True:
            if idle is not None and not queue:
                idle()  # about to wait for work: nothing may stay buffered meanwhile
            pending = await queue.get()
            if pending is None:
                return
            await self._attempts(pending)

    def _pause(self) -> None:
        if self.on_idle is not None:
            self.on_idle()

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the run halts meanwhile."""
        self._pause()
        with anyio.move_on_after(seconds):
            await self.halt.event.wait()

    async def _choose(self, carrier: str) -> tuple[Gateway | None, float]:
        """The first gateway for ``carrier`` that can take a request now, or how long to wait."""
        candidates = self.gateways.get(carrier) or [self.primary]
        health = self.health
        for gw in candidates:
            if await health.usable(gw) and self.breakers[gw.name].allow(self.clock.monotonic()):
                return gw, 0.0
        health.paused(carrier, candidates)
        now = self.clock.monotonic()
        resting = [self.breakers[g.name].ready_at() - now for g in candidates if g.name not in health.down]
        look = health.next_look(candidates)
        return None, max(0.01, min([look, *[r for r in resting if r > 0]]))

    def _stop_here(self, pending: MessageBatch, reason: str) -> None:
        """The run halted: ``pending`` was never handed over (or was given back): it stays pending."""
        self.recorder.pending(pending, reason)
        self.recorder.metrics.queued(self.priority, pending.carrier, -len(pending))

    async def _gate_down(self, exc: CoordinatorUnavailable) -> None:
        gate = self.gate
        assert gate is not None
        gate.unavailable(exc, self.health.waiting() if self.health.waiting is not None else 0)
        await self._sleep(gate.pause)

    async def _attempts(
        self, pending: MessageBatch, attempt: int = 0, handed: bool = False, claimed: bool = False
    ) -> None:
        recorder, policy, carrier = self.recorder, self.policy, pending.carrier
        metrics, priority, gate = recorder.metrics, self.priority, self.gate
        last = ""
        waited = 0.0
        while len(pending):
            if self.halt:
                if gate is not None and claimed and not handed:  # another worker may send them
                    with anyio.move_on_after(2, shield=True):
                        await gate.release(pending)
                self._stop_here(pending, self.halt.reason)
                return
            if gate is not None and not claimed and not handed:
                # Claimed for this worker before anything else: a request never goes without it.
                try:
                    taken, opted, doubtful, held = await gate.claim(pending)
                except CoordinatorUnavailable as exc:
                    await self._gate_down(exc)
                    continue
                gate.available()
                claimed = True
                if taken or opted or doubtful or held:
                    held_back = [i for idx in held.values() for i in idx]
                    if taken:
                        recorder.elsewhere(pending.take(taken), "claimed_elsewhere")
                    if opted:  # opted out on some worker since the run started
                        recorder.elsewhere(pending.take(opted), "opted_out")
                    for reason, idx in held.items():  # a cap or same-content window every worker counts
                        recorder.elsewhere(pending.take(idx), reason)
                    if doubtful:  # a dead worker claimed them: maybe sent, never resent blindly
                        recorder.doubtful(self.primary.name, pending.take(doubtful), "claimed_by_dead_worker")
                    metrics.queued(
                        priority, carrier, -len(taken) - len(opted) - len(doubtful) - len(held_back)
                    )
                    gone = set(taken) | set(opted) | set(doubtful) | set(held_back)
                    pending = pending.take([i for i in range(len(pending)) if i not in gone])
                    continue
            if attempt >= policy.max_attempts:
                recorder.failed(self.primary.name, pending, f"retries_exhausted:{last}", count_request=False)
                metrics.queued(priority, carrier, -len(pending))
                return
            gw, wait = await self._choose(carrier)
            if gw is None:
                await self._sleep(wait)  # every gateway for the carrier is down or resting: no attempt
                continue
            budget = [lim for lim in (self.limiters.get(carrier), self.gateway_limiters.get(gw.name)) if lim]
            if budget:
                cap = min(lim.rate for lim in budget)
                if pending.total_parts() > cap:  # never more in one request than a second's budget
                    if len(pending) > 1:
                        for chunk in split_parts(pending, cap):
                            await self._attempts(chunk, attempt, handed, claimed)
                        return
                    most = min(lim.capacity for lim in budget)
                    if pending.total_parts() > most:  # can never go within the rate (the CLI refuses
                        metrics.queued(priority, carrier, -1)  # such campaigns at start)
                        recorder.failed(gw.name, pending, f"over_rate:{pending.total_parts()}_parts")
                        return
                now = self.clock.monotonic()
                at = SlidingWindowLimiter.earliest_all(budget, now, pending.total_parts())
                if at > now:
                    if at == math.inf:
                        self._pause()
                        started = self.clock.monotonic()
                        await _budget_freed(budget, 1.0)
                        waited += self.clock.monotonic() - started
                    else:
                        await self._sleep(at - now)
                        waited += at - now
                    continue  # look again: breakers, the halt and the budget may have changed
            if gate is not None:
                parts = pending.total_parts()
                room = gate.burst(gw.name, carrier)
                if room is not None and parts > room and len(pending) > 1:  # one shared burst each
                    for chunk in split_parts(pending, room):
                        await self._attempts(chunk, attempt, handed, claimed)
                    return
                try:
                    wait = await gate.charge(gw.name, carrier, parts)
                except CoordinatorUnavailable as exc:
                    await self._gate_down(exc)
                    continue
                gate.available()
                if wait > 0:
                    await self._sleep(min(wait, 1.0))
                    waited += min(wait, 1.0)
                    continue  # look again: the local budgets and the gateways may have changed
            if budget or gate is not None:
                metrics.ratelimit_wait(carrier, waited)
                waited = 0.0
            # The hand-over (ledger: submitting; caps counted once) is recorded at the last moment
            # the gateway can tell: just before the request's first byte is written when it calls
            # about_to_write(), else now.
            hand = _HandOver(self.on_handover, pending, not handed, gw.name)
            late = hand.hook is not None and getattr(gw, "hands_over_on_write", False)
            if not late:
                try:
                    hand()
                except RunHalt as exc:
                    self.halt(exc.reason, str(exc))
                    continue
            sent_at = self.clock.monotonic()
            tickets = [(lim, lim.take(sent_at, pending.total_parts())) for lim in budget]
            try:
                results = await self._send(gw, pending, attempt, hand if late else None)
            except RunHalt as exc:  # raised by the hand-over inside the gateway: nothing was written
                _release(tickets, None)
                metrics.queued(priority, carrier, len(pending))
                self.halt(exc.reason, str(exc))
                continue
            except GatewayError as exc:
                answered_at = self.clock.monotonic()
                outcome = request_outcome(exc)
                metrics.request(gw.name, outcome, answered_at - sent_at, len(pending))
                metrics.queued(priority, carrier, len(pending))  # back in the queue, whatever follows
                last = type(exc).__name__
                handed = handed or hand.done
                # A gateway that hands over on write failed before writing: it never left.
                if not exc.left or not hand.done:  # never left this machine: no charge, no attempt spent
                    _release(tickets, None)
                    if hand.done:  # (a gateway that hands over on write got no connection: no record)
                        recorder.released(gw.name, pending, f"waiting:{last}")
                    self.health.unreachable(gw.name, f"{last}: {exc}")
                    continue
                _release(tickets, answered_at)
                self.breakers[gw.name].failure(answered_at)
                self.health.answered(gw.name)  # it was reached: an answer, or maybe one
                if isinstance(exc, GatewayAuthError):
                    recorder.released(gw.name, pending, f"waiting:{last}")
                    self.health.refuse(gw.name, str(exc))
                    continue  # failover, or the run halts with everyone pending
                attempt += 1
                if exc.ambiguous and not gw.idempotent:
                    metrics.queued(priority, carrier, -len(pending))
                    recorder.unknown(gw.name, pending, f"ambiguous:{last}")
                    return
                if not exc.retriable and len(self.gateways.get(carrier) or ()) <= 1:
                    metrics.queued(priority, carrier, -len(pending))
                    recorder.failed(gw.name, pending, f"gateway_error:{last}")
                    return
                metrics.retries(gw.name, outcome, len(pending))
                recorder.released(gw.name, pending, f"retry:{last}")
                await self._sleep(policy.delay(attempt, self._rng))
                continue
            if not hand.done:  # the gateway answered without saying when it wrote: record it now
                try:
                    hand()
                except RunHalt as exc:
                    self.halt(exc.reason, str(exc))
            answered_at = self.clock.monotonic()
            _release(tickets, answered_at)
            handed = True
            attempt += 1
            self.breakers[gw.name].success()
            self.health.answered(gw.name)
            if results.count(ACCEPTED) == len(results):  # all accepted, no provider ids: one C scan
                again: list[int] = []
            else:
                again = [i for i, r in enumerate(results) if r.outcome in _AGAIN]
            throttled = any(results[i].outcome is Outcome.THROTTLED for i in again)
            outcome = "throttled" if throttled else "retry" if again else "ok"
            metrics.request(gw.name, outcome, answered_at - sent_at, len(pending))
            account = self.gateway_limiters.get(gw.name)
            if account is not None:
                if throttled:
                    account.slow_down()
                else:
                    account.recover()
            if throttled and gate is not None:
                await gate.throttled(gw.name, carrier)  # every worker's shared budget slows too
            if not again:
                recorder.results(gw.name, pending, results)
                return
            done = [i for i, r in enumerate(results) if r.outcome not in _AGAIN]
            if done:
                recorder.results(gw.name, pending.take(done), [results[i] for i in done])
            recorder.request(gw.name, count_only=not done)
            retry_after = max(results[i].retry_after for i in again)
            last = _code(results[again[0]])
            pending = pending.take(again)
            metrics.retries(gw.name, outcome, len(pending))
            metrics.queued(priority, carrier, len(pending))
            recorder.released(gw.name, pending, f"retry:{last}")
            await self._sleep(policy.delay(attempt, self._rng, at_least=retry_after))

    async def _send(
        self, gw: Gateway, pending: MessageBatch, attempt: int, hand: _HandOver | None = None
    ) -> Sequence[SubmitResult]:
        """``gw.send`` with the request counted (and ``hand`` for its :func:`about_to_write`); any
        exception a plugin lets escape is a gateway error that may have left (never a crash of the
        run, never a loss) — but a :class:`RunHalt` from the hand-over goes out as it is."""
        metrics = self.recorder.metrics
        metrics.queued(self.priority, pending.carrier, -len(pending))
        if gw is not self.primary:
            metrics.failover(pending.carrier, gw.name, len(pending))
        metrics.in_flight(gw.name, 1)
        started = self.clock.monotonic()
        token = handing_over(hand)
        try:
            return await gw.send(pending)
        except (GatewayError, RunHalt):
            raise
        except Exception as exc:
            log.error(
                "gateway %s raised %s: a plugin bug; the request is treated as maybe taken",
                gw.name,
                type(exc).__name__,
                extra={"event": "gateway.bug", "gateway": gw.name},
            )
            raise _PluginFault(f"{gw.name}: {type(exc).__name__}") from None
        finally:
            reset_handing_over(token)
            metrics.in_flight(gw.name, -1)
            self.recorder.observe(gw.name, self.clock.monotonic() - started, retry=attempt > 0)


class _HandOver:
    """A request's hand-over, made once: before ``send``, or from the gateway's
    :func:`~engine.sending.gateway.about_to_write`."""

    __slots__ = ("done", "first", "gateway", "hook", "pending")

    def __init__(self, hook: HandoverHook | None, pending: MessageBatch, first: bool, gateway: str) -> None:
        self.hook, self.pending, self.first, self.gateway = hook, pending, first, gateway
        self.done = hook is None

    def __call__(self) -> None:
        if not self.done:
            assert self.hook is not None
            self.hook(self.pending, self.first, self.gateway)
            self.done = True


class _PluginFault(GatewayError):
    """A gateway plugin let a non-gateway exception escape: treated as "may have been taken"."""

    retriable = True
    ambiguous = True


def _release(tickets: list[tuple[SlidingWindowLimiter, Ticket]], answered_at: float | None) -> None:
    """The request is over: charged a window more from ``answered_at`` (None: it never left)."""
    for lim, ticket in tickets:
        if answered_at is None:
            lim.cancel(ticket)
        else:
            lim.done(ticket, answered_at)
    if tickets:
        _wake([lim for lim, _ in tickets])


def _code(r: SubmitResult) -> str:
    return f"{r.outcome.value}:{r.code or r.outcome.value}"
