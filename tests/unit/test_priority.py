"""The priority lane: a reserved share of each carrier's rate, and its own in-flight window."""

from __future__ import annotations

import math
from collections.abc import Sequence

import anyio
import pytest

from engine.core.clock import FakeClock
from engine.core.config import CarrierConfig, EngineConfig, GatewayConfig
from engine.core.messages import ACCEPTED, MessageBatch, SubmitResult
from engine.observability.report import RunRecorder
from engine.sending.priority import BorrowingLimiter, PriorityLane, split_budgets
from engine.sending.ratelimit import SlidingWindowLimiter
from engine.sending.retry import Breaker
from engine.sending.sender import Lane, LaneItem
from engine.sending.testing import sample_batch
from tests.unit.test_ratelimit import busiest_window


def _config(rate: int = 100, share: float = 0.2) -> EngineConfig:
    return EngineConfig(
        carriers={"cm": CarrierConfig(rate_per_second=rate, transactional_share=share)},
        gateways={"g": GatewayConfig(plugin="http", carriers=("cm",), rate_per_second=rate)},
    )


def _flood(limiter: SlidingWindowLimiter, now: float, requests: int, parts: int) -> None:
    """A blast's requests in flight, charged to ``limiter`` (each let go as soon as allowed)."""
    for _ in range(requests):
        if limiter.earliest(now, parts) <= now:
            limiter.take(now, parts)


def test_a_blast_that_fills_its_part_does_not_delay_a_transactional_message() -> None:
    clock = FakeClock()
    budgets = split_budgets(_config(), {"g": ("cm",)})
    marketing, urgent = budgets.marketing["cm"], budgets.transactional["cm"]
    assert (marketing.rate, urgent.rate) == (pytest.approx(80), pytest.approx(20))
    _flood(marketing, clock.monotonic(), 8, 40)
    assert marketing.earliest(clock.monotonic(), 40) == math.inf  # the blast has all of its part
    assert urgent.earliest(clock.monotonic(), 1) == clock.monotonic()  # the reserve is free

    # Baseline, the same traffic on one shared limiter: the transactional message waits its turn.
    shared = SlidingWindowLimiter(100)
    _flood(shared, clock.monotonic(), 8, 40)
    _flood(shared, clock.monotonic(), 1, 20)
    assert shared.earliest(clock.monotonic(), 1) == math.inf


def test_the_two_parts_never_exceed_the_carrier_rate_in_any_second() -> None:
    budgets = split_budgets(_config(rate=50, share=0.2), {"g": ("cm",)})
    marketing, urgent = budgets.marketing["cm"], budgets.transactional["cm"]
    # A blast of 5-part requests and 1-part transactional ones, with arrival and answer delays;
    # both parts checked together against the carrier's rate at the receiver.
    arrivals: list[tuple[float, int]] = []
    in_flight: list[tuple[float, SlidingWindowLimiter, int]] = []
    now = 0.0
    for step in range(400):
        for done in [f for f in in_flight if f[0] <= now]:
            done[1].done(done[2], now)
            in_flight.remove(done)
        for lim, parts in ((marketing, 5), *(((urgent, 1),) if step % 3 == 0 else ())):
            if lim.earliest(now, parts) <= now:
                ticket = lim.take(now, parts)
                arrivals.append((now + 0.02 * (step % 5), parts))  # arrives up to 80 ms later
                in_flight.append((now + 0.1, lim, ticket))  # answered within 100 ms
        now += 0.05
    assert busiest_window(arrivals) <= 50
    assert sum(p for _, p in arrivals) > 0.9 * 50 * 20 * 0.8  # and the blast still used its part


def test_transactional_traffic_over_its_share_borrows_the_marketing_part() -> None:
    marketing = SlidingWindowLimiter(80)
    urgent = BorrowingLimiter(20, marketing)
    now = 0.0
    assert urgent.earliest(now, 20) == now
    urgent.take(now, 20)  # its own share
    assert urgent.earliest(now, 10) == now
    borrowed = urgent.take(now, 10)  # borrowed: marketing is idle
    assert marketing.used(now) == 10
    assert urgent.earliest(now, 75) == math.inf  # neither part has room until an answer
    urgent.cancel(borrowed)  # given back where it was taken
    assert marketing.used(now) == 0


