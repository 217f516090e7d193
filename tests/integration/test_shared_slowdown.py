"""A receiver's "too fast" heard by one worker slows every worker: the shared budget's slow-down in a real Redis.

The GCRA's own figures show the cut (a second request's wait doubles at half the rate, for a
worker that was never throttled), the hold (answers to requests sent before a cut count as one),
the floor and the climb back; then three ``pigeon send --coordinator`` processes against a
simulator that accepts less than the configured rate, with the shared slow-down on and off in the
same test: the receiver's "too fast" answers are counted by the simulator.
asyncio only: redis-py's client is asyncio-only (docs/scale-out.md says how trio users run it).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("redis")

from engine.coordination.contract import BudgetKey, BudgetSpec, CoordinatorContext, SlowDown
from engine.coordination.gate import CoordinatedGate
from loadtests.simulator import SimConfig, SimulatorThread
from plugins.store_redis.config import RedisConfig
from plugins.store_redis.coordinator import RedisCoordinator
from tests.integration.crash_harness import files, segment, start
from tests.integration.redis_prefix import WORKERS_URL, scoped_prefix


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: redis-py's client is asyncio-only."""
    return "asyncio"


SPEC = BudgetSpec(rate=1000, burst=100, window=1.0, margin=0.0)


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix on the test Redis; skipped (failed under PIGEON_REQUIRE_REDIS) when none answers."""
    yield from scoped_prefix(WORKERS_URL)


@pytest.fixture
async def make(prefix: str) -> AsyncIterator[Callable[[], RedisCoordinator]]:
    made: list[RedisCoordinator] = []

    def factory() -> RedisCoordinator:
        c = RedisCoordinator(RedisConfig(url=WORKERS_URL, prefix=prefix), CoordinatorContext())
        made.append(c)
        return c

    yield factory
    for c in made:
        await c.aclose()


async def _second_wait(c: RedisCoordinator, key: BudgetKey) -> float:
    """The wait a second full-burst request is told on a drained budget (the first books)."""
    assert await c.charge(key, SPEC, SPEC.burst) == 0.0
    return await c.charge(key, SPEC, SPEC.burst)


@pytest.mark.anyio
async def test_one_workers_cut_halves_the_rate_another_worker_charges(
    make: Callable[[], RedisCoordinator],
) -> None:
    a, b = make(), make()
    plain, slowed = BudgetKey("sim", "*", "all"), BudgetKey("sim2", "*", "all")
    full = await _second_wait(b, plain)
    assert full == pytest.approx(SPEC.burst * SPEC.interval, rel=0.05)
    share, cut = await a.slow_down(slowed, SPEC, SlowDown(climb=0.001))
    assert (share, cut) == (pytest.approx(0.5, abs=1e-3), True)
    half = await _second_wait(b, slowed)  # b was never throttled: it charges the cut budget
    assert half == pytest.approx(2 * full, rel=0.05), "half the rate: a request's wait doubles"
    # the budget a cut did not touch keeps its rate
    await b.client.delete(b.budget_key(plain))
    assert await _second_wait(b, plain) == pytest.approx(full, rel=0.05)


@pytest.mark.anyio
async def test_answers_within_the_hold_count_as_one_cut_and_the_floor_holds(
    make: Callable[[], RedisCoordinator],
) -> None:
    a, b = make(), make()
    key = BudgetKey("sim", "*", "all")
    spec = BudgetSpec(rate=1000, burst=100, window=0.2)
    slow = SlowDown(factor=0.5, floor=0.2, climb=0.001, hold=0.2)
    assert (await a.slow_down(key, spec, slow))[1] is True
    held = [await c.slow_down(key, spec, slow) for c in (a, b, a, b)]  # the same burst's answers
    assert all(not cut for _, cut in held) and all(s == pytest.approx(0.5, abs=1e-3) for s, _ in held)
    shares = []
    for _ in range(3):
        await asyncio.sleep(0.25)
        share, cut = await b.slow_down(key, spec, slow)
        assert cut
        shares.append(share)
    assert shares == [pytest.approx(0.25, abs=0.01), pytest.approx(0.2), pytest.approx(0.2)], (
        "never below the floor"
    )


@pytest.mark.anyio
async def test_a_cut_budget_climbs_back_and_its_key_expires(make: Callable[[], RedisCoordinator]) -> None:
    a = make()
    key = BudgetKey("sim", "*", "all")
    slow = SlowDown(factor=0.5, climb=1.0, hold=0.0)  # all the rate back within a second of a cut
    spec = BudgetSpec(rate=1000, burst=100, window=0.1)
    assert await a.slow_down(key, spec, slow) == (pytest.approx(0.5, abs=1e-3), True)
    pttl = await a.client.pttl(a.slow_key(key))
    assert 0 < pttl <= 1500, "the key lives until the share is back at 1 (0.5 s) plus a second"
    await asyncio.sleep(0.3)
    share, cut = await a.slow_down(key, spec, slow)  # 0.5 + 0.3 climbed = 0.8, then halved
    assert cut and share == pytest.approx(0.4, abs=0.04)
    await a.client.delete(a.slow_key(key))
    full = await _second_wait(a, BudgetKey("sim3", "*", "all"))
    assert full == pytest.approx(SPEC.burst * SPEC.interval, rel=0.05), "no slow-down key: the full rate"


@pytest.mark.anyio
async def test_the_gate_cuts_the_answering_gateways_budget_or_else_the_carriers(
    make: Callable[[], RedisCoordinator],
) -> None:
    a = make()
    gate = CoordinatedGate(a, "camp", carrier_budgets={"cm": SPEC}, gateway_budgets={"fast": SPEC})
    await gate.throttled("fast", "cm")  # the gateway has a budget: the provider account is cut
    assert await a.client.exists(a.slow_key(BudgetKey("fast", "*", "all")))
    assert not await a.client.exists(a.slow_key(BudgetKey("*", "cm", "all")))
    await gate.throttled("other", "cm")  # no budget of its own: the carrier's is what it charges
    assert await a.client.exists(a.slow_key(BudgetKey("*", "cm", "all")))
    assert gate.cuts == 2
    off = CoordinatedGate(a, "camp", carrier_budgets={"cu": SPEC}, gateway_budgets={}, slow=None)
    await off.throttled("other", "cu")
    assert not await a.client.exists(a.slow_key(BudgetKey("*", "cu", "all"))), "slow_down = false"


RATE = 2000
"""China Mobile's configured budget, parts per second, for all workers together."""
ACCEPTS = 500
"""What the simulator's China Mobile accepts per second: the rest is answered "too fast"."""


