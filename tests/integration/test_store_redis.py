"""The ``redis`` coordinator against the real Redis on loopback: lease and fence, claims raced by 4
OS processes, one GCRA budget shared by 4 processes measured at a receiver.

asyncio backend only: redis-py's client is asyncio-only (docs/scale-out.md says how trio users run
it). ``PIGEON_TEST_REDIS_URL`` picks the server (default DB 11 on 127.0.0.1:6379); every test uses a
key prefix of its own and deletes its keys. .ci/run starts a Redis where none answers and sets
``PIGEON_REQUIRE_REDIS``: there a missing server fails these tests instead of skipping them.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import secrets
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

pytest.importorskip("redis")

import redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from engine.coordination.contract import (
    BudgetKey,
    BudgetSpec,
    CapCheck,
    Claim,
    CoordinatorContext,
    CoordinatorUnavailable,
)
from engine.core.messages import number_key
from engine.state.caps import CapWindow
from engine.state.ledger.lease import CampaignBusy
from engine.state.ledger.records import LeaseLost
from plugins.store_redis.config import RedisConfig
from plugins.store_redis.coordinator import RedisCoordinator
from plugins.store_redis.scripts import OPTOUT_BUCKETS
from tests.integration import redis_workers
from tests.integration.redis_cluster import LocalCluster, free_port_pair, local_cluster
from tests.integration.redis_prefix import own_redis

URL = os.environ.get("PIGEON_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")

pytestmark = pytest.mark.parametrize("anyio_backend", ["asyncio"])


@pytest.fixture(scope="module")
def redis_url() -> str:
    """The test Redis; skipped (failed under PIGEON_REQUIRE_REDIS) when none answers."""
    try:
        redis.Redis.from_url(URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        hint = f"no Redis answers at {URL} ({exc}): apt-get install redis-server, or run .ci/run"
        if os.environ.get("PIGEON_REQUIRE_REDIS"):
            pytest.fail(hint)
        pytest.skip(hint)
    return URL


@pytest.fixture
def prefix(redis_url: str) -> Any:
    """A key prefix for one test; its keys are deleted after it."""
    p = f"pigeon-test-{secrets.token_hex(4)}"
    yield p
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{p}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
async def make(redis_url: str, prefix: str) -> AsyncIterator[Callable[..., RedisCoordinator]]:
    made: list[RedisCoordinator] = []

    def factory(**options: Any) -> RedisCoordinator:
        c = RedisCoordinator(RedisConfig(url=redis_url, prefix=prefix, **options), CoordinatorContext())
        made.append(c)
        return c

    yield factory
    for c in made:
        await c.aclose()


@pytest.mark.anyio
async def test_the_redis_coordinator_keeps_the_contract(maker: Callable[..., RedisCoordinator]) -> None:
    from pigeon.testing import check_coordinator

    await check_coordinator(maker)


@pytest.mark.anyio
async def test_the_lease_excludes_a_second_owner(make: Callable[..., RedisCoordinator]) -> None:
    a, b = make(), make()
    grant = await a.take_lease("spring{sale}", "pigeon worker", 30.0)
    with pytest.raises(CampaignBusy, match=rf"pigeon worker \(pid {os.getpid()} on host") as busy:
        await b.take_lease("spring{sale}", "pigeon worker", 30.0)
    assert "passes to another worker 30 s after its holder's last renewal" in str(busy.value)
    assert busy.value.holder.owner == "pigeon worker" and busy.value.holder.ttl == 30.0
    await a.renew_lease(grant)
    assert await b.holds(grant)
    assert await a.release_lease(grant)
    again = await b.take_lease("spring{sale}", "pigeon worker", 30.0)
    assert again.fence == grant.fence + 1
    assert not await a.release_lease(grant)  # an old grant releases nothing
    assert await a.holds(again)


@pytest.mark.anyio
async def test_an_expired_lease_is_taken_over_and_the_old_owner_is_fenced(
    make: Callable[..., RedisCoordinator],
) -> None:
    a, b = make(), make()
    old = await a.take_lease("c", "w1", 0.2)
    time.sleep(0.3)  # no renewal: Redis expires the lease on its own clock  # noqa: ASYNC251
    new = await b.take_lease("c", "w2", 30.0)
    assert new.fence == old.fence + 1
    with pytest.raises(LeaseLost):
        await a.renew_lease(old)
    assert not await a.holds(old)
    assert not await a.release_lease(old)
    assert await b.holds(new)


@pytest.mark.anyio
async def test_a_kept_redis_lease_outlives_its_ttl_and_a_takeover_is_noticed(
    make: Callable[..., RedisCoordinator],
) -> None:
    import anyio

    from engine.coordination.keeper import LeaseKeeper

    a, b = make(), make()
    grant = await a.take_lease("c", "w1", 0.3)
    keeper = LeaseKeeper(a, grant)
    async with anyio.create_task_group() as tg:
        tg.start_soon(keeper.run)
        await anyio.sleep(0.75)
        assert await b.holds(grant)  # 2.5 ttls later, renewed
        await a.client.delete(a.lease_key("c"))  # as if it expired: another takes it
        other = await b.take_lease("c", "w2", 30.0)
        with anyio.fail_after(1):
            await keeper.lost_event.wait()
    assert other.fence == grant.fence + 1 and "lost" in keeper.lost


@pytest.mark.anyio
async def test_claims_are_per_worker_and_given_back_only_by_their_owner(
    make: Callable[..., RedisCoordinator],
) -> None:
    a, b = make(), make()
    assert await a.claim("c", ["8613800000001", "8613800000002"]) == [Claim.NEW, Claim.NEW]
    assert await b.claim("c", ["8613800000002", "8613800000003"]) == [Claim.TAKEN, Claim.NEW]
    assert await a.claim("c", ["8613800000001"]) == [Claim.MINE]
    assert await b.release_claims("c", ["8613800000001", "8613800000003"]) == 1  # only its own
    assert await a.claim("c", ["8613800000003"]) == [Claim.NEW]
    assert await b.claim("other", ["8613800000001"]) == [Claim.NEW]  # per campaign
    ttl = await a.client.pttl(a.claims_key("c"))
    assert 0 < ttl <= 14 * 86400 * 1000


@pytest.mark.anyio
async def test_an_unreachable_redis_is_coordinator_unavailable_and_books_nothing() -> None:
    c = RedisCoordinator(RedisConfig(url="redis://127.0.0.1:1/0", timeout=0.5), CoordinatorContext())
    with pytest.raises(CoordinatorUnavailable, match="could not claim recipients"):
        await c.claim("c", ["8613800000001"])
    with pytest.raises(CoordinatorUnavailable, match="could not charge a budget"):
        await c.charge(BudgetKey("g", "cm", "bulk"), BudgetSpec(rate=10, burst=1), 1)
    await c.aclose()


def _spawn(target: Callable[..., None], argsets: list[tuple[Any, ...]]) -> list[Any]:
    """Start one process per args, let them go together, return what each put."""
    ctx = multiprocessing.get_context("spawn")
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, ready, go, out)) for a in argsets]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    go.set()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return results


def test_four_processes_racing_over_overlapping_recipients_claim_each_exactly_once(
    anyio_backend: str, redis_url: str, prefix: str
) -> None:
    universe = [f"86138{n:08d}" for n in range(20_000)]
    rng = random.Random(17)
    asked = []
    for _ in range(4):
        mine = rng.sample(universe, 12_000)  # each recipient is asked for by 2.4 workers on average
        asked.append(mine)
    results = _spawn(redis_workers.claim_worker, [(redis_url, prefix, "blast", mine, 200) for mine in asked])
    wanted = set().union(*map(set, asked))
    won = [r for _, new, _, _ in results for r in new]
    assert len(won) == len(set(won)), "a recipient was claimed by two workers"
    assert set(won) == wanted, "a recipient asked for was claimed by no worker"
    assert sum(t for *_, t, _ in results) == sum(map(len, asked)) - len(wanted)  # every other ask: TAKEN
    assert all(m == 0 for *_, m in results)
    owners = redis.Redis.from_url(redis_url).hgetall(f"{prefix}:claims:{{blast}}")
    by_worker = {r: w for w, new, _, _ in results for r in new}
    assert {k.decode(): v.decode() for k, v in owners.items()} == by_worker


def _receiver() -> tuple[socket.socket, list[tuple[float, int]], threading.Thread]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    log: list[tuple[float, int]] = []

    def run() -> None:
        while True:
            data = sock.recv(64)
            if data == b"stop":
                return
            log.append((time.monotonic(), int(data)))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return sock, log, thread


def _busiest_window(log: list[tuple[float, int]], window: float) -> int:
    """The most parts that arrived in any ``window`` seconds (every window starting at an arrival)."""
    best = total = 0
    j = 0
    for i in range(len(log)):
        while j < len(log) and log[j][0] < log[i][0] + window:
            total += log[j][1]
            j += 1
        best = max(best, total)
        total -= log[i][1]
    return best


def test_one_budget_shared_by_four_processes_holds_the_rate_in_every_second_at_the_receiver(
    anyio_backend: str, redis_url: str, prefix: str
) -> None:
    rate, burst, margin, seconds = 200.0, 8, 0.05, 3.0
    sock, log, thread = _receiver()
    port = sock.getsockname()[1]
    results = _spawn(
        redis_workers.gcra_worker,
        [(redis_url, prefix, port, rate, burst, margin, seconds, seed) for seed in range(4)],
    )
    time.sleep(0.2)  # the last datagrams
    sock.sendto(b"stop", ("127.0.0.1", port))
    thread.join(5)
    sock.close()
    parts = sum(p for _, p, _ in results)
    assert sum(n for _, n in log) == parts, "datagrams were lost: the receiver's log is incomplete"
    assert all(sent > 0 for sent, _, _ in results), "a worker never got budget"
    busiest = _busiest_window(log, 1.0)
    assert busiest <= rate, f"{busiest} parts arrived within one second (budget {rate:g}/s)"
    span = log[-1][0] - log[0][0]
    steady = (rate - burst) / (1 + margin)
    assert parts >= 0.7 * steady * span, f"{parts} parts in {span:.2f} s: the budget starves its users"
    print(
        f"\n4 processes, {seconds:g} s: {parts} parts ({parts / span:.1f}/s, steady {steady:.1f}/s); "
        f"busiest 1 s window {busiest} of {rate:g}; waits {sum(w for *_, w in results)}"
    )


@pytest.fixture(scope="module")
def cluster_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 3-master Redis Cluster of our own on loopback (no replicas, no persistence)."""
    with local_cluster(tmp_path_factory.mktemp("cluster")) as nodes:
        yield nodes