def test_a_zero_share_keeps_one_budget() -> None:
    budgets = split_budgets(_config(share=0.0), {"g": ("cm",)})
    assert budgets.marketing["cm"] is budgets.transactional["cm"]
    assert budgets.marketing["cm"].rate == 100


class _SlowGateway:
    """Answers each request after ``release`` is set for it, recording the order requests arrive in."""

    idempotent = True

    def __init__(self) -> None:
        self.name = "g"
        self.max_batch = 100
        self.order: list[str] = []
        self.arrived = anyio.Event()
        self.release: dict[str, anyio.Event] = {}

    async def send(self, batch: MessageBatch) -> Sequence[SubmitResult]:
        first = batch.ids[0]
        self.order.append(first)
        self.release[first] = anyio.Event()
        self.arrived.set()
        await self.release[first].wait()
        return [ACCEPTED] * len(batch)

    async def aclose(self) -> None:
        pass


def _lane(gw: _SlowGateway, in_flight: int, kind: type[Lane] = Lane) -> Lane:
    clock = FakeClock()
    return kind(
        gw,  # type: ignore[arg-type]
        gateways={"cm": [gw]},  # type: ignore[list-item]
        limiters={},
        breakers={"g": Breaker(3, 1.0)},
        clock=clock,
        recorder=RunRecorder({}),
        in_flight=in_flight,
    )


async def _wait_for(gw: _SlowGateway, n: int) -> None:
    while len(gw.order) < n:
        gw.arrived = anyio.Event()
        await gw.arrived.wait()


@pytest.mark.anyio
async def test_a_transactional_batch_overtakes_queued_marketing_batches(anyio_backend: object) -> None:
    gw = _SlowGateway()
    blast, urgent = _lane(gw, in_flight=1), _lane(gw, in_flight=2)
    m_tx, m_rx = anyio.create_memory_object_stream[LaneItem](16)
    t_tx, t_rx = anyio.create_memory_object_stream[LaneItem](16)
    async with anyio.create_task_group() as tg:
        tg.start_soon(blast.run, m_rx)
        tg.start_soon(urgent.run, t_rx)
        for i in range(5):
            await m_tx.send(sample_batch(10, prefix=f"blast{i}-"))
        await _wait_for(gw, 1)  # the blast's first request is on the wire; four more are queued
        await t_tx.send(sample_batch(1, prefix="order-"))
        await _wait_for(gw, 2)
        assert gw.order == ["blast0-1", "order-1"]  # not behind the queued blast batches
        gw.release["order-1"].set()
        for i in range(5):
            await _wait_for(gw, 2 + i)
            gw.release[f"blast{i}-1"].set()
        m_tx.close()
        t_tx.close()
    assert gw.order == ["blast0-1", "order-1", *(f"blast{i}-1" for i in range(1, 5))]


@pytest.mark.anyio
async def test_the_priority_lane_sends_what_queued_meanwhile_in_one_request(anyio_backend: object) -> None:
    gw = _SlowGateway()
    lane = _lane(gw, in_flight=1, kind=PriorityLane)
    tx, rx = anyio.create_memory_object_stream[LaneItem](16)
    sizes: list[int] = []
    real_send = gw.send

    async def send(batch: MessageBatch) -> Sequence[SubmitResult]:
        sizes.append(len(batch))
        return await real_send(batch)

    gw.send = send  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        tg.start_soon(lane.run, rx)
        await tx.send(sample_batch(1, prefix="a-"))
        await _wait_for(gw, 1)
        for i in range(5):  # five API calls while the first request is on the wire
            await tx.send(sample_batch(1, prefix=f"b{i}-"))
        gw.release["a-1"].set()
        await _wait_for(gw, 2)
        gw.release["b0-1"].set()
        tx.close()
    assert sizes == [1, 5]  # not five more requests, each waiting for the window
