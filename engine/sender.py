"""Send lanes: pace each carrier, keep a gateway's in-flight window full, retry, fail over, record.

A lane serves one primary gateway. Each request goes through, in order: the carrier's rate limiter
(SMS parts per second), the in-flight window (a bounded number of requests at once), the hand-over
hook (frequency caps count there), and the gateway. Answers are data: accepted and rejected
messages are recorded; ``retry``/``throttled`` ones go again after a backoff (a ``Retry-After`` is
honoured); a failed request is retried, or — when the gateway's breaker opens — sent through the
next gateway that serves the carrier. A timeout on a gateway that is not idempotent is never
resent blindly: those messages end ``unknown``. Nothing leaves a lane unrecorded.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from engine.clock import Clock
from engine.errors import GatewayError
from engine.gateway import Gateway
from engine.messages import ACCEPTED, MessageBatch, Outcome, SubmitResult
from engine.metrics import request_outcome
from engine.ratelimit import SlidingWindowLimiter
from engine.report import RunRecorder
from engine.retry import Breaker, RetryPolicy

__all__ = ["Accumulator", "Lane", "LaneItem"]

LaneItem = MessageBatch
"""What crosses into a lane: a batch of one carrier's messages."""

_AGAIN = (Outcome.RETRY, Outcome.THROTTLED)


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


class Lane:
    """Everything that sends through one primary gateway.

    :param gateways: carrier → the gateways serving it, primary first (failover order).
    :param breakers: gateway name → its circuit breaker (shared by every lane using it).
    :param in_flight: requests this lane keeps open at once.
    :param on_idle: called before any of its workers waits (see :attr:`on_idle`).
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
        on_handover: Callable[[MessageBatch], None] | None = None,
        policy: RetryPolicy | None = None,
        in_flight: int = 1,
        seed: int | None = None,
        priority: str = "marketing",
        on_idle: Callable[[], None] | None = None,
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

    def _choose(self, carrier: str) -> tuple[Gateway | None, float]:
        """The first gateway for ``carrier`` whose breaker lets a request through, or when to look again."""
        now = self.clock.monotonic()
        candidates = self.gateways.get(carrier) or [self.primary]
        for gw in candidates:
            if self.breakers[gw.name].allow(now):
                return gw, 0.0
        return None, max(0.05, min(self.breakers[g.name].ready_at() for g in candidates) - now)

    async def _attempts(self, pending: MessageBatch) -> None:
        recorder, policy, carrier = self.recorder, self.policy, pending.carrier
        metrics, priority = recorder.metrics, self.priority
        handed = False
        last = ""
        attempt = 0
        while len(pending):
            if attempt >= policy.max_attempts:
                recorder.failed(self.primary.name, pending, f"retries_exhausted:{last}", count_request=False)
                metrics.queued(priority, carrier, -len(pending))
                return
            gw, wait = self._choose(carrier)
            if gw is None:
                self._pause()
                await anyio.sleep(wait)  # every gateway for the carrier is resting: not an attempt
                continue
            budget = [lim for lim in (self.limiters.get(carrier), self.gateway_limiters.get(gw.name)) if lim]
            if budget:
                delay = SlidingWindowLimiter.reserve_all(
                    budget, self.clock.monotonic(), pending.total_parts()
                )
                metrics.ratelimit_wait(carrier, delay)
                if delay > 0:
                    self._pause()
                    await anyio.sleep(delay)
            if not handed and self.on_handover is not None:
                self.on_handover(pending)  # caps count a message once, when first handed over
                handed = True
            attempt += 1
            breaker = self.breakers[gw.name]
            metrics.queued(priority, carrier, -len(pending))
            if gw is not self.primary:
                metrics.failover(carrier, gw.name, len(pending))
            metrics.in_flight(gw.name, 1)
            sent_at = self.clock.monotonic()
            try:
                results = await gw.send(pending)
            except GatewayError as exc:
                recorder.observe(gw.name, self.clock.monotonic() - sent_at, retry=attempt > 1)
                metrics.in_flight(gw.name, -1)
                outcome = request_outcome(exc)
                metrics.request(gw.name, outcome, self.clock.monotonic() - sent_at, len(pending))
                breaker.failure(self.clock.monotonic())
                last = type(exc).__name__
                if exc.ambiguous and not gw.idempotent:
                    recorder.unknown(gw.name, pending, f"ambiguous:{last}")
                    return
                if not exc.retriable and len(self.gateways.get(carrier) or ()) <= 1:
                    recorder.failed(gw.name, pending, f"gateway_error:{last}")
                    return
                metrics.retries(gw.name, outcome, len(pending))
                metrics.queued(priority, carrier, len(pending))
                self._pause()
                await anyio.sleep(policy.delay(attempt, self._rng))
                continue
            recorder.observe(gw.name, self.clock.monotonic() - sent_at, retry=attempt > 1)
            metrics.in_flight(gw.name, -1)
            breaker.success()
            if results.count(ACCEPTED) == len(results):  # all accepted, no provider ids: one C scan
                again: list[int] = []
            else:
                again = [i for i, r in enumerate(results) if r.outcome in _AGAIN]
            throttled = any(results[i].outcome is Outcome.THROTTLED for i in again)
            outcome = "throttled" if throttled else "retry" if again else "ok"
            metrics.request(gw.name, outcome, self.clock.monotonic() - sent_at, len(pending))
            account = self.gateway_limiters.get(gw.name)
            if account is not None:
                if throttled:
                    account.slow_down()
                else:
                    account.recover()
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
            self._pause()
            await anyio.sleep(policy.delay(attempt, self._rng, at_least=retry_after))


def _code(r: SubmitResult) -> str:
    return f"{r.outcome.value}:{r.code or r.outcome.value}"
