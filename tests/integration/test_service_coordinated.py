"""``pigeon serve`` with a ``[coordinator]``: its API lanes and ``pigeon worker`` processes share one Redis.

The workers are subprocesses with their own stores (as on their own hosts), the service runs in the
test's event loop with a store of its own, all sending to one HTTP simulator whose log is the judge:
the carrier's rate held in every 1 s window by the blast and the API together (transactional reserve
on), an opt-out posted to the service's webhook stops the workers' sends within 1 s (and one a worker
shares reaches the service's store), frequency caps counted across the blast and the API both ways,
and API messages waiting — none sent, none lost — while Redis is down. Asyncio only: redis-py's
client is asyncio's (the service refuses trio with the redis coordinator). DB 12 unless
``PIGEON_TEST_REDIS_URL``, a key prefix per test.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import httpx
import pytest

pytest.importorskip("redis")

from engine.coordination.contract import Claim, CoordinatorContext
from engine.core.messages import number_key
from engine.sending.webhooks import sign
from engine.state.ledger.store import Ledger
from loadtests.simulator import SimConfig, SimulatorThread
from plugins.store_redis.config import RedisConfig
from plugins.store_redis.coordinator import RedisCoordinator
from tests.integration.crash_harness import files, segment, start
from tests.integration.redis_prefix import WORKERS_URL, scoped_prefix
from tests.integration.service_harness import SECRET, serving, write_engine

pytestmark = pytest.mark.anyio
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])

URL = WORKERS_URL
RATE = 1500


@pytest.fixture
def prefix() -> Iterator[str]:
    yield from scoped_prefix(URL)


def _coordinator_section(prefix: str, url: str = URL) -> str:
    # margin 5%: on this shared 2-core machine a request can take over 20 ms from charge to arrival
    return (
        f'[coordinator]\nplugin = "redis"\nmargin = 0.05\nreserve = true\npause = 0.1\n'
        f'[coordinator.options]\nurl = "{url}"\nprefix = "{prefix}"\n'
    )


def _worker_dir(root: Path, name: str, port: int, seg: Path, prefix: str, url: str = URL) -> Path:
    d = root / name
    d.mkdir()
    shutil.copy(seg, d / "seg.csv")
    files(
        d,
        port,
        store=d / "pigeon.db",
        gateway="in_flight = 4",
        max_batch=100,
        cm=f"rate_per_second = {RATE}",
        extra=_coordinator_section(prefix, url),
    )
    return d


def _worker(d: Path) -> subprocess.Popen[str]:
    return start(["worker", str(d / "campaign.toml"), "--range-kb", "16", "--lease", "2"], d, quiet=False)


def _service_engine(root: Path, port: int, prefix: str, url: str = URL) -> tuple[Path, str]:
    """The service's engine file: the same gateway, carrier rate, marketing cap and coordinator as the
    workers', its own store."""
    d = root / "svc"
    d.mkdir()
    engine, key = write_engine(d, port, cm_rate=RATE)
    with engine.open("a", encoding="utf-8") as f:
        f.write('\n[caps.marketing]\nwindows = [{ limit = 1, period = "calendar_day" }]\n')
        f.write(_coordinator_section(prefix, url))
    return engine, key


class _DayClock:
    """The real clock, but inside marketing hours (08:00-21:00 Shanghai) of today in Shanghai, so the
    API's marketing messages are not deferred by quiet hours whatever the hour of the run; the same
    calendar day as the workers' caps."""

    def __init__(self) -> None:
        tz = ZoneInfo("Asia/Shanghai")
        now = dt.datetime.now(tz)
        self.shift = 0.0
        if not 9 <= now.hour < 20:
            self.shift = now.replace(hour=12, minute=0).timestamp() - now.timestamp()

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time() + self.shift


def _signed(body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "x-pigeon-signature": sign(SECRET.encode(), body, int(time.time())),
    }


async def _until(check: Callable[[], Any], what: str, seconds: float = 20.0) -> Any:
    with anyio.fail_after(seconds):
        while True:
            got = await check()
            if got:
                return got
            await anyio.sleep(0.05)


