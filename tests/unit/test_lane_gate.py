"""A lane with a coordinator's gate: claims before the first hand-over, shared budgets, a store down.

The coordinator here is an in-memory one two "workers" share (claims in one dict), which can be
made to stop answering; the gate and the lane are the real ones. Redis itself is in
tests/integration/test_coordinated_send.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest

from engine.coordination.contract import BudgetKey, BudgetSpec, Claim, LeaseGrant
from engine.coordination.gate import CoordinatedGate
from engine.core.clock import SystemClock
from engine.core.errors import CoordinatorUnavailable
from engine.core.messages import MessageBatch
from engine.observability.metrics import NO_METRICS, Metrics
from engine.observability.report import RunRecorder
from engine.sending.retry import Breaker
from engine.sending.sender import Lane
from engine.sending.testing import RecordingGateway

pytestmark = pytest.mark.anyio


class SharedMemory:
    """What the workers share: claims, and whether the store answers."""

    def __init__(self) -> None:
        self.claims: dict[str, str] = {}
        self.up = True
        self.calls = 0
        self.waits: list[float] = []
        """Answers the next charges give (0.0 once empty)."""


class MemoryCoordinator:
    """A coordinator over :class:`SharedMemory` for one worker (leases are not used by lanes)."""

    name = "memory"

    def __init__(self, shared: SharedMemory, worker: str) -> None:
        self.shared, self.worker = shared, worker
        self.charged: list[int] = []

    def _check(self) -> None:
        self.shared.calls += 1
        if not self.shared.up:
            raise CoordinatorUnavailable("connection refused")

    async def take_lease(self, campaign: str, owner: str, ttl: float) -> LeaseGrant:
        raise NotImplementedError

    async def renew_lease(self, grant: LeaseGrant) -> None:
        raise NotImplementedError

    async def release_lease(self, grant: LeaseGrant) -> bool:
        raise NotImplementedError

    async def holds(self, grant: LeaseGrant) -> bool:
        raise NotImplementedError

    async def charge(self, key: BudgetKey, spec: BudgetSpec, parts: int) -> float:
        self._check()
        spec.check(parts)
        if self.shared.waits:
            return self.shared.waits.pop(0)
        self.charged.append(parts)
        return 0.0

    async def claim(
        self, campaign: str, recipients: Sequence[str], *, tags: Sequence[str] | None = None, adopt: str = ""
    ) -> list[Claim]:
        self._check()
        out = []
        for r in recipients:
            owner = self.shared.claims.setdefault(r, self.worker)
            if owner == adopt:
                self.shared.claims[r] = self.worker
                out.append(Claim.ADOPTED)
            else:
                out.append(Claim.NEW if owner == self.worker else Claim.TAKEN)
        return out

    async def release_claims(self, campaign: str, recipients: Sequence[str]) -> int:
        self._check()
        mine = [r for r in recipients if self.shared.claims.get(r) == self.worker]
        for r in mine:
            del self.shared.claims[r]
        return len(mine)

    async def aclose(self) -> None:
        pass


def _batch(start: int, n: int, parts: int = 1) -> MessageBatch:
    rows = list(range(start, start + n))
    return MessageBatch(
        "cm",
        rows=rows,
        numbers=[f"138{r:08d}" for r in rows],
        texts=["t"] * n,
        parts=[parts] * n,
        id_prefix="g-",
    )


def _lane(
    coordinator: MemoryCoordinator,
    notes: list[str],
    *,
    rate: float | None = None,
    metrics: Metrics = NO_METRICS,
) -> tuple[Lane, RecordingGateway, RunRecorder]:
    gateway = RecordingGateway("gw", max_batch=50)
    recorder = RunRecorder({})
    budgets = {"cm": BudgetSpec(rate=rate, burst=int(rate * 0.1))} if rate else {}
    gate = CoordinatedGate(
        coordinator,
        "c",
        carrier_budgets=budgets,
        gateway_budgets={},
        notify=notes.append,
        pause=0.02,
        metrics=metrics,
        worker=coordinator.worker,
    )
    lane = Lane(
        gateway,
        gateways={"cm": [gateway]},
        limiters={},
        breakers={"gw": Breaker()},
        clock=SystemClock(),
        recorder=recorder,
        in_flight=2,
        gate=gate,
    )
    return lane, gateway, recorder


async def _feed(lane: Lane, batches: list[MessageBatch]) -> None:
    tx, rx = anyio.create_memory_object_stream[MessageBatch](4)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lane.run, rx)
        async with tx:
            for b in batches:
                await tx.send(b)


async def test_two_workers_send_each_recipient_once_and_record_the_others_claimed_elsewhere(
    anyio_backend: object,
) -> None:
    shared = SharedMemory()
    notes: list[str] = []
    metrics = Metrics()
    (a, ga, ra), (b, gb, rb) = (
        _lane(MemoryCoordinator(shared, "A"), notes, metrics=metrics),
        _lane(MemoryCoordinator(shared, "B"), notes, metrics=metrics),
    )
    # Both read the same 400 recipients (interleaved batches), as two workers over one segment do.
    async with anyio.create_task_group() as tg:
        tg.start_soon(_feed, a, [_batch(2 + 50 * i, 50) for i in range(8)])
        tg.start_soon(_feed, b, [_batch(2 + 50 * i, 50) for i in reversed(range(8))])
    sent_a = [r for x in ga.batches for r in x.rows]
    sent_b = [r for x in gb.batches for r in x.rows]
    assert sorted(sent_a + sent_b) == list(range(2, 402)), "every recipient sent once, by one worker"
    for rec, sent in ((ra, sent_a), (rb, sent_b)):
        assert rec.states["sent"] == len(sent)
        assert rec.states["suppressed"] == 400 - len(sent)
        assert rec.reasons["suppressed"] == {"claimed_elsewhere": 400 - len(sent)}
    assert shared.claims == {f"138{r:08d}": "A" if r in set(sent_a) else "B" for r in range(2, 402)}
    counted = {
        (s.labels["worker"], s.labels["answer"]): s.value
        for fam in metrics.registry.collect()
        if fam.name == "pigeon_coordinator_claims"
        for s in fam.samples
        if s.name.endswith("_total")
    }
    assert counted[("A", "new")] == len(sent_a) and counted[("A", "taken")] == 400 - len(sent_a)
    assert counted[("B", "new")] == len(sent_b) and counted[("B", "taken")] == 400 - len(sent_b)
    # One claim call per request, never per message.
    assert shared.calls <= 2 * 8 + 2 * len(ga.batches + gb.batches)


async def test_nothing_goes_while_the_store_is_down_and_everything_after(anyio_backend: object) -> None:
    shared = SharedMemory()
    shared.up = False
    notes: list[str] = []
    lane, gateway, recorder = _lane(MemoryCoordinator(shared, "A"), notes)

    async def later() -> None:
        await anyio.sleep(0.4)
        assert not gateway.batches, "sent without a claim while the store was down"
        shared.up = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(later)
        tg.start_soon(_feed, lane, [_batch(2, 50), _batch(52, 50)])
    assert sorted(r for x in gateway.batches for r in x.rows) == list(range(2, 102))
    assert recorder.states == {"sent": 100}
    assert any("unreachable" in n and "paused" in n for n in notes), notes
    assert any("answers again" in n and "resumed" in n for n in notes), notes
    assert shared.calls > 4, "the lane kept asking while the store was down"


async def test_the_shared_budget_splits_requests_to_its_burst_and_is_waited_for(
    anyio_backend: object,
) -> None:
    shared = SharedMemory()
    shared.waits = [0.05, 0.05]  # the first two charges: "wait", nothing booked
    notes: list[str] = []
    coordinator = MemoryCoordinator(shared, "A")
    lane, gateway, recorder = _lane(coordinator, notes, rate=100)  # burst 10 parts per request
    await _feed(lane, [_batch(2, 50, parts=2)])  # 100 parts
    assert recorder.states == {"sent": 50}
    assert all(x.total_parts() <= 10 for x in gateway.batches)
    assert coordinator.charged == [x.total_parts() for x in gateway.batches], "each request booked once"
    assert sum(coordinator.charged) == 100


@pytest.mark.parametrize("resend", [False, True])
async def test_a_dead_workers_claims_end_unknown_unless_the_gateways_are_idempotent(
    anyio_backend: object, resend: bool
) -> None:
    shared = SharedMemory()
    shared.claims = {f"138{r:08d}": "dead" for r in range(2, 12)}  # it claimed 10, then died
    lane, gateway, recorder = _lane(MemoryCoordinator(shared, "A"), [])
    assert lane.gate is not None
    lane.gate.adopt = "dead"  # type: ignore[attr-defined]
    lane.gate.resend_adopted = resend  # type: ignore[attr-defined]
    await _feed(lane, [_batch(2, 50)])
    sent = sorted(r for x in gateway.batches for r in x.rows)
    if resend:
        assert sent == list(range(2, 52)) and recorder.states == {"sent": 50}
    else:
        assert sent == list(range(12, 52))
        assert recorder.states == {"sent": 40, "unknown": 10}
        assert recorder.reasons["unknown"] == {"claimed_by_dead_worker": 10}
    assert set(shared.claims.values()) == {"A"}