@pytest.fixture(scope="module")
def cluster(cluster_nodes: LocalCluster) -> str:
    """The URL of one node of :func:`cluster_nodes`."""
    return cluster_nodes.url


@pytest.fixture
async def on_cluster(cluster: str, prefix: str) -> AsyncIterator[Callable[..., RedisCoordinator]]:
    """Coordinators (two hosts, if called twice) on the test's Cluster, with a key prefix of their own."""
    made: list[RedisCoordinator] = []

    def factory(**options: Any) -> RedisCoordinator:
        c = RedisCoordinator(
            RedisConfig(url=cluster, cluster=True, prefix=prefix, **options), CoordinatorContext()
        )
        made.append(c)
        return c

    yield factory
    for c in made:
        await c.aclose()


@pytest.fixture(params=["standalone", "cluster"])
def maker(request: pytest.FixtureRequest) -> Callable[..., RedisCoordinator]:
    """Coordinators on the test Redis (caps in the claim script), then on the test's Cluster (caps
    in three steps there: reserve on the kind's slots, claim, give back)."""
    made: Callable[..., RedisCoordinator] = request.getfixturevalue(
        "make" if request.param == "standalone" else "on_cluster"
    )
    return made


@pytest.mark.anyio
async def test_on_a_cluster_each_campaign_s_keys_share_one_slot_and_every_script_runs(cluster: str) -> None:
    make = lambda: RedisCoordinator(RedisConfig(url=cluster, cluster=True), CoordinatorContext())  # noqa: E731
    a, b = make(), make()
    try:
        slots = set()
        for campaign in ("spring", "autumn", "winter{x}", "vip"):
            grant = await a.take_lease(campaign, "pigeon worker", 30.0)
            with pytest.raises(CampaignBusy):
                await b.take_lease(campaign, "pigeon worker", 30.0)
            assert await b.holds(grant)
            assert await a.claim(campaign, ["8613800000001", "8613800000002"]) == [Claim.NEW, Claim.NEW]
            assert await b.claim(campaign, ["8613800000002", "8613800000003"]) == [Claim.TAKEN, Claim.NEW]
            assert await a.release_lease(grant)
            keys = [a.lease_key(campaign), a.fence_key(campaign), a.claims_key(campaign)]
            one = {await a.client.cluster_keyslot(k) for k in keys}
            assert len(one) == 1, keys
            slots |= one
        assert len(slots) == 4  # the campaigns spread over slots
        assert isinstance(a.client, RedisCluster)
        nodes = {
            a.client.get_node_from_key(a.claims_key(c)).port for c in ("spring", "autumn", "winter{x}", "vip")
        }
        assert len(nodes) > 1  # and over more than one of the three masters
        spec = BudgetSpec(rate=100, burst=10, margin=0.0)
        key = BudgetKey("gw", "cm", "bulk")
        assert [await a.charge(key, spec, 5), await b.charge(key, spec, 5)] == [0.0, 0.0]
        assert await a.charge(key, spec, 5) > 0  # one budget, whichever client asks
        # Shared caps: the kind's counters are on other slots than the claims; counted all the same.
        check = CapCheck("marketing", (CapWindow(1, "calendar_day"),), time.time())
        assert await a.claim("caps", ["8613800000001"], caps=check) == [Claim.NEW]
        assert await b.claim("caps2", ["8613800000001"], caps=check) == [Claim.CAPPED]
    finally:
        await a.aclose()
        await b.aclose()


