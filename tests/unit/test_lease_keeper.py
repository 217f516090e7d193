"""LeaseKeeper: renews a coordinator lease past its ttl, notices a takeover, and gives up after a
whole ttl without a confirmed renewal."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from engine.coordination.contract import CoordinatorContext, CoordinatorUnavailable, LeaseGrant
from engine.coordination.embedded import EmbeddedCoordinator
from engine.coordination.keeper import LeaseKeeper

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_a_kept_lease_outlives_its_ttl(tmp_path: Path) -> None:
    c = EmbeddedCoordinator(CoordinatorContext(store_path=tmp_path / "s.db"))
    grant = await c.take_lease("c", "w", 0.3)
    keeper = LeaseKeeper(c, grant)
    async with anyio.create_task_group() as tg:
        tg.start_soon(keeper.run)
        await anyio.sleep(0.75)  # 2.5 ttls
        assert await c.holds(grant)
        tg.cancel_scope.cancel()
    assert keeper.renewals >= 2 and not keeper.lost


async def test_a_takeover_is_noticed_at_the_next_renewal(tmp_path: Path) -> None:
    c = EmbeddedCoordinator(CoordinatorContext(store_path=tmp_path / "s.db"))
    grant = await c.take_lease("c", "w", 0.3)
    told: list[str] = []
    keeper = LeaseKeeper(c, grant, on_lost=told.append)
    await c.release_lease(grant)
    other = await c.take_lease("c", "w2", 30.0)
    with anyio.fail_after(2):
        await keeper.run()  # returns once lost
    assert keeper.lost_event.is_set() and told == [keeper.lost] and "lost" in keeper.lost
    assert await c.holds(other)


class _Unreachable:
    """A coordinator whose store stopped answering after the take."""

    name = "down"

    async def renew_lease(self, grant: LeaseGrant) -> None:
        raise CoordinatorUnavailable("connection refused")


async def test_a_store_that_stops_answering_loses_the_lease_after_one_ttl() -> None:
    grant = LeaseGrant(campaign="c", owner="w", token="t", fence=1, ttl=0.3)
    keeper = LeaseKeeper(_Unreachable(), grant)  # type: ignore[arg-type]
    started = anyio.current_time()
    with anyio.fail_after(2):
        await keeper.run()
    assert "no renewal confirmed for 0.3 s" in keeper.lost
    assert anyio.current_time() - started >= 0.3
