"""The ``redis`` coordinator's range queue (a Redis Stream per campaign, consumer group ``workers``)
and tagged / adopting claims, on the real Redis (DB 12 unless ``PIGEON_TEST_REDIS_URL``; a key
prefix per test). asyncio only: redis-py's client is asyncio-only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import anyio
import pytest

pytest.importorskip("redis")


from engine.coordination.contract import Claim, CoordinatorContext
from engine.pipeline.source import SegmentRange
from plugins.store_redis.config import RedisConfig
from plugins.store_redis.coordinator import RedisCoordinator
from tests.integration.redis_prefix import WORKERS_URL, scoped_prefix

URL = WORKERS_URL

pytestmark = pytest.mark.parametrize("anyio_backend", ["asyncio"])


@pytest.fixture
def prefix() -> Iterator[str]:
    yield from scoped_prefix(URL)


@pytest.fixture
async def worker(prefix: str) -> AsyncIterator[Callable[[str], RedisCoordinator]]:
    made: list[RedisCoordinator] = []

    def make(name: str) -> RedisCoordinator:
        c = RedisCoordinator(RedisConfig(url=URL, prefix=prefix), CoordinatorContext(worker=name))
        made.append(c)
        return c

    yield make
    for c in made:
        await c.aclose()


def _parts(n: int) -> list[SegmentRange]:
    return [
        SegmentRange(index=i, start=100 * i, end=100 * (i + 1), first_row=2 + 10 * i, rows=10)
        for i in range(n)
    ]


async def test_ranges_are_published_once_and_each_taken_by_one_worker(
    anyio_backend: str, worker: Callable[[str], RedisCoordinator]
) -> None:
    a, b = worker("host:a"), worker("host:b")
    assert await a.publish_ranges("c1", _parts(5), b'{"rows": 50}') == 5
    assert await b.publish_ranges("c1", _parts(5), b'{"rows": 50}') == 0, "published twice"
    seen = []
    for turn in range(12):  # the two take turns, each acking its range before the next
        w = (a, b)[turn % 2]
        t = await w.take_range("c1", idle=30)
        if t is None:
            continue
        assert await w.renew_range("c1", t.entry)
        assert not await (b, a)[turn % 2].renew_range("c1", t.entry), "renewed a range another holds"
        await w.range_done("c1", t, t.part.rows)
        seen.append(t)
    assert sorted(t.part.index for t in seen) == [0, 1, 2, 3, 4]
    state = await a.queue_state("c1")
    assert state["ranges_done"] == 5 and state["meta"] == {"rows": 50}
    assert sum(v["rows"] for v in state["done_by"].values()) == 50
    assert not any(state["held_by"].values())


async def test_a_dead_workers_range_is_reclaimed_after_the_idle_time_and_a_live_ones_is_not(
    anyio_backend: str, worker: Callable[[str], RedisCoordinator]
) -> None:
    a, b, c = worker("host:a"), worker("host:b"), worker("host:c")
    await a.publish_ranges("c2", _parts(2), b"{}")
    ta = await a.take_range("c2", idle=0.3)
    tb = await b.take_range("c2", idle=0.3)
    assert ta is not None and tb is not None and ta.previous == tb.previous == ""
    assert await c.take_range("c2", idle=0.3) is None, "nothing free, nothing idle yet"
    for _ in range(4):  # b renews; a has died
        await anyio.sleep(0.15)
        assert await b.renew_range("c2", tb.entry)
    again = await c.take_range("c2", idle=0.3)
    assert again is not None and again.part == ta.part and again.previous == "host:a"
    assert not await a.renew_range("c2", ta.entry), "a late renewal must not take it back"
    assert await worker("host:d").take_range("c2", idle=0.3) is None, "b's range is renewed: not reclaimed"
    # A worker restarted under the same name gets its own held range back first.
    b2 = worker("host:b")
    back = await b2.take_range("c2", idle=30)
    assert back is not None and back.part == tb.part and back.previous == "host:b"
    state = await c.queue_state("c2")
    assert state["held_by"] == {"host:b": 1, "host:c": 1}


async def test_tagged_claims_and_adoption(
    anyio_backend: str, worker: Callable[[str], RedisCoordinator]
) -> None:
    a, b = worker("host:a"), worker("host:b")
    assert await a.claim("c3", ["n1", "n2"], tags=["5", "6"]) == [Claim.NEW, Claim.NEW]
    assert await a.claim("c3", ["n1"], tags=["5"]) == [Claim.MINE], "the same row: a retry of its own"
    assert await a.claim("c3", ["n1"], tags=["9"]) == [Claim.TAKEN], "the same number on another row"
    assert await b.claim("c3", ["n1", "n3"], tags=["5", "7"]) == [Claim.TAKEN, Claim.NEW]
    assert await b.claim("c3", ["n1", "n2", "n3"], tags=["5", "6", "7"], adopt="host:a") == [
        Claim.ADOPTED,
        Claim.ADOPTED,
        Claim.MINE,
    ]
    assert await a.claim("c3", ["n1"], tags=["5"]) == [Claim.TAKEN], "adopted: not the dead one's any more"
    # The dead worker's claim of a number on another row is not adopted: that row's record settles
    # it (a resumed range no longer re-reads the row the number was first seen on).
    assert await a.claim("c3", ["n4"], tags=["3"]) == [Claim.NEW]
    assert await b.claim("c3", ["n4"], tags=["8"], adopt="host:a") == [Claim.TAKEN]
    assert await a.release_claims("c3", ["n1", "n2"]) == 0
    assert await b.release_claims("c3", ["n1", "n2", "n3"]) == 3


async def test_an_opt_out_added_by_one_worker_refuses_every_workers_claim(
    anyio_backend: str, worker: Callable[[str], RedisCoordinator]
) -> None:
    a, b = worker("host:a"), worker("host:b")
    assert await a.add_optouts("c4", ["13800000002", "13800000003"]) == 2
    assert await a.add_optouts("c4", ["13800000003"]) == 0
    assert await b.claim("c4", ["13800000001", "13800000002", "13800000003"], tags=["1", "2", "3"]) == [
        Claim.NEW,
        Claim.OPTED_OUT,
        Claim.OPTED_OUT,
    ]
    assert await a.claim("c4", ["13800000002"], tags=["2"], adopt="host:b") == [Claim.OPTED_OUT]
    assert await a.claim("c4", ["13800000001"], tags=["1"]) == [Claim.TAKEN], "opt-outs of one campaign only"
    # Every opt-out also goes to the shared set: another (marketing) campaign's claims refuse it too,
    # a transactional one's (optouts=False) do not; so do API checks of marketing messages.
    assert await b.claim("c5", ["13800000002", "13800000001"]) == [Claim.OPTED_OUT, Claim.NEW], (
        "shared across campaigns"
    )
    assert await b.claim("c6", ["13800000002"], optouts=False) == [Claim.NEW], "transactional: not refused"
    assert await b.check("api-marketing", ["13800000003", "13800000001"], tags=["1", "2"]) == [
        Claim.OPTED_OUT,
        Claim.NEW,
    ]
    assert await b.check("api-transactional", ["13800000003"], tags=["3"], optouts=False) == [Claim.NEW]


async def test_a_ranges_progress_is_recorded_by_its_holder_only_forward_and_answered_on_reclaim(
    anyio_backend: str, worker: Callable[[str], RedisCoordinator]
) -> None:
    a, b, c = worker("host:a"), worker("host:b"), worker("host:c")
    await a.publish_ranges("c6", _parts(1), b"{}")
    ta = await a.take_range("c6", idle=0.3)
    assert ta is not None and (ta.resume_row, ta.resume_at) == (0, 0), "nothing recorded yet"
    i = ta.part.index
    assert await a.renew_range("c6", ta.entry, progress=(i, ta.part.first_row + 4, ta.part.start + 40))
    assert await a.renew_range("c6", ta.entry, progress=(i, ta.part.first_row + 2, ta.part.start + 20))
    assert not await b.renew_range("c6", ta.entry, progress=(i, ta.part.first_row + 9, 999))
    await anyio.sleep(0.4)  # a dies
    again = await c.take_range("c6", idle=0.3)
    assert again is not None and again.part == ta.part and again.previous == "host:a"
    assert (again.resume_row, again.resume_at) == (ta.part.first_row + 4, ta.part.start + 40), (
        "the holder's furthest row; not moved back, not written by a worker that does not hold it"
    )
    assert not await a.renew_range("c6", ta.entry, progress=(i, ta.part.first_row + 8, ta.part.start + 80))
    await c.range_done("c6", again, again.part.rows)
    assert await c.client.hget(c.progress_key("c6"), str(i)) is None, "cleared with the ack"


async def test_api_checks_count_caps_with_the_workers_claims_and_keep_no_claim(
    anyio_backend: str, worker: Callable[[str], RedisCoordinator]
) -> None:
    import time

    from engine.coordination.contract import CapCheck
    from engine.state.caps import CapWindow

    a, svc = worker("host:a"), worker("host:svc")
    now = time.time()
    day = CapCheck("marketing", (CapWindow(1, "calendar_day", "Asia/Shanghai"),), now)
    # a blast's claim counts n1: the API's check finds it capped; the API's check counts n2: the
    # blast's claim finds it capped; the check keeps no claim (n3 may go again for another kind).
    assert await a.claim("blast", ["n1"], tags=["2"], caps=day) == [Claim.NEW]
    assert await svc.check("api-marketing", ["n1", "n2"], tags=["1", "2"], caps=day) == [
        Claim.CAPPED,
        Claim.NEW,
    ]
    assert await a.claim("blast", ["n2"], tags=["3"], caps=day) == [Claim.CAPPED]
    roll = CapCheck("transactional", (CapWindow(2, "24h"),), now)
    answers = [
        await svc.check("api-transactional", ["n3"], tags=[str(r)], caps=roll, optouts=False)
        for r in (7, 8, 9)
    ]
    assert answers == [[Claim.NEW], [Claim.NEW], [Claim.CAPPED]], "two messages to one number count twice"
    same = CapCheck("marketing", (), now, 3600.0, (11, 11))
    assert await svc.check("api-marketing", ["n4", "n5"], tags=["4", "5"], caps=same) == [
        Claim.NEW,
        Claim.NEW,
    ]
    again = CapCheck("marketing", (), now, 3600.0, (11, 12))
    assert await a.claim("blast", ["n4", "n5"], tags=["6", "7"], caps=again) == [
        Claim.SAME_CONTENT,
        Claim.NEW,
    ]
    assert await svc.check("api-marketing", ["n6"], tags=["1"]) == [Claim.NEW]
    assert await svc.check("api-marketing", ["n6"], tags=["1"]) == [Claim.NEW], "no claim: no MINE, no TAKEN"