@pytest.mark.anyio
async def test_a_killed_and_restarted_redis_with_aof_keeps_claims_fences_and_leases(
    tmp_path: Path, redis_url: str
) -> None:
    server = shutil.which("redis-server")
    assert server is not None  # redis_url answered: the server is installed here
    port = free_port_pair()
    proc = own_redis(server, port, tmp_path, fsync="everysec")
    config = RedisConfig(url=f"redis://127.0.0.1:{port}/0", timeout=0.5)
    a, b = RedisCoordinator(config, CoordinatorContext()), RedisCoordinator(config, CoordinatorContext())
    numbers = [f"86137{n:08d}" for n in range(1000)]
    try:
        grant = await a.take_lease("c", "w1", 60.0)
        assert await a.claim("c", numbers) == [Claim.NEW] * 1000
        proc.kill()  # SIGKILL: no shutdown save; the AOF was written before each answer
        proc.wait(10)
        with pytest.raises(CoordinatorUnavailable):
            await b.claim("c", numbers[:10])  # down: no answer, nothing claimed, nothing may go
        proc = own_redis(server, port, tmp_path, fsync="everysec")
        # The same clients carry on: a call on a connection the restart cut is CoordinatorUnavailable
        # (the caller waits and asks again: a claim asked twice by its owner answers MINE), the next
        # one reconnects.
        unavailable = 0

        async def again(call: Callable[[], Any]) -> Any:
            nonlocal unavailable
            for _ in range(3):
                try:
                    return await call()
                except CoordinatorUnavailable:
                    unavailable += 1
            raise AssertionError("redis never came back")

        assert await again(lambda: b.claim("c", numbers)) == [Claim.TAKEN] * 1000
        assert await again(lambda: a.claim("c", numbers[:3])) == [Claim.MINE] * 3
        assert unavailable <= 2
        assert await a.holds(grant)
        with pytest.raises(CampaignBusy):
            await b.take_lease("c", "w2", 60.0)
        await a.release_lease(grant)
        assert (await b.take_lease("c", "w2", 60.0)).fence == grant.fence + 1
    finally:
        await a.aclose()
        await b.aclose()
        proc.terminate()
        proc.wait(10)


