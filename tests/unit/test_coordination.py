"""The embedded coordinator: the ledger's lease with a fence, per-request budgets, claims; and the hook."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import anyio
import msgspec
import pytest

import pigeon
from engine.coordination.contract import BudgetKey, BudgetSpec, Claim, Coordinator, CoordinatorContext
from engine.coordination.embedded import EmbeddedCoordinator
from engine.coordination.select import open_coordinator
from engine.core.errors import ConfigError
from engine.core.plugin_host import PluginHost
from engine.state.ledger.lease import CampaignBusy
from engine.state.ledger.records import LeaseLost
from engine.state.ledger.store import Ledger
from pigeon.testing import FakeClock

KEY = BudgetKey("gw", "cm", "bulk")


def _embedded(path: Path, clock: FakeClock | None = None) -> EmbeddedCoordinator:
    ctx = CoordinatorContext(store_path=path, **({"clock": clock.monotonic} if clock else {}))
    return EmbeddedCoordinator(ctx)


def test_the_lease_excludes_a_second_owner_and_the_fence_grows(tmp_path: Path) -> None:
    async def main() -> None:
        a, b = _embedded(tmp_path / "s.db"), _embedded(tmp_path / "s.db")
        grant = await a.take_lease("c", "pigeon worker", 30.0)
        with pytest.raises(CampaignBusy, match="pigeon worker"):
            await b.take_lease("c", "pigeon worker", 30.0)
        await a.renew_lease(grant)
        assert await a.holds(grant) and await b.holds(grant)
        assert await a.release_lease(grant)
        assert not await a.holds(grant)
        again = await b.take_lease("c", "pigeon worker", 30.0)
        assert again.fence == grant.fence + 1 and again.token != grant.token
        assert not await a.release_lease(grant)  # an old grant releases nothing
        assert await b.holds(again)
        await a.aclose()
        await b.aclose()

    anyio.run(main)


def test_an_expired_lease_is_taken_over_and_the_old_grant_is_fenced(tmp_path: Path) -> None:
    async def main() -> None:
        a, b = _embedded(tmp_path / "s.db"), _embedded(tmp_path / "s.db")
        old = await a.take_lease("c", "w1", 0.2)
        await anyio.sleep(0.25)  # the lease's real ttl (wall clock, as the ledger's)
        new = await b.take_lease("c", "w2", 30.0)
        assert new.fence > old.fence
        with pytest.raises(LeaseLost):
            await a.renew_lease(old)
        assert not await a.holds(old)
        assert not await a.release_lease(old)
        assert await b.holds(new)  # the old owner's release did not free it

    anyio.run(main)


def test_the_embedded_lease_is_the_ledger_s_so_a_run_and_a_coordinator_exclude_each_other(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        c = _embedded(tmp_path / "s.db")
        grant = await c.take_lease("c", "pigeon worker", 30.0)
        holder = Ledger(tmp_path / "s.db").lease("c")
        assert holder is not None and holder.owner == "pigeon worker" and holder.alive
        await c.release_lease(grant)
        assert Ledger(tmp_path / "s.db").lease("c") is None

    anyio.run(main)


def test_a_budget_books_whole_requests_and_says_how_long_to_wait(tmp_path: Path) -> None:
    clock = FakeClock()

    async def main() -> None:
        c = _embedded(tmp_path / "s.db", clock)
        spec = BudgetSpec(rate=10, burst=4, margin=0.0)
        assert [await c.charge(KEY, spec, 4) for _ in range(2)] == [0.0, 0.0]
        wait = await c.charge(KEY, spec, 4)  # 8 booked: 4 more would make 12 > 10
        assert wait == pytest.approx(1.0)
        assert await c.charge(KEY, spec, 2) == 0.0  # 10 fits
        assert await c.charge(KEY, spec, 1) == pytest.approx(1.0)
        clock.advance(1.0)
        assert await c.charge(KEY, spec, 4) == 0.0
        assert await c.charge(BudgetKey("gw", "cu", "bulk"), spec, 4) == 0.0  # its own budget
        with pytest.raises(ValueError, match="burst"):
            await c.charge(KEY, spec, 5)

    anyio.run(main)


def test_claims_are_new_then_mine_and_can_be_given_back(tmp_path: Path) -> None:
    async def main() -> None:
        c = _embedded(tmp_path / "s.db")
        assert await c.claim("c", ["a", "b"]) == [Claim.NEW, Claim.NEW]
        assert await c.claim("c", ["b", "c"]) == [Claim.MINE, Claim.NEW]
        assert await c.claim("other", ["a"]) == [Claim.NEW]
        assert await c.release_claims("c", ["a", "zz"]) == 1
        assert await c.claim("c", ["a"]) == [Claim.NEW]

    anyio.run(main)


@pytest.mark.parametrize(
    ("rate", "burst"),
    [(10, 10), (10, 0), (0, 1), (float("inf"), 1)],
    ids=["burst=rate", "no-burst", "zero", "inf"],
)
def test_a_budget_spec_refuses_figures_gcra_cannot_hold(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match=r"burst|rate"):
        BudgetSpec(rate=rate, burst=burst)


def test_the_gcra_figures_hold_the_window_bound() -> None:
    spec = BudgetSpec(rate=100, burst=10, window=1.0, margin=0.0)
    # in any window W at most burst + W / interval parts: the rate exactly
    assert spec.burst + spec.window / spec.interval == pytest.approx(spec.rate)
    assert spec.tolerance == pytest.approx(10 / 90)


def test_a_plugin_registers_a_coordinator_through_the_hook(tmp_path: Path) -> None:
    class Opts(msgspec.Struct, forbid_unknown_fields=True):
        url: str

    made: list[tuple[Opts, CoordinatorContext]] = []

    def factory(config: Opts, ctx: CoordinatorContext) -> Coordinator:
        made.append((config, ctx))
        return EmbeddedCoordinator(ctx)

    @pigeon.hookimpl
    def register_coordinators(coordinators: pigeon.CoordinatorRegistry) -> None:
        coordinators.add("mine", factory, Opts, description="test")

    host = PluginHost(
        load_entrypoints=False, plugins=[SimpleNamespace(register_coordinators=register_coordinators)]
    )
    ctx = CoordinatorContext(store_path=tmp_path / "s.db")
    c = open_coordinator(host.coordinators, "mine", {"url": "x://"}, ctx)
    assert isinstance(c, Coordinator)
    assert made == [(Opts(url="x://"), ctx)]
    with pytest.raises(ConfigError, match="coordinator 'mine'"):
        open_coordinator(host.coordinators, "mine", {"nope": 1}, ctx)
    with pytest.raises(ConfigError, match="known: embedded, mine"):
        open_coordinator(host.coordinators, "zk", None, ctx)
    assert isinstance(open_coordinator(host.coordinators, ctx=ctx), EmbeddedCoordinator)


def test_the_built_in_redis_coordinator_is_registered_through_the_entry_point() -> None:
    host = PluginHost()
    registration = host.coordinators.get("redis")
    assert registration.plugin == "store_redis"
    from plugins.store_redis.config import RedisConfig

    assert registration.config_type is RedisConfig
    assert msgspec.convert({"url": "redis://10.0.0.5:6379/2"}, RedisConfig).prefix == "pigeon"


def test_redis_keys_keep_one_hash_tag_per_campaign_and_budget(tmp_path: Path) -> None:
    pytest.importorskip("redis")
    from plugins.store_redis.config import RedisConfig
    from plugins.store_redis.coordinator import RedisCoordinator

    c = RedisCoordinator(RedisConfig(prefix="p"), CoordinatorContext())
    assert c.lease_key("a{b}") == "p:lease:{a%7Bb%7D}"
    assert c.fence_key("a{b}") == "p:fence:{a%7Bb%7D}"
    assert c.claims_key("a{b}") == "p:claims:{a%7Bb%7D}"
    assert c.budget_key(KEY) == "p:budget:{gw:cm:bulk}"


def test_pigeon_plugins_lists_the_coordinators(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from engine.cli.main import main

    assert main(["plugins", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["coordinators"]
    assert listed["redis"]["plugin"] == "store_redis"


def test_the_embedded_coordinator_keeps_the_contract(tmp_path: Path) -> None:
    from pigeon.testing import check_coordinator

    anyio.run(lambda: check_coordinator(lambda: _embedded(tmp_path / "s.db"), shared=False))


class _NoExclusion(EmbeddedCoordinator):
    """Broken on purpose: a second take wins."""

    async def take_lease(self, campaign: str, owner: str, ttl: float) -> pigeon.LeaseGrant:
        self.db.execute("DELETE FROM ledger_leases WHERE campaign = ?", (campaign,))
        return await super().take_lease(campaign, owner, ttl)


class _NoBudget(EmbeddedCoordinator):
    """Broken on purpose: books everything."""

    async def charge(self, key: BudgetKey, spec: BudgetSpec, parts: int) -> float:
        return 0.0


@pytest.mark.parametrize(
    ("broken", "says"),
    [(_NoExclusion, "a second worker took a held lease"), (_NoBudget, "all fit 1000 parts/s")],
)
def test_the_contract_check_fails_a_broken_coordinator(
    tmp_path: Path, broken: type[EmbeddedCoordinator], says: str
) -> None:
    from pigeon.testing import check_coordinator

    make = lambda: broken(CoordinatorContext(store_path=tmp_path / "s.db"))  # noqa: E731
    with pytest.raises(AssertionError, match=says):
        anyio.run(lambda: check_coordinator(make, shared=False))