async def _wait(proc: subprocess.Popen[str], within: float = 60) -> str:
    _, err = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=within))
    assert proc.returncode == 0, err[-3000:]
    return err


@asyncio_only
async def test_blast_workers_and_api_messages_hold_the_shared_rate_and_a_webhook_opt_out_stops_the_workers(
    anyio_backend: object, tmp_path: Path, prefix: str
) -> None:
    rows = 9000
    eligible, _dups = segment(tmp_path / "seg.csv", rows)
    late = sorted(r for r in eligible if r > 7000)[:200]  # rows the workers reach last
    opted = {f"138{r - 2:08d}" for r in late}
    with SimulatorThread(SimConfig()) as sim:
        engine, key = _service_engine(tmp_path, sim.port, prefix)
        dirs = [_worker_dir(tmp_path, f"w{i}", sim.port, tmp_path / "seg.csv", prefix) for i in range(2)]
        async with (
            serving(engine) as (url, svc),
            httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=30) as c,
        ):
            procs = [_worker(d) for d in dirs]
            await _until(lambda: _true(len(sim.log) > 1000), "the blast started", 60)
            ids: list[str] = []

            async def api() -> None:  # transactional traffic as fast as the service takes it
                for i in range(30):
                    body = {
                        "priority": "transactional",
                        "messages": [
                            {
                                "to": f"1390000{i:02d}{j:02d}",
                                "template": "code",
                                "fields": {"code": f"{j:04d}"},
                            }
                            for j in range(100)
                        ],
                    }
                    r = await c.post("/v1/messages", json=body)
                    assert r.status_code == 202, r.text
                    ids.extend(m["id"] for m in r.json()["messages"])

            async with anyio.create_task_group() as tg:
                tg.start_soon(api)
                await anyio.sleep(0.5)
                replies = {"replies": [{"from": n, "text": "退订", "at": time.time()} for n in sorted(opted)]}
                raw = json.dumps(replies, ensure_ascii=False).encode()
                posted = time.monotonic()
                r = await c.post("/v1/webhooks/sim/replies", content=raw, headers=_signed(raw))
                assert r.json() == {"received": len(opted), "optouts": len(opted)}
            for p in procs:
                await _wait(p, 90)

            async def all_sent() -> bool:
                views = [(await c.get(f"/v1/messages/{i}")).json()["state"] for i in ids[-100:]]
                return all(s == "submitted" for s in views)

            await _until(all_sent, "every API message submitted", 30)
            gate = svc.lanes.streams["transactional"].gate
            assert gate is not None and gate.charges > 0, (
                "the API's requests were charged on the shared budget"
            )
            shared = svc.shared
            assert shared is not None and shared.shared == len(opted)
        peak = sim.max_parts_per_second()
        log = list(sim.log)
    api_numbers = {to for _, _, to, _, _ in log if to.startswith("+86139")}
    assert len(api_numbers) == 3000, "every API message arrived"
    assert peak["cm"] <= RATE, f"{peak['cm']} parts arrived in one second, over {RATE}"
    late_sends = [
        (round(t - posted, 2), to) for t, _, to, _, _ in log if to[3:] in opted and t > posted + 1.0
    ]
    assert not late_sends, (
        f"{len(late_sends)} opted-out recipients sent more than 1 s after the reply: {late_sends[:3]}"
    )
    sent_opted = {to[3:] for _, _, to, _, _ in log} & opted
    suppressed: Counter[str] = Counter()
    for d in dirs:
        ledger = Ledger(d / "pigeon.db")
        try:
            suppressed.update(ledger.counts("crash").reasons.get("suppressed", {}))
        finally:
            ledger.close()
    assert suppressed["opted_out"] == len(opted) - len(sent_opted) > 150
    received = Counter(to for _, _, to, _, _ in log)
    assert max(received.values()) == 1


def _true(x: bool) -> Any:
    async def f() -> bool:
        return x

    return f()