# -- frequency caps counted in the claim script (every worker's sends) --------------------------------

_SHANGHAI = ZoneInfo("Asia/Shanghai")


def _at(day: int, hour: int, minute: int = 0, second: int = 0) -> float:
    """Epoch seconds of December ``day``, 2026, at that Shanghai time."""
    return datetime(2026, 12, day, hour, minute, second, tzinfo=_SHANGHAI).timestamp()


@pytest.mark.anyio
async def test_a_calendar_day_cap_is_counted_across_workers_and_campaigns(
    maker: Callable[..., RedisCoordinator],
) -> None:
    a, b = maker(), maker()  # two hosts: two workers, two clients
    day = (CapWindow(1, "calendar_day", "Asia/Shanghai"),)

    def caps(now: float) -> CapCheck:
        return CapCheck("marketing", day, now)

    n1, n2, n3 = "8613800000001", "8613800000002", "8613800000003"
    assert await a.claim("c1", [n1, n2], tags=["2", "3"], caps=caps(_at(4, 10))) == [Claim.NEW, Claim.NEW]
    # Another worker, another campaign of the kind, the same local day: n1 and n2 are at their cap.
    got = await b.claim("c2", [n1, n3, n2], tags=["2", "3", "4"], caps=caps(_at(4, 23, 59, 59)))
    assert got == [Claim.CAPPED, Claim.NEW, Claim.CAPPED]
    # A claim asked again answers MINE and counts nothing more; the same campaign's claim wins.
    assert await a.claim("c1", [n1], tags=["2"], caps=caps(_at(4, 11))) == [Claim.MINE]
    assert await b.claim("c1", [n1], tags=["2"], caps=caps(_at(4, 11))) == [Claim.TAKEN]
    # The local day changed (midnight in Shanghai, 16:00 UTC): a fresh count.
    got = await b.claim("c3", [n1, n3], tags=["2", "3"], caps=caps(_at(5, 0, 0, 1)))
    assert got == [Claim.NEW, Claim.NEW]
    assert await a.claim("c4", [n1, n3], tags=["2", "3"], caps=caps(_at(5, 8))) == [Claim.CAPPED] * 2
    # The counter of a day expires after it (a minute's grace for clocks a little apart).
    key = a.cap_key("marketing", n1, "day:Asia/Shanghai:2026-12-05")
    expires_ms = await a.client.pexpiretime(key)
    assert expires_ms == round(_at(6, 0) * 1000) + 60_000
    # Another kind counts apart; without caps a claim counts nothing.
    assert await b.claim("t1", [n1], caps=CapCheck("transactional", day, _at(5, 9))) == [Claim.NEW]
    assert await b.claim("c5", [n2]) == [Claim.NEW]


