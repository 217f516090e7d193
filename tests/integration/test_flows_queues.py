"""Events from NATS JetStream (``nats_jetstream``) and RabbitMQ (``rabbitmq``) into ``pigeon serve``'s flows, on the
real servers on loopback: what a crashed consumer was given and never acknowledged is delivered again and taken;
each event is taken once (an event sent twice by the shop is one message), acknowledged after it is in the store;
entries that are not events are counted. Asyncio only: both clients (nats-py, aio-pika) are asyncio-only — on trio
the service refuses to start, saying so (``test_flows_redis.py`` checks that for every queue source)."""

from __future__ import annotations

import uuid
from pathlib import Path

import aio_pika
import anyio
import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from engine.service.core import Service
from loadtests.flow_shop import FLOWS, caught_up
from loadtests.simulator import Simulator
from tests.integration.service_harness import serving, write_engine
from tests.integration.test_flows_redis import _event

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

NATS_URL = "nats://127.0.0.1:4222"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
SENT_TWICE = 7  # the shop publishes event 7 twice: one message
NOT_EVENTS = [b"{not json", b""]


def _engine(tmp_path: Path, port: int, source: str) -> Path:
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "shipped.toml").write_text(FLOWS["shipped"], encoding="utf-8")
    engine, _ = write_engine(tmp_path, port, templates=f"[service.flows]\npoll = 0.05\n{source}")
    return engine


async def _all_sent(svc: Service, simulator: Simulator) -> None:
    """Until the 25 messages reached the simulator and every event is counted."""
    assert svc.flows is not None
    with anyio.fail_after(20):
        while True:  # (no event tells when another process has sent)
            if len(simulator.log) >= 25 and sum(svc.flows.book.counts.events.values()) >= 28:
                break
            await anyio.sleep(0.05)
    await caught_up(svc)
    assert svc.flows.book.counts.events == {"accepted": 25, "duplicate": 1, "rejected": 2}
    tos = sorted(to for _, _, to, *_ in simulator.log)
    assert tos == [f"+861390013{i:04d}" for i in range(25)]


async def test_events_from_nats_jetstream_are_taken_once_and_redelivered_after_a_crash(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    tag = uuid.uuid4().hex[:12]
    stream, subject = f"P20_{tag}", f"p20.{tag}.events"
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    try:
        await js.add_stream(StreamConfig(name=stream, subjects=[subject]))
        # a consumer that "crashed": given 5 events, acknowledged none; JetStream delivers them again
        durable = ConsumerConfig(
            durable_name="pigeon",
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=1.0,
            deliver_policy=DeliverPolicy.NEW,
            filter_subject=subject,
        )
        crashed = await js.pull_subscribe(subject, durable="pigeon", stream=stream, config=durable)
        for i in range(5):
            await js.publish(subject, _event(i))
        assert len(await crashed.fetch(5, timeout=5)) == 5
        source = f"""[service.flows.source]
plugin = "nats_jetstream"
[service.flows.source.options]
url = "{NATS_URL}"
stream = "{stream}"
subject = "{subject}"
ack_wait = 1.0
block = 0.2
"""
        async with serving(_engine(tmp_path, simulator.port, source)) as (_, svc):
            for i in [*range(5, 25), SENT_TWICE]:
                await js.publish(subject, _event(i))
            for raw in NOT_EVENTS:
                await js.publish(subject, raw)
            await _all_sent(svc, simulator)
            with anyio.fail_after(10):  # the acks reach the server (published without a reply)
                while True:
                    info = await js.consumer_info(stream, "pigeon")
                    if not info.num_ack_pending:
                        break
                    await anyio.sleep(0.05)
        assert info.num_pending == 0 and info.num_ack_pending == 0
        assert info.delivered.stream_seq == 28  # 5 + 20 + the repeat + 2 that are not events
    finally:
        await js.delete_stream(stream)
        await nc.close()


async def test_events_from_rabbitmq_are_taken_once_and_requeued_after_a_crash(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    queue_name = f"p20.events.{uuid.uuid4().hex[:12]}"
    conn = await aio_pika.connect(AMQP_URL)
    try:
        channel = await conn.channel()
        queue = await channel.declare_queue(queue_name, durable=True)

        async def publish(body: bytes) -> None:
            await channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue_name
            )

        for i in range(5):
            await publish(_event(i))
        # a consumer that "crashed": took 5 events, acknowledged none, its connection dropped
        crashed = await aio_pika.connect(AMQP_URL)
        held = await (await crashed.channel()).get_queue(queue_name)
        got = [await held.get(no_ack=False, timeout=5) for _ in range(5)]
        assert all(m is not None for m in got)
        await crashed.close()  # → requeued
        source = f"""[service.flows.source]
plugin = "rabbitmq"
[service.flows.source.options]
url = "{AMQP_URL}"
queue = "{queue_name}"
block = 0.2
"""
        async with serving(_engine(tmp_path, simulator.port, source)) as (_, svc):
            for i in [*range(5, 25), SENT_TWICE]:
                await publish(_event(i))
            for raw in NOT_EVENTS:
                await publish(raw)
            await _all_sent(svc, simulator)
        # the service is closed: anything it had not acknowledged would be back in the queue
        left = await channel.declare_queue(queue_name, durable=True, passive=True)
        assert left.declaration_result.message_count == 0
    finally:
        await queue.delete(if_unused=False, if_empty=False)
        await conn.close()
