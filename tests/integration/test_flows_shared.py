"""Two ``pigeon serve`` hosts sharing one timer store in Redis (``[service.flows] store = "redis"``).

Both are subprocesses with their own store files (as on their own hosts), one Redis (DB 11, a
prefix of the test's), one HTTP gateway simulator in this process whose log is the judge. A shop
posts 1,200 orders' events, half to each host; one host is SIGKILLed while the first steps fire.
Every step arrives once at (or after) its time, cancelled steps never, none twice; the steps the
killed host had handed over without a record are ``unknown`` (never resent), the others are fired
by the host left. Asyncio only (redis-py's client).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import pytest

pytest.importorskip("redis")

import redis

from loadtests.simulator import SimConfig, SimulatorThread
from tests.integration.redis_cluster import free_port_pair
from tests.integration.redis_prefix import own_redis
from tests.integration.service_harness import write_engine

URL = os.environ.get("PIGEON_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
ORDERS = 1200
FIRST, SECOND = 4.0, 8.0
"""Seconds from an order's creation to its two reminders."""

UNPAID = """
trigger = "order_created"
cancel_on = ["order_paid"]
[[steps]]
wait = "4s"
text = "亲爱的{name|亲}，您的订单{order|}还没有付款"
[[steps]]
wait = "4s"
text = "亲爱的{name|亲}，订单即将关闭"
"""
SHIPPED = """
trigger = "order_shipped"
[[steps]]
wait = "0s"
text = "您的订单已发货"
"""
EXTRA = """
[service.flows]
store = "redis"
lease = 2.0
poll = 0.1
batch = 200
max_per_second = 5000
"""

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _host(root: Path, name: str, sim_port: int, prefix: str) -> tuple[Path, str]:
    d = root / name
    d.mkdir()
    engine, key = write_engine(d, sim_port, templates=EXTRA)
    with engine.open("a", encoding="utf-8") as f:
        f.write(
            f'[coordinator]\nplugin = "redis"\n[coordinator.options]\nurl = "{URL}"\nprefix = "{prefix}"\n'
        )
    (d / "flows").mkdir()
    (d / "flows" / "unpaid.toml").write_text(UNPAID, encoding="utf-8")
    (d / "flows" / "shipped.toml").write_text(SHIPPED, encoding="utf-8")
    return d, key


def _serve(d: Path, port: int) -> subprocess.Popen[bytes]:
    with (d / "serve.log").open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", "--engine", "engine.toml", "--port", str(port)],
            cwd=d,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUTF8": "1"},
        )