@pytest.mark.anyio
async def test_an_api_check_counts_caps_with_the_claims_and_refuses_opt_outs(
    maker: Callable[..., RedisCoordinator],
) -> None:
    """``pigeon serve``'s API check (no claim kept) and a worker's claim count the same cap, both
    ways, on one Redis and on a Cluster (there: the check reserves on the cap shards)."""
    worker, svc = maker(), maker()
    day = CapCheck("marketing", (CapWindow(1, "calendar_day", "Asia/Shanghai"),), _at(4, 10))
    n1, n2, n3, n4 = "8613800000011", "8613800000012", "8613800000013", "8613800000014"
    assert await worker.claim("blast", [n1], tags=["2"], caps=day) == [Claim.NEW]
    assert await svc.check("api-marketing", [n1, n2], tags=["1", "2"], caps=day) == [Claim.CAPPED, Claim.NEW]
    assert await worker.claim("blast", [n2], tags=["3"], caps=day) == [Claim.CAPPED]
    assert await svc.add_optouts("api-marketing", [n3]) == 1
    got = await svc.check("api-marketing", [n3, n4], tags=["3", "4"], caps=day)
    assert got == [Claim.OPTED_OUT, Claim.NEW], "an opt-out of the stream's own set, on any Redis"
    # the opted-out one was not counted: a transactional check (no opt-outs) of another kind is free
    tx = CapCheck("transactional", (CapWindow(2, "24h"),), _at(4, 10))
    got = [await svc.check("api-transactional", [n3], tags=[r], caps=tx, optouts=False) for r in "567"]
    assert got == [[Claim.NEW], [Claim.NEW], [Claim.CAPPED]], "two messages to one number count twice"


@pytest.mark.anyio
async def test_a_rolling_cap_counts_send_times_in_the_period_across_workers(
    maker: Callable[..., RedisCoordinator],
) -> None:
    a, b = maker(), maker()
    window = (CapWindow(2, "24h"),)
    n = "8613800000009"
    t0 = _at(4, 10)
    answers = []
    for i, (who, at) in enumerate([(a, t0), (b, t0 + 3600), (a, t0 + 7200), (b, t0 + 86400 + 1)]):
        answers += await who.claim(f"r{i}", [n], caps=CapCheck("marketing", window, at))
    # Two in 24 h; the third refused (and not counted); once the first is 24 h old, room for one.
    assert answers == [Claim.NEW, Claim.NEW, Claim.CAPPED, Claim.NEW]
    assert await a.claim("r9", [n], caps=CapCheck("marketing", window, t0 + 86400 + 2)) == [Claim.CAPPED]