def _send(tmp: Path, prefix: str, port: int, *, slow_down: bool) -> tuple[list[str], int]:
    """Three ``pigeon send --coordinator`` workers over one campaign; their stderr and the cuts they said."""
    rows = 1500
    segment(tmp / "seg.csv", rows)
    coordinator = f"""[coordinator]
plugin = "redis"
slow_down = {"true" if slow_down else "false"}
[coordinator.options]
url = "{WORKERS_URL}"
prefix = "{prefix}"
"""
    dirs = []
    for i in range(3):
        d = tmp / f"w{i}"
        d.mkdir()
        (d / "seg.csv").write_bytes((tmp / "seg.csv").read_bytes())
        files(d, port, store=d / "pigeon.db", max_batch=50, cm=f"rate_per_second = {RATE}", extra=coordinator)
        text = (d / "engine.toml").read_text().replace("max_attempts = 3", "max_attempts = 30")
        (d / "engine.toml").write_text(text)
        dirs.append(d)
    procs = [start(["send", str(d / "campaign.toml")], d) for d in dirs]
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        errs.append(err)
    cuts = sum(err.count("slowed to") for err in errs)
    return errs, cuts


def test_a_throttling_receiver_sees_fewer_too_fast_answers_when_the_workers_slow_down_together(
    tmp_path: Path, prefix: str
) -> None:
    throttled: dict[bool, int] = {}
    cuts: dict[bool, int] = {}
    for slow_down in (False, True):
        with SimulatorThread(SimConfig(limits={"cm": ACCEPTS})) as sim:
            d = tmp_path / f"slow-{slow_down}"
            d.mkdir()
            _, cuts[slow_down] = _send(d, f"{prefix}:{slow_down}", sim.port, slow_down=slow_down)
            log: list[Any] = list(sim.log)
            throttled[slow_down] = sim.stats["throttled"]
        received = Counter(to for _, _, to, _, _ in log)
        assert received and max(received.values()) == 1, "nobody twice"
    assert cuts[False] == 0 and cuts[True] >= 1
    # Off, the workers keep charging 2,000 parts/s against a receiver that takes 500: most answers
    # are "too fast". On, one cut halves the rate for all three at once.
    assert throttled[True] * 2 < throttled[False], throttled
