"""Reading a JetStream stream through a durable pull consumer: batches fetched, acknowledged once taken."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError, TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig
from nats.js.errors import NotFoundError

from pigeon import EngineError, EventDelivery, EventSourceContext
from plugins.event_queues import unreachable
from plugins.events_nats.config import JetStreamConfig

__all__ = ["JetStreamSource"]


class JetStreamSource:
    """Deliveries from a durable pull consumer; each event acknowledged once the engine took its batch."""

    def __init__(self, config: JetStreamConfig, ctx: EventSourceContext) -> None:
        self.config = config
        self.name = ctx.name
        self._nc: Client | None = None

    async def _consumer(self) -> nats.js.JetStreamContext.PullSubscription:
        cfg = self.config
        if self._nc is None or self._nc.is_closed:
            # no endless reconnects inside the client: an unreachable server is the service's to retry
            self._nc = await nats.connect(
                cfg.url, connect_timeout=5, allow_reconnect=False, max_reconnect_attempts=0
            )
        js = self._nc.jetstream()
        try:
            await js.stream_info(cfg.stream)
        except NotFoundError:
            await js.add_stream(StreamConfig(name=cfg.stream, subjects=[cfg.subject]))
        consumer = ConsumerConfig(
            durable_name=cfg.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=cfg.ack_wait,
            deliver_policy=DeliverPolicy.NEW if cfg.deliver == "new" else DeliverPolicy.ALL,
            filter_subject=cfg.subject,
            max_ack_pending=max(1000, 4 * cfg.batch),
        )
        return await js.pull_subscribe(cfg.subject, durable=cfg.durable, stream=cfg.stream, config=consumer)

    def _delivery(self, msgs: Sequence[Msg]) -> EventDelivery:
        nc = self._nc
        assert nc is not None

        async def ack() -> None:
            try:
                for m in msgs:  # each ack is a publish without a reply; one flush makes sure all went out
                    await m.ack()
                await nc.flush()
            except (NatsError, OSError) as exc:  # (delivered again after ack_wait: ids make it harmless)
                raise self._unreachable(exc) from None

        return EventDelivery([m.data for m in msgs], ack)

    async def deliveries(self) -> AsyncIterator[EventDelivery]:
        """Batches of events as the durable consumer is given them (redeliveries after a crash first)."""
        cfg = self.config
        try:
            sub = await self._consumer()
            while True:
                try:
                    msgs = await sub.fetch(cfg.batch, timeout=cfg.block)
                except NatsTimeout:
                    continue
                if msgs:
                    yield self._delivery(msgs)
        except (NatsError, OSError) as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: BaseException) -> EngineError:
        return unreachable(self.name, "NATS (JetStream)", self.config.url, exc)

    async def aclose(self) -> None:
        """Close the connection."""
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()