@pytest.mark.anyio
async def test_racing_workers_never_both_take_a_numbers_last_place(
    maker: Callable[..., RedisCoordinator],
) -> None:
    """Two workers claim the same 2,000 numbers in requests of 200 for two campaigns at once (one
    from each end, so they meet) under a cap of one a day: each number is NEW exactly once."""
    a, b = maker(), maker()
    numbers = [f"86139{i:08d}" for i in range(2000)]
    check = CapCheck("marketing", (CapWindow(1, "calendar_day"),), _at(4, 12))

    async def run(c: RedisCoordinator, campaign: str, order: list[str]) -> dict[str, Claim]:
        out: dict[str, Claim] = {}
        for i in range(0, len(order), 200):
            chunk = order[i : i + 200]
            out.update(zip(chunk, await c.claim(campaign, chunk, caps=check), strict=True))
        return out

    by_a, by_b = await asyncio.gather(run(a, "x", numbers), run(b, "y", numbers[::-1]))
    got_a, got_b = [by_a[n] for n in numbers], [by_b[n] for n in numbers]
    for x, y in zip(got_a, got_b, strict=True):
        assert sorted((x, y)) == [Claim.NEW, Claim.CAPPED]
    assert 0 < got_a.count(Claim.NEW) < len(numbers), "the two workers raced"


@pytest.mark.anyio
async def test_a_same_content_window_is_shared_across_workers(
    maker: Callable[..., RedisCoordinator],
) -> None:
    a, b = maker(), maker()
    n1, n2 = "8613800000011", "8613800000012"
    t0 = _at(4, 10)

    def check(now: float, *texts: int) -> CapCheck:
        return CapCheck("marketing", (), now, same_content=600.0, contents=texts)

    assert await a.claim("s1", [n1, n2], caps=check(t0, 111, 111)) == [Claim.NEW, Claim.NEW]
    # The same text to n1 from another worker's campaign within 10 minutes: held; another text goes.
    got = await b.claim("s2", [n1, n2], caps=check(t0 + 60, 111, 222))
    assert got == [Claim.SAME_CONTENT, Claim.NEW]
    key = a.cap_key("marketing", n1, "text:111")
    assert 0 < await a.client.pttl(key) <= 600_000, "the text is remembered for the window only"


@pytest.mark.anyio
async def test_the_caps_load_test_runs_at_a_tiny_size(maker: Callable[..., RedisCoordinator]) -> None:
    from loadtests.redis_coordinator import caps_costs

    got = await caps_costs(maker(), 400)
    assert set(got) >= {"none", "1_per_calendar_day", "1_per_day_and_3_per_7d", "bytes_per_day_key"}
    assert got["bytes_per_roll_key"] > 0 and got["1_per_calendar_day"]["recipients_per_s"] > 0


async def _hlen(c: RedisCoordinator, key: str) -> int:
    return int(await c.client.hlen(key))  # type: ignore[misc]


@pytest.mark.anyio
async def test_on_a_cluster_a_refused_claim_gives_its_cap_counts_back(
    on_cluster: Callable[..., RedisCoordinator],
) -> None:
    """The three steps' bookkeeping: counted first (each count named by its claim), given back
    when the claim is TAKEN or OPTED_OUT, never counted twice for a claim asked again."""
    a, b = on_cluster(), on_cluster()
    n = "8613800000021"
    windows = (CapWindow(2, "calendar_day", "Asia/Shanghai"), CapWindow(2, "24h"))
    t0 = _at(4, 10)

    def check(text: int) -> CapCheck:
        return CapCheck("marketing", windows, t0, same_content=600.0, contents=(text,))

    day, roll = (
        a.cap_key("marketing", n, "day:Asia/Shanghai:2026-12-04"),
        a.cap_key("marketing", n, "roll:86400"),
    )
    assert await a.claim("c1", [n], tags=["2"], caps=check(111)) == [Claim.NEW]
    assert (await _hlen(a, day), await a.client.zcard(roll)) == (1, 1)
    # The same claim by another worker: counted in step 1, TAKEN in step 2, given back in step 3.
    assert await b.claim("c1", [n], tags=["2"], caps=check(222)) == [Claim.TAKEN]
    assert (await _hlen(a, day), await a.client.zcard(roll)) == (1, 1)
    assert not await a.client.exists(a.cap_key("marketing", n, "text:222")), "its text given back too"
    # Asked again by its own worker (a retry): MINE, nothing counted twice.
    assert await a.claim("c1", [n], tags=["2"], caps=check(111)) == [Claim.MINE]
    assert (await _hlen(a, day), await a.client.zcard(roll)) == (1, 1)
    # Opted out in another campaign: not claimed, its count given back.
    await a.add_optouts("c2", [n])
    assert await b.claim("c2", [n], tags=["2"], caps=check(333)) == [Claim.OPTED_OUT]
    assert await _hlen(a, day) == 1
    # The opt-out is shared on the Cluster too: another campaign's claim refuses it before any count.
    assert await b.claim("c6", [n], tags=["2"], caps=check(666)) == [Claim.OPTED_OUT]
    assert await _hlen(a, day) == 1
    # So the second place of the day is still free (claims that leave the shared opt-outs out,
    # ``optouts=False``), and the third is refused.
    assert await b.claim("c3", [n], tags=["2"], caps=check(444), optouts=False) == [Claim.NEW]
    assert await a.claim("c4", [n], tags=["2"], caps=check(555), optouts=False) == [Claim.CAPPED]
    assert (await _hlen(a, day), await a.client.zcard(roll)) == (2, 2)
    # The same text again within the window, another campaign: held back.
    assert await b.claim("c5", [n], tags=["2"], caps=check(111), optouts=False) == [Claim.SAME_CONTENT]


