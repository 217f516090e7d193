"""Consuming a RabbitMQ queue: what arrived taken as one batch, acknowledged with one ``multiple`` ack."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import AMQPException

from pigeon import EngineError, EventDelivery, EventSourceContext
from plugins.event_queues import unreachable
from plugins.events_rabbitmq.config import QueueConfig

__all__ = ["QueueSource"]

_FAULTS = (AMQPException, OSError, TimeoutError)


class QueueSource:
    """Deliveries from one consumer on the queue; a crash before the ack makes RabbitMQ requeue them."""

    def __init__(self, config: QueueConfig, ctx: EventSourceContext) -> None:
        self.config = config
        self.name = ctx.name
        self._conn: AbstractRobustConnection | None = None

    def _delivery(self, msgs: Sequence[AbstractIncomingMessage]) -> EventDelivery:
        last = msgs[-1]

        async def ack() -> None:
            try:  # one frame: this one and every earlier unacknowledged delivery on the channel
                await last.ack(multiple=True)
            except _FAULTS as exc:  # (requeued when the channel closes: the ids make it harmless)
                raise self._unreachable(exc) from None

        return EventDelivery([m.body for m in msgs], ack)

    async def deliveries(self) -> AsyncIterator[EventDelivery]:
        """Batches of what the queue delivered (what a crashed consumer held, requeued, first)."""
        cfg = self.config
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        try:
            await self.aclose()  # a retry after a fault: a new connection
            # not connect_robust: an outage surfaces here, and the service retries (and says so)
            self._conn = conn = await aio_pika.connect(cfg.url, timeout=5)  # type: ignore[assignment]
            channel = await conn.channel()
            await channel.set_qos(prefetch_count=cfg.batch)
            queue = await channel.declare_queue(cfg.queue, durable=True)
            if cfg.exchange:
                await queue.bind(cfg.exchange, routing_key=cfg.routing_key or cfg.queue)
            await queue.consume(inbox.put)
            while True:
                try:
                    first = await asyncio.wait_for(inbox.get(), cfg.block)
                except TimeoutError:
                    if channel.is_closed:
                        raise ConnectionError("the channel closed") from None
                    continue
                msgs = [first]
                while len(msgs) < cfg.batch and not inbox.empty():
                    msgs.append(inbox.get_nowait())
                yield self._delivery(msgs)
        except _FAULTS as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: BaseException) -> EngineError:
        return unreachable(self.name, "RabbitMQ", self.config.url, exc)

    async def aclose(self) -> None:
        """Close the connection (unacknowledged events go back to the queue)."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed:
            await conn.close()