@asyncio_only
async def test_caps_count_across_the_blast_and_the_api_and_a_workers_opt_out_reaches_the_service(
    anyio_backend: object, tmp_path: Path, prefix: str
) -> None:
    rows = 1500
    eligible, _dups = segment(tmp_path / "seg.csv", rows)
    first = sorted(eligible)[:40]  # the API reaches them first: the blast finds them capped
    later = sorted(eligible)[-40:]  # the blast reaches them first: the API finds them capped
    number = lambda r: f"138{r - 2:08d}"  # noqa: E731
    with SimulatorThread(SimConfig()) as sim:
        engine, key = _service_engine(tmp_path, sim.port, prefix)
        d = _worker_dir(tmp_path, "w0", sim.port, tmp_path / "seg.csv", prefix)
        async with (
            serving(engine, clock=_DayClock()) as (url, svc),
            httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=30) as c,
        ):

            async def marketing(rows_: list[int]) -> list[dict[str, Any]]:
                body = {
                    "priority": "marketing",
                    "messages": [{"to": number(r), "text": "周末特惠"} for r in rows_],
                }
                r = await c.post("/v1/messages", json=body)
                assert r.status_code == 202, r.text
                return list(r.json()["messages"])

            async def settled(ms: list[dict[str, Any]], state: str) -> bool:
                got = [(await c.get(f"/v1/messages/{m['id']}")).json() for m in ms]
                return all(v["state"] == state for v in got) and got

            sent = await marketing(first)
            assert all(m["state"] == "queued" for m in sent), sent[:2]
            await _until(lambda: settled(sent, "submitted"), "the API's marketing messages sent")
            await _wait(_worker(d))
            held = await marketing(later)
            views = await _until(lambda: settled(held, "suppressed"), "the API's messages held back")
            assert {v["reason"] for v in views} == {"capped"}
            # An opt-out a worker heard on its bind (as its MO handler shares it) reaches the service.
            worker = RedisCoordinator(RedisConfig(url=URL, prefix=prefix), CoordinatorContext(worker="mo"))
            try:
                await worker.add_optouts("crash", [str(number_key("13900139000"))])
            finally:
                await worker.aclose()
            assert svc.store is not None
            store = svc.store
            await _until(
                lambda: _true(bool(store.optout_records(["+8613900139000"]))), "the service's store has it", 5
            )
            refused = await marketing_to(c, "13900139000")
            assert (refused["state"], refused["reason"]) == ("suppressed", "opted_out")
        log = list(sim.log)
    received = Counter(to for _, _, to, _, _ in log)
    assert max(received.values()) == 1, "a number got two marketing messages in a day"
    for r in first + later:
        assert received["+86" + number(r)] == 1
    ledger = Ledger(d / "pigeon.db")
    try:
        reasons = ledger.counts("crash").reasons.get("suppressed", {})
    finally:
        ledger.close()
    assert reasons.get("capped", 0) >= len(first)


async def marketing_to(c: httpx.AsyncClient, to: str) -> dict[str, Any]:
    r = await c.post(
        "/v1/messages", json={"priority": "marketing", "messages": [{"to": to, "text": "周末特惠"}]}
    )
    assert r.status_code == 202, r.text
    return dict(r.json()["messages"][0])


@asyncio_only
async def test_api_messages_wait_while_redis_is_down_and_none_is_lost(
    anyio_backend: object, tmp_path: Path
) -> None:
    from tests.integration.test_coordinated_send import _free_port, _redis_server

    port = _free_port()
    data = tmp_path / "redis"
    data.mkdir()
    server = _redis_server(port, data)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        with SimulatorThread(SimConfig()) as sim:
            engine, key = _service_engine(tmp_path, sim.port, "pigeon", url)
            async with (
                serving(engine, clock=_DayClock()) as (base, _svc),
                httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {key}"}, timeout=30) as c,
            ):

                async def post(priority: str, start_: int, n: int) -> list[str]:
                    body = {
                        "priority": priority,
                        "messages": [{"to": f"1370000{start_ + i:04d}", "text": "您好"} for i in range(n)],
                    }
                    r = await c.post("/v1/messages", json=body)
                    assert r.status_code == 202, r.text
                    return [m["id"] for m in r.json()["messages"]]

                async def states(ids: list[str]) -> Counter[str]:
                    return Counter([(await c.get(f"/v1/messages/{i}")).json()["state"] for i in ids])

                before = await post("transactional", 0, 10)
                await _until(lambda: _all(states(before), "submitted"), "sent while Redis answers")
                server.send_signal(signal.SIGKILL)
                server.wait()
                arrived = len(sim.log)
                waiting = await post("transactional", 100, 50) + await post("marketing", 200, 50)
                await anyio.sleep(1.5)
                assert len(sim.log) == arrived, "nothing is sent without its charge and check"
                assert (await states(waiting)) == Counter({"queued": 100})
                r = await c.get("/readyz")
                assert r.status_code in (200, 503)
                server = _redis_server(port, data)
                await _until(lambda: _all(states(waiting), "submitted"), "sent once Redis answers again", 20)
            log = list(sim.log)
    finally:
        server.kill()
        server.wait()
    received = Counter(to for _, _, to, _, _ in log)
    assert len(received) == 110 and max(received.values()) == 1, "every message once, none lost"