async def _script_calls(c: RedisCoordinator) -> int:
    """EVALSHA calls summed over the Cluster's primaries."""
    stats = await c.client.info("commandstats", target_nodes=RedisCluster.PRIMARIES)  # type: ignore[call-arg]
    total = 0
    for per_node in stats.values():
        total += int(per_node.get("cmdstat_evalsha", {}).get("calls", 0))
    return total


@pytest.mark.anyio
@pytest.mark.parametrize("shards", [1, 16])
async def test_on_a_cluster_a_request_s_caps_take_one_call_per_shard_never_per_recipient(
    on_cluster: Callable[..., RedisCoordinator], shards: int
) -> None:
    a = on_cluster(cap_shards=shards)
    check = CapCheck("marketing", (CapWindow(1, "calendar_day"),), _at(4, 12))
    numbers = [f"86137{i:08d}" for i in range(400)]
    await a.claim("warm", numbers[:200], caps=check)  # (loads the scripts on every node)
    before = await _script_calls(a)
    assert await a.claim("calls", numbers[200:], caps=check) == [Claim.NEW] * 200
    calls = await _script_calls(a) - before
    touched = len({a.cap_shard(n) for n in numbers[200:]})
    assert touched == shards
    optout_shards = len({int(n) % OPTOUT_BUCKETS % a.config.optout_shards for n in numbers[200:]})
    assert optout_shards == a.config.optout_shards
    assert calls == optout_shards + touched + 1, (
        f"{calls} script calls for one request of 200 over {optout_shards} opt-out and {touched} cap shards"
    )
    if shards > 1:
        nodes = {a.client.get_node_from_key(a.cap_shard_key("marketing", s)).port for s in range(shards)}
        assert len(nodes) > 1, "the kind's counters spread over the Cluster's primaries"


@pytest.mark.anyio
async def test_on_a_cluster_a_claim_its_campaign_s_node_does_not_answer_counts_once_and_is_retried(
    on_cluster: Callable[..., RedisCoordinator], cluster_nodes: LocalCluster
) -> None:
    """The campaign's primary stops answering (CLIENT PAUSE) between the cap step and the claim:
    the count stays ahead of the claim — another campaign is held back, early — and the lane's
    retry of the same request (same worker, same row) is not refused by its own count."""
    a, b = on_cluster(timeout=0.3), on_cluster()
    check = CapCheck("marketing", (CapWindow(1, "calendar_day"),), _at(4, 12))
    campaign = "paused"
    await a.client.initialize()  # type: ignore[union-attr]
    a.client.set_retry(Retry(NoBackoff(), 0))  # one try: the lane, not the client, asks again
    claims_node = a.client.get_node_from_key(a.claims_key(campaign)).port
    n = next(
        f"86136{i:08d}"
        for i in range(1000)
        if a.client.get_node_from_key(a.cap_shard_key("marketing", a.cap_shard(f"86136{i:08d}"))).port
        != claims_node
    )
    day = a.cap_key("marketing", n, f"day:{check.windows[0].bucket(check.now)[0].split(':', 1)[1]}")
    cluster_nodes.run(claims_node, "client", "pause", "3000", "WRITE")
    paused = time.monotonic()
    with pytest.raises(CoordinatorUnavailable):
        await a.claim(campaign, [n], tags=["7"], caps=check)
    assert await _hlen(b, day) == 1, "counted before the claim"
    assert await b.claim("another", [n], tags=["7"], caps=check) == [Claim.CAPPED]
    await asyncio.sleep(max(0.0, 3.2 - (time.monotonic() - paused)))
    got = await a.claim(campaign, [n], tags=["7"], caps=check)
    # NEW if the paused claim never ran, MINE if it ran once the node answered again: sent either way.
    assert got in ([Claim.NEW], [Claim.MINE])
    assert await _hlen(b, day) == 1, "the retry counted nothing more"


