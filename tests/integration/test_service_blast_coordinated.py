"""Blasts ``pigeon serve`` starts (``POST /v1/campaigns``) go through the shared coordinator.

Two services (each its own store, as on two hosts) and a ``pigeon worker`` process share one Redis
and one HTTP simulator, whose log is the judge: the campaign's lease in Redis lets one service run
it (the other gets 409 naming the holder), an opt-out posted to one service's webhook stops the
other's blast, a campaign the other service then runs counts what the first sent as
``claimed_elsewhere`` (finished, not failed), and a service blast beside a ``pigeon worker`` on one
segment sends every recipient exactly once within the shared rate in every 1 s window. Asyncio
only: redis-py's client is asyncio's. DB 12 unless ``PIGEON_TEST_REDIS_URL``, a key prefix per test.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

pytest.importorskip("redis")

from engine.state.ledger.store import Ledger
from loadtests.simulator import SimConfig, SimulatorThread
from tests.integration.crash_harness import segment
from tests.integration.redis_prefix import WORKERS_URL, scoped_prefix
from tests.integration.service_harness import serving, write_engine
from tests.integration.test_service_coordinated import (
    RATE,
    _coordinator_section,
    _signed,
    _until,
    _wait,
    _worker,
    _worker_dir,
)

pytestmark = pytest.mark.anyio
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])

URL = WORKERS_URL

CAMPAIGN = """id = "crash"
kind = "marketing"
[segment]
source = "csv"
path = "seg.csv"
[template]
signature = "小鹅优选"
text = "{name}，您的{coupon}元券已到账"
[policy]
send_window = ""
"""
"""The campaign the workers of ``crash_harness`` send (same id, segment and text), for a service."""


@pytest.fixture
def prefix() -> Iterator[str]:
    yield from scoped_prefix(URL)


def _service(root: Path, name: str, port: int, seg: Path, prefix: str) -> tuple[Path, str]:
    """A service's engine file (its own store; the workers' gateway, carrier rate, daily marketing cap
    and coordinator) with ``campaigns/crash.toml`` over a copy of ``seg``."""
    d = root / name
    d.mkdir()
    engine, key = write_engine(d, port, cm_rate=RATE)
    with engine.open("a", encoding="utf-8") as f:
        f.write('\n[caps.marketing]\nwindows = [{ limit = 1, period = "calendar_day" }]\n')
        f.write(_coordinator_section(prefix, URL))
    (d / "campaigns").mkdir()
    shutil.copy(seg, d / "campaigns" / "seg.csv")
    (d / "campaigns" / "crash.toml").write_text(CAMPAIGN, encoding="utf-8")
    return engine, key


def _client(url: str, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=30)


async def _ended(c: httpx.AsyncClient, seconds: float = 60) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        view: dict[str, Any] = (await c.get("/v1/campaigns/crash")).json()
        return view if view["done"] else None

    result: dict[str, Any] = await _until(done, "the blast ended", seconds)
    return result


def _number(row: int) -> str:
    return f"138{row - 2:08d}"


@asyncio_only
async def test_two_services_one_runs_the_campaign_and_an_opt_out_at_the_other_stops_its_blast(
    anyio_backend: object, tmp_path: Path, prefix: str
) -> None:
    rows = 6000
    eligible, _dups = segment(tmp_path / "seg.csv", rows)
    late = sorted(r for r in eligible if r > 5000)[:200]  # rows the blast reaches last
    opted = {_number(r) for r in late}
    with SimulatorThread(SimConfig()) as sim:
        engine_a, key_a = _service(tmp_path, "a", sim.port, tmp_path / "seg.csv", prefix)
        engine_b, key_b = _service(tmp_path, "b", sim.port, tmp_path / "seg.csv", prefix)
        async with (
            serving(engine_a) as (url_a, svc_a),
            serving(engine_b) as (url_b, svc_b),
            _client(url_a, key_a) as a,
            _client(url_b, key_b) as b,
        ):
            assert svc_a.shared is not None and svc_b.shared is not None
            r = await a.post("/v1/campaigns", json={"file": "crash.toml"})
            assert r.status_code == 202, r.text
            # The second service is refused while the first holds the campaign's lease in Redis.
            r = await b.post("/v1/campaigns", json={"file": "crash.toml"})
            assert r.status_code == 409, r.text
            detail = r.json()["detail"]
            assert f"pigeon serve {svc_a.shared.worker}" in detail and socket.gethostname() in detail, detail
            assert svc_b.ledger is not None and "crash" not in {c.id for c in svc_b.ledger.campaigns()}
            await _until(lambda: _at_least(sim, 800), "the blast started", 30)
            # An opt-out heard by the other service's webhook: the blast leaves those numbers out.
            replies = {"replies": [{"from": n, "text": "退订", "at": time.time()} for n in sorted(opted)]}
            raw = json.dumps(replies, ensure_ascii=False).encode()
            posted = time.monotonic()
            r = await b.post("/v1/webhooks/sim/replies", content=raw, headers=_signed(raw))
            assert r.json() == {"received": len(opted), "optouts": len(opted)}
            view_a = await _ended(a)
            assert view_a["state"] == "finished", view_a
            sent_a = len(sim.log)
            # The lease went back with the run: the other service may start it now. Everyone the
            # first sent is claimed there: "claimed_elsewhere", and the run is finished, not failed.
            r = await b.post("/v1/campaigns", json={"file": "crash.toml"})
            assert r.status_code == 202, r.text
            view_b = await _ended(b)
            assert view_b["state"] == "finished", view_b
        log = list(sim.log)
    assert len(log) == sent_a, "the second service's run sent nothing"
    late_sends = [
        (round(t - posted, 2), to) for t, _, to, _, _ in log if to[3:] in opted and t > posted + 1.0
    ]
    assert not late_sends, f"{len(late_sends)} opted-out recipients sent over 1 s after the reply"
    received = Counter(to[3:] for _, _, to, _, _ in log)
    assert max(received.values()) == 1
    sent_opted = set(received) & opted
    assert set(received) == {_number(r) for r in eligible} - (opted - sent_opted)
    assert view_a["reasons"]["suppressed"]["opted_out"] == len(opted) - len(sent_opted) > 100
    assert view_a["claimed_elsewhere"] == 0
    # (those sent before the opt-out are in the second service's opt-out set: suppressed there first)
    assert view_b["claimed_elsewhere"] == len(received) - len(sent_opted)
    assert view_b["reasons"]["suppressed"]["opted_out"] == len(opted)
    assert view_b["states"].get("sent", 0) == 0


async def _at_least(sim: SimulatorThread, n: int) -> bool:
    return len(sim.log) >= n


@asyncio_only
async def test_a_service_blast_and_a_worker_on_one_segment_send_everyone_once_within_the_shared_rate(
    anyio_backend: object, tmp_path: Path, prefix: str
) -> None:
    rows = 6000
    eligible, _dups = segment(tmp_path / "seg.csv", rows)
    with SimulatorThread(SimConfig()) as sim:
        engine, key = _service(tmp_path, "svc", sim.port, tmp_path / "seg.csv", prefix)
        d = _worker_dir(tmp_path, "w0", sim.port, tmp_path / "seg.csv", prefix)
        async with serving(engine) as (url, _svc), _client(url, key) as c:
            worker = _worker(d)
            try:
                r = await c.post("/v1/campaigns", json={"file": "crash.toml"})
                assert r.status_code == 202, r.text
                view = await _ended(c, 90)
                await _wait(worker, 90)
            finally:
                if worker.poll() is None:
                    worker.kill()
                    await anyio.to_thread.run_sync(worker.communicate)
        peak = sim.max_parts_per_second()
        log = list(sim.log)
    assert view["state"] == "finished", view
    received = Counter(to[3:] for _, _, to, _, _ in log)
    assert max(received.values()) == 1, "a recipient arrived twice"
    assert set(received) == {_number(r) for r in eligible}, "a recipient is missing"
    assert peak["cm"] <= RATE, f"{peak['cm']} parts arrived in one second, over the shared {RATE}"
    ledger = Ledger(d / "pigeon.db")
    try:
        counts = ledger.counts("crash")
    finally:
        ledger.close()
    by_worker = sum(counts.states.get(s, 0) for s in ("submitted", "sent", "delivered"))
    by_service = view["states"].get("sent", 0)
    assert by_worker > 0 and by_service > 0, (by_worker, by_service)
    assert by_worker + by_service == len(received)
    assert view["claimed_elsewhere"] > 0


@asyncio_only
async def test_a_campaign_the_shared_budgets_cannot_send_is_refused_with_422_before_anything_is_recorded(
    anyio_backend: object, tmp_path: Path, prefix: str
) -> None:
    """China Mobile at 20 parts/s, half of it the transactional reserve: the API's largest message (8
    parts) fits both buckets, so the service starts, but a campaign of 12-part messages fits the rate
    (one process would send it) and not the shared marketing bucket of 10 parts/s."""
    segment(tmp_path / "seg.csv", 50)
    engine, key = _service(tmp_path, "svc", 9, tmp_path / "seg.csv", prefix)
    text = engine.read_text(encoding="utf-8").replace(
        "rate_per_second = 1500", "rate_per_second = 20\ntransactional_share = 0.5"
    )
    engine.write_text(text, encoding="utf-8")
    campaign = engine.parent / "campaigns" / "crash.toml"
    campaign.write_text(CAMPAIGN.replace("[policy]", "max_length = 780\n[policy]"), encoding="utf-8")
    async with serving(engine) as (url, svc), _client(url, key) as c:
        r = await c.post("/v1/campaigns", json={"file": "crash.toml"})
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert "shared budgets" in detail and "carriers.cm.rate_per_second" in detail, detail
        assert svc.ledger is not None and "crash" not in {c.id for c in svc.ledger.campaigns()}


@asyncio_only
async def test_a_blast_whose_shared_lease_is_lost_stops_and_stays_resumable(
    anyio_backend: object, tmp_path: Path, prefix: str
) -> None:
    """The campaign's lease in Redis taken away mid-blast (as when it expired while Redis did not
    answer and another service took it): the next renewal (every 5 s) finds it lost, the blast
    drains and stops — ``cancelled`` with the reason, its campaign not cancelled in the ledger."""
    import redis

    rows = 12000
    segment(tmp_path / "seg.csv", rows)
    with SimulatorThread(SimConfig()) as sim:
        engine, key = _service(tmp_path, "svc", sim.port, tmp_path / "seg.csv", prefix)
        async with serving(engine) as (url, svc), _client(url, key) as c:
            r = await c.post("/v1/campaigns", json={"file": "crash.toml"})
            assert r.status_code == 202, r.text
            await _until(lambda: _at_least(sim, 500), "the blast started", 30)
            client = redis.Redis.from_url(URL)
            try:
                assert client.delete(f"{prefix}:lease:{{crash}}") == 1
            finally:
                client.close()
            view = await _ended(c, 30)
            assert svc.ledger is not None
            status = {r.id: r.status.value for r in svc.ledger.campaigns()}["crash"]
        sent = len(sim.log)
    assert view["state"] == "cancelled", view
    assert "lease in the shared coordinator was lost" in view["error"], view
    assert sent < rows * 0.95, "the blast stopped before the end"
    assert status == "running", "still resumable"


@asyncio_only
async def test_a_blast_the_service_starts_first_shares_opt_outs_its_store_got_since_the_service_started(
    anyio_backend: object, tmp_path: Path, prefix: str
) -> None:
    """An opt-out added to the service's store while it runs (``pigeon optout add`` on its host) is
    in the shared copy once a blast the service starts has begun: other workers refuse it."""
    from engine.coordination.contract import Claim, CoordinatorContext
    from engine.core.messages import number_key
    from engine.state.store import OptOutRecord
    from engine.state.store.sqlite import SqliteStore
    from plugins.store_redis.config import RedisConfig
    from plugins.store_redis.coordinator import RedisCoordinator

    segment(tmp_path / "seg.csv", 300)
    other = RedisCoordinator(RedisConfig(url=URL, prefix=prefix), CoordinatorContext(worker="w"))
    key = str(number_key("13700137000"))
    try:
        with SimulatorThread(SimConfig()) as sim:
            engine, api_key = _service(tmp_path, "a", sim.port, tmp_path / "seg.csv", prefix)
            async with serving(engine) as (url, _svc), _client(url, api_key) as a:
                store = SqliteStore(engine.parent / "pigeon.db")
                store.add_optouts([OptOutRecord("+8613700137000", "manual")])
                store.close()
                assert await other.check("api-marketing", [key], tags=["1"]) == [Claim.NEW]
                r = await a.post("/v1/campaigns", json={"file": "crash.toml"})
                assert r.status_code == 202, r.text
                await _ended(a)
                assert await other.check("api-marketing", [key], tags=["2"]) == [Claim.OPTED_OUT]
    finally:
        await other.aclose()