async def _all(states: Any, state: str) -> bool:
    got = await states
    return set(got) == {state}


@asyncio_only
async def test_a_restarted_service_records_the_opt_outs_workers_shared_while_it_was_down(
    anyio_backend: object, tmp_path: Path, prefix: str
) -> None:
    engine, _key = _service_engine(tmp_path, 9, prefix)

    async def share(number: str) -> None:  # as a worker's MO handler shares an R it read
        c = RedisCoordinator(RedisConfig(url=URL, prefix=prefix), CoordinatorContext(worker="mo"))
        try:
            await c.add_optouts("crash", [str(number_key(number))])
        finally:
            await c.aclose()

    async with serving(engine) as (_url, svc):
        await share("13900139001")
        assert svc.store is not None
        store = svc.store
        await _until(lambda: _true(bool(store.optout_records(["+8613900139001"]))), "read while up", 5)
    await share("13900139002")  # while the service is down
    async with serving(engine) as (_url, svc):
        assert svc.store is not None
        store = svc.store
        await _until(lambda: _true(bool(store.optout_records(["+8613900139002"]))), "read after a restart", 5)


@asyncio_only
async def test_the_services_start_uploads_its_stores_opt_outs_for_the_workers(
    anyio_backend: object, tmp_path: Path, prefix: str
) -> None:
    """An opt-out in the service's store (imported before, never shared) is refused by a worker's
    claim once the service started; a restart uploads nothing more."""
    from engine.state.store import OptOutRecord
    from engine.state.store.sqlite import SqliteStore

    engine, _key = _service_engine(tmp_path, 9, prefix)
    store = SqliteStore(engine.parent / "pigeon.db")
    store.add_optouts([OptOutRecord("+8613900139005", "import")])
    store.close()
    worker = RedisCoordinator(RedisConfig(url=URL, prefix=prefix), CoordinatorContext(worker="w"))
    key = str(number_key("13900139005"))
    try:
        assert await worker.claim("before", [key]) == [Claim.NEW], "not shared before the start"
        async with serving(engine) as (_url, svc):
            assert svc.shared is not None
            up = svc.shared.uploaded
            assert up is not None
            assert up.rows == 1
            assert await worker.claim("blast", [key]) == [Claim.OPTED_OUT]
        async with serving(engine) as (_url, svc):
            assert svc.shared is not None
            again = svc.shared.uploaded
            assert again is not None
            assert again.rows == 0
    finally:
        await worker.aclose()


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_the_service_refuses_the_redis_coordinator_on_trio(
    anyio_backend: object, tmp_path: Path
) -> None:
    from engine.core.config import load_engine
    from engine.core.errors import ConfigError
    from engine.service.core import open_service

    engine, _ = _service_engine(tmp_path, 9, "pigeon")
    with pytest.raises((ConfigError, BaseExceptionGroup)) as raised:
        async with open_service(load_engine(engine), run_dir=tmp_path / "runs"):
            pass
    assert "asyncio only" in _flat(raised.value)


def _flat(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return " ".join(_flat(e) for e in exc.exceptions)
    return str(exc)