def _store_with(path: Path, numbers: list[str]) -> None:
    from engine.state.store import OptOutRecord
    from engine.state.store.sqlite import SqliteStore

    store = SqliteStore(path)
    store.add_optouts([OptOutRecord(n, "import") for n in numbers])
    store.close()


@pytest.mark.anyio
async def test_a_stores_opt_outs_are_uploaded_at_start_then_only_the_new_ones(
    maker: Callable[..., RedisCoordinator], tmp_path: Path
) -> None:
    """Worker A's start uploads its store's opt-outs: worker B's claims (any marketing campaign) and
    the API's checks refuse them, on one Redis and on a Cluster; a second start with nothing new
    uploads nothing, a third only the rows added since; another store keeps a mark of its own."""
    from engine.coordination.optout_upload import share_store_optouts

    a, b = maker(), maker()
    calls: list[int] = []
    upload = a._upload

    def counted(**kw: Any) -> Any:
        calls.append(len(kw["args"]))
        return upload(**kw)

    a._upload = counted  # type: ignore[method-assign]
    numbers = [f"+86138{i:08d}" for i in range(0, 30_000, 10)] + ["+447911123456"]
    _store_with(tmp_path / "a.db", numbers)
    first = await share_store_optouts(a, tmp_path / "a.db")
    assert first is not None and (first.rows, first.added) == (3001, 3001)
    n_in, n_out, intl = "13800000010", "13800000011", str(number_key("+447911123456"))
    got = await b.claim("blast", [n_in, n_out, intl], tags=["2", "3", "4"])
    assert got == [Claim.OPTED_OUT, Claim.NEW, Claim.OPTED_OUT]
    assert await b.claim("tx", [n_in], optouts=False) == [Claim.NEW], "transactional: not refused"
    assert await b.check("api-marketing", [n_in, n_out], tags=["1", "2"]) == [Claim.OPTED_OUT, Claim.NEW]
    # The buckets hold integers: compact intsets.
    bucket = int(n_in) % OPTOUT_BUCKETS
    key = f"{a._optout_base(bucket)}:{bucket:05d}"
    assert await a.client.object("encoding", key) == b"intset"
    # A second start, nothing new: no upload script runs.
    calls.clear()
    second = await share_store_optouts(a, tmp_path / "a.db")
    assert second is not None and second.rows == 0 and second.through == first.through
    assert calls == []
    # Five more (and one already there): the third start uploads exactly the five.
    _store_with(tmp_path / "a.db", [f"+86139{i:08d}" for i in range(5)] + [numbers[0]])
    third = await share_store_optouts(a, tmp_path / "a.db")
    assert third is not None and (third.rows, third.added) == (5, 5) and third.through > first.through
    assert await b.claim("blast", ["13900000004"], tags=["9"]) == [Claim.OPTED_OUT]
    # Another store: its own mark (everything of it, once).
    _store_with(tmp_path / "b.db", ["+8613800000010", "+8613700000000"])
    other = await share_store_optouts(b, tmp_path / "b.db")
    assert other is not None and (other.rows, other.added) == (2, 1) and other.source != first.source
    # An earlier version's plain set is folded into the buckets at the next start, then deleted.
    await a.client.sadd(a.legacy_optouts_key(), "13600000000")
    again = await share_store_optouts(a, tmp_path / "a.db")
    assert again is not None and again.rows == 0
    assert not await a.client.exists(a.legacy_optouts_key())
    assert await b.claim("blast", ["13600000000"], tags=["7"]) == [Claim.OPTED_OUT]


@pytest.mark.anyio
async def test_an_upload_that_redis_does_not_answer_leaves_the_mark_and_the_start_goes_on(
    tmp_path: Path,
) -> None:
    from engine.coordination.optout_upload import share_store_optouts

    _store_with(tmp_path / "a.db", ["+8613800000010"])
    c = RedisCoordinator(RedisConfig(url="redis://127.0.0.1:1/0", timeout=0.5), CoordinatorContext())
    try:
        assert await share_store_optouts(c, tmp_path / "a.db") is None
    finally:
        await c.aclose()
