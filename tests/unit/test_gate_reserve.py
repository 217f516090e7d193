"""The transactional reserve as a bucket of its own on the shared budgets (``[coordinator] reserve``):
marketing campaigns book only the marketing part; transactional ones book the reserve first, then
borrow the marketing part — so the two never book more than the carrier's rate together."""

from __future__ import annotations

from collections import Counter

import pytest

from engine.coordination.contract import BudgetKey, BudgetSpec
from engine.coordination.gate import CoordinatedGate


class _Buckets:
    """Budgets as counters: a key books until its spec's rate is used up (no time passes)."""

    name = "buckets"

    def __init__(self) -> None:
        self.used: Counter[BudgetKey] = Counter()

    async def charge(self, key: BudgetKey, spec: BudgetSpec, parts: int) -> float:
        spec.check(parts)
        if self.used[key] + parts > spec.rate:
            return 1.0
        self.used[key] += parts
        return 0.0


def _gate(buckets: _Buckets, priority: str) -> CoordinatedGate:
    return CoordinatedGate(
        buckets,  # type: ignore[arg-type]
        "c",
        carrier_budgets={"cm": BudgetSpec(rate=80, burst=8)},
        gateway_budgets={},
        carrier_reserves={"cm": BudgetSpec(rate=20, burst=4)},
        priority=priority,
    )


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_marketing_never_books_the_reserve_and_transactional_borrows_the_rest(
    anyio_backend: str,
) -> None:
    buckets = _Buckets()
    marketing, transactional = _gate(buckets, "marketing"), _gate(buckets, "transactional")
    assert marketing.burst("gw", "cm") == 8 and transactional.burst("gw", "cm") == 8
    booked = 0
    while await marketing.charge("gw", "cm", 8) == 0:
        booked += 8
    assert booked == 80, "marketing took its part and nothing more"
    assert await marketing.charge("gw", "cm", 4) > 0, "the reserve is not marketing's"
    reserve = BudgetKey("*", "cm", "transactional")
    for _ in range(5):
        assert await transactional.charge("gw", "cm", 4) == 0
    assert buckets.used[reserve] == 20
    assert await transactional.charge("gw", "cm", 4) > 0, "reserve used up, marketing part full"
    assert sum(buckets.used.values()) == 100, "together: the carrier's rate, never more"
    fresh = _Buckets()
    t2 = _gate(fresh, "transactional")
    for _ in range(5):
        assert await t2.charge("gw", "cm", 4) == 0
    assert await t2.charge("gw", "cm", 8) == 0, "over the reserve's burst / used up: borrows"
    assert fresh.used == {reserve: 20, BudgetKey("*", "cm", "marketing"): 8}