def _ready(port: int, proc: subprocess.Popen[bytes], d: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, (d / "serve.log").read_text("utf-8")[-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError((d / "serve.log").read_text("utf-8")[-3000:])


def _phone(i: int) -> str:
    return f"138{i:08d}"


def test_two_hosts_fire_each_step_once_and_the_survivor_adopts_a_killed_host_s_timers(tmp_path: Path) -> None:
    try:
        r = redis.Redis.from_url(URL, socket_connect_timeout=1)
        r.ping()
    except redis.RedisError as exc:
        if os.environ.get("PIGEON_REQUIRE_REDIS"):
            pytest.fail(str(exc))
        pytest.skip(f"no Redis answers at {URL}")
    prefix = f"pigeon-test-{secrets.token_hex(4)}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with SimulatorThread(SimConfig(latency_ms=100)) as sim:  # steps stay in flight a while
            (d1, k1), (d2, k2) = (
                _host(tmp_path, "h1", sim.port, prefix),
                _host(tmp_path, "h2", sim.port, prefix),
            )
            p1, p2 = _free_port(), _free_port()
            procs += [_serve(d1, p1), _serve(d2, p2)]
            _ready(p1, procs[0], d1)
            _ready(p2, procs[1], d2)

            off = time.time() - time.monotonic()  # the simulator's log is on the monotonic clock
            t0 = float(int(time.time()) + 1)
            events: list[dict[str, object]] = []
            for i in range(ORDERS):
                o = f"T{i}"
                events.append(
                    {"id": f"{o}-c", "type": "order_created", "phone": _phone(i), "order_id": o, "at": t0}
                )
                if i % 3 == 0:  # paid at once: both reminders cancelled
                    events.append(
                        {"id": f"{o}-p", "type": "order_paid", "phone": _phone(i), "order_id": o, "at": t0}
                    )
                if i % 4 == 0:  # shipped: its step at once
                    events.append(
                        {"id": f"{o}-s", "type": "order_shipped", "phone": _phone(i), "order_id": o, "at": t0}
                    )
            # each host gets every other request; a cancel may go to the other host than its order
            hosts = [(p1, k1), (p2, k2)]
            for n, k in enumerate(range(0, len(events), 250)):
                port, key = hosts[n % 2]
                resp = httpx.post(
                    f"http://127.0.0.1:{port}/v1/events",
                    json={"events": events[k : k + 250]},
                    headers={"authorization": f"Bearer {key}"},
                    timeout=30,
                )
                assert resp.status_code == 200, resp.text
                assert resp.json()["rejected"] == 0
            posted = time.time()
            assert posted < t0 + FIRST - 1, "the shop posted too slowly for the test's timing"
            again = httpx.post(  # a retry of the first request to the other host: duplicates only
                f"http://127.0.0.1:{p2}/v1/events",
                json={"events": events[:250]},
                headers={"authorization": f"Bearer {k2}"},
                timeout=30,
            ).json()
            assert again["duplicates"] == 250

            # kill host 1 while the first reminders fire
            deadline = time.monotonic() + 30
            while (
                time.monotonic() < deadline
                and sum(1 for t, *_ in sim.log if t + off >= t0 + FIRST - 0.01) < 150
            ):
                time.sleep(0.002)
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait(10)

            expected = {_phone(i): (2 if i % 3 else 0) + (1 if i % 4 == 0 else 0) for i in range(ORDERS)}
            total = sum(expected.values())
            base = f"{prefix}:{{flows}}"

            def unknown() -> dict[str, int]:
                out: Counter[str] = Counter()
                for key in r.scan_iter(match=f"{base}:t:*", count=1000):
                    h = r.hmget(key, "c", "r")
                    if h[1] == b"unknown:fired_by_dead_host":
                        out[h[0].decode().removeprefix("+86")] += 1
                return out

            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                pending = sum(r.zcard(k) for k in r.scan_iter(match=f"{base}:p:*")) + r.zcard(
                    f"{base}:firing"
                )
                if pending == 0 and len(sim.log) >= total - sum(unknown().values()):
                    break
                time.sleep(0.2)
            time.sleep(0.5)  # answers on their way
            log2 = (d2 / "serve.log").read_text("utf-8")
            lost = unknown()
            got = Counter(to.removeprefix("+86") for _, _, to, *_ in sim.log)
            times: dict[str, list[float]] = defaultdict(list)
            for t, _, to, *_ in sim.log:
                times[to.removeprefix("+86")].append(t + off)

            # never twice, cancelled never, every other step arrived (or is unknown: the killed host
            # may have handed it to the gateway — never resent blind)
            for phone, want in expected.items():
                assert want - lost[phone] <= got[phone] <= want, (
                    phone,
                    want,
                    got[phone],
                    lost[phone],
                    log2[-2000:],
                )
            assert set(got) <= set(expected)
            # the killed host had steps in flight: adopted by the survivor, none resent
            assert 0 < sum(lost.values()) <= 1000, lost
            assert "flows.adopted" in log2
            print(f"{len(sim.log)} messages of {total}; {sum(lost.values())} unknown (the killed host's)")
            # at their time: a reminder never before it was due; the survivor's within a few seconds
            for i in range(1, ORDERS, 3):  # (orders not paid)
                phone = _phone(i)
                if lost[phone]:
                    continue
                first, second = sorted(times[phone])[1:] if i % 4 == 0 else sorted(times[phone])
                assert t0 + FIRST - 0.01 <= first <= t0 + FIRST + 10
                assert t0 + SECOND - 0.01 <= second <= t0 + SECOND + 10
            # both hosts fired steps (the fired timers keep their host's name)
            owners = Counter(r.hget(k, "o") for k in r.scan_iter(match=f"{base}:t:*", count=1000))
            assert len([o for o in owners if o]) == 2, owners
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
        keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            r.delete(*keys)
        r.close()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_with_redis_down_events_are_refused_503_and_firing_waits_then_every_step_goes_once(
    tmp_path: Path,
) -> None:
    import anyio

    from loadtests._service import serving

    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    port = free_port_pair()
    proc = own_redis(server, port, tmp_path)
    try:
        with SimulatorThread(SimConfig()) as sim:
            d, key = _host(tmp_path, "h", sim.port, "pigeon")
            text = (d / "engine.toml").read_text("utf-8").replace(URL, f"redis://127.0.0.1:{port}/0")
            (d / "engine.toml").write_text(text + "timeout = 0.5\n", encoding="utf-8")
            auth = {"authorization": f"Bearer {key}"}
            async with serving(d / "engine.toml") as (url, _svc), httpx.AsyncClient(base_url=url) as c:
                now = time.time()

                def batch(tag: str, n: int, first: int) -> dict[str, object]:
                    return {
                        "events": [
                            {"id": f"{tag}{i}", "type": "order_created", "phone": _phone(first + i),
                             "order_id": f"{tag}{i}", "at": now - FIRST + 2}
                            for i in range(n)
                        ]
                    }  # fmt: skip

                r1 = await c.post("/v1/events", json=batch("a", 50, 0), headers=auth)
                assert r1.status_code == 200 and r1.json()["scheduled"] == 100
                proc.kill()  # SIGKILL: the first reminders are due in 2 s
                proc.wait(10)
                r2 = await c.post("/v1/events", json=batch("b", 20, 1000), headers=auth)
                assert r2.status_code == 503, r2.text  # refused, not lost: the shop sends it again
                await anyio.sleep(3.0)
                assert len(sim.log) == 0  # due, but the store is down: nothing fired
                proc = own_redis(server, port, tmp_path)
                with anyio.fail_after(20):
                    while True:
                        r3 = await c.post("/v1/events", json=batch("b", 20, 1000), headers=auth)
                        if r3.status_code == 200:
                            break
                        await anyio.sleep(0.2)
                assert r3.json()["accepted"] == 20  # none was taken while Redis was down
                for _ in range(300):  # both reminders of all 70 orders (the second ones due at now + 6 s)
                    if len(sim.log) >= 140:
                        break
                    await anyio.sleep(0.1)
                await anyio.sleep(0.5)
                tos = Counter(to for _, _, to, *_ in sim.log)
                assert len(tos) == 70 and set(tos.values()) == {2}, tos  # every step once
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_the_redis_store_without_a_redis_coordinator_refuses_to_start_saying_what_to_set(
    tmp_path: Path,
) -> None:
    from engine.core.errors import ConfigError
    from loadtests._service import serving

    d = tmp_path / "h"
    d.mkdir()
    engine, _ = write_engine(d, 9, templates=EXTRA)  # no [coordinator]: embedded
    (d / "flows").mkdir()
    (d / "flows" / "unpaid.toml").write_text(UNPAID, encoding="utf-8")
    with pytest.raises(Exception) as info:  # noqa: PT011 (the service's task group may wrap it)
        async with serving(engine):
            pass
    errors = info.value.exceptions if isinstance(info.value, BaseExceptionGroup) else [info.value]
    while any(isinstance(e, BaseExceptionGroup) for e in errors):
        errors = [x for e in errors for x in (e.exceptions if isinstance(e, BaseExceptionGroup) else [e])]
    (err,) = [e for e in errors if isinstance(e, ConfigError)]
    assert "service.flows.store" in str(err) and 'plugin = "redis"' in str(err)
