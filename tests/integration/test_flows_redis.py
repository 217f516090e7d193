"""Events from a Redis Stream (the ``redis_streams`` event source) into ``pigeon serve``'s flows, on the real Redis
on loopback: each event taken once, acknowledged after it is in the store; what the consumer was given before a
crash and never acknowledged is taken on restart; entries that are not events are counted. Asyncio only: redis-py's
client is asyncio-only (on trio the service refuses to start, saying so — tested here)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import anyio
import pytest
import redis

from engine.core.config import load_engine
from engine.core.errors import ConfigError
from engine.service.core import open_service
from loadtests.flow_shop import FLOWS, caught_up
from loadtests.simulator import Simulator
from tests.integration.service_harness import serving, write_engine

pytestmark = pytest.mark.anyio
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])

URL = "redis://127.0.0.1:6379/13"  # this test's own database


def _event(i: int) -> bytes:
    return json.dumps(
        {
            "id": f"r{i}",
            "type": "order_shipped",
            "phone": f"1390013{i:04d}",
            "order_id": f"R{i}",
            "fields": {"item": "围巾", "tracking": f"YT{i}"},
        }
    ).encode()


@asyncio_only
async def test_events_from_a_redis_stream_are_taken_once_and_acknowledged(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    r = redis.Redis.from_url(URL)
    stream = f"p20:events:{uuid.uuid4().hex}"
    try:
        r.xgroup_create(stream, "pigeon", id="$", mkstream=True)
        # delivered to this consumer before "a crash", never acknowledged: taken on start
        for i in range(5):
            r.xadd(stream, {"event": _event(i)})
        got = r.xreadgroup("pigeon", "serve-a", {stream: ">"}, count=100)
        assert len(got[0][1]) == 5
        assert r.xpending(stream, "pigeon")["pending"] == 5
        (tmp_path / "flows").mkdir()
        (tmp_path / "flows" / "shipped.toml").write_text(FLOWS["shipped"], encoding="utf-8")
        extra = f"""
[service.flows]
poll = 0.05
[service.flows.source]
plugin = "redis_streams"
[service.flows.source.options]
url = "{URL}"
stream = "{stream}"
consumer = "serve-a"
block = 0.2
"""
        engine, _ = write_engine(tmp_path, simulator.port, templates=extra)
        async with serving(engine) as (_, svc):
            for i in range(5, 25):
                r.xadd(stream, {"event": _event(i)})
            r.xadd(stream, {"event": _event(7)})  # sent twice by the shop: one message
            r.xadd(stream, {"event": b"{not json"})
            r.xadd(stream, {"other": b"x"})
            await _drained(r, stream, simulator)
            await caught_up(svc)
            assert svc.flows is not None
            assert svc.flows.book.counts.events == {"accepted": 25, "duplicate": 1, "rejected": 2}
        tos = sorted(to for _, _, to, *_ in simulator.log)
        assert tos == [f"+861390013{i:04d}" for i in range(25)]
    finally:
        r.delete(stream)
        r.close()


async def _drained(r: redis.Redis, stream: str, simulator: Simulator) -> None:
    """Until every entry is acknowledged and the 25 messages reached the simulator."""
    with anyio.fail_after(20):
        while True:
            if not r.xpending(stream, "pigeon")["pending"] and len(simulator.log) >= 25:
                return
            await anyio.sleep(0.05)


async def test_a_wrong_event_source_stops_the_service_before_it_starts(
    anyio_backend: str, tmp_path: Path, simulator: Simulator
) -> None:
    cases = [
        ('[service.flows.source]\nplugin = "kafka"\n', "no event source 'kafka'"),
        (
            '[service.flows.source]\nplugin = "redis_streams"\noptions = { strem = "x" }\n',
            "did you mean `stream`",
        ),
    ]
    if anyio_backend == "trio":  # every queue source's client is asyncio-only
        plugins = ("redis_streams", "nats_jetstream", "rabbitmq")
        cases += [(f'[service.flows.source]\nplugin = "{p}"\n', "needs the asyncio backend") for p in plugins]
    for n, (extra, says) in enumerate(cases):
        (tmp_path / f"c{n}").mkdir()
        engine, _ = write_engine(tmp_path / f"c{n}", simulator.port, templates=extra)
        found = ""
        try:
            async with open_service(load_engine(engine), run_dir=tmp_path / f"c{n}" / "runs"):
                pass
        except BaseException as exc:  # (raised in the service's task group: perhaps in a group)
            found = _flat(exc)
        assert "service.flows.source" in found or ": backend: " in found, found
        assert says in found, found


def _flat(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return " | ".join(_flat(e) for e in exc.exceptions)
    assert isinstance(exc, ConfigError), repr(exc)
    return str(exc)
