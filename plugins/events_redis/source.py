"""Reading a Redis Stream through a consumer group: this consumer's unacknowledged entries, then new ones."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from pigeon import EngineError, EventDelivery, EventSourceContext
from plugins.event_queues import unreachable
from plugins.events_redis.config import StreamConfig

__all__ = ["StreamSource"]


class StreamSource:
    """Deliveries from ``XREADGROUP``; each acknowledged (``XACK``) once the engine took it."""

    def __init__(self, config: StreamConfig, ctx: EventSourceContext) -> None:
        self.config = config
        self.name = ctx.name
        self.client = aioredis.Redis.from_url(config.url, socket_timeout=config.block + 10)
        self._field = config.field.encode()

    async def _group(self) -> None:
        try:
            await self.client.xgroup_create(self.config.stream, self.config.group, id="$", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _delivery(self, entries: Sequence[tuple[bytes, dict[bytes, bytes] | None]]) -> EventDelivery:
        ids = [eid for eid, _ in entries]
        # an entry without the field is passed on empty: the engine counts it as rejected
        payloads = [(fields or {}).get(self._field, b"") for _, fields in entries]
        cfg, client = self.config, self.client

        async def ack() -> None:
            if ids:
                try:
                    await client.xack(cfg.stream, cfg.group, *ids)
                except RedisError as exc:  # (given again on restart: the event ids make it harmless)
                    raise self._unreachable(exc) from None

        return EventDelivery(payloads, ack)

    async def deliveries(self) -> AsyncIterator[EventDelivery]:
        """This consumer's pending entries (delivered before a crash, never acknowledged), then new ones."""
        cfg = self.config
        try:
            await self._group()
            after = "0"  # first: what this consumer was given and did not acknowledge
            while True:
                got: Any = await self.client.xreadgroup(
                    cfg.group,
                    cfg.consumer,
                    {cfg.stream: after},
                    count=cfg.batch,
                    block=None if after == "0" else int(cfg.block * 1000),
                )
                entries = _entries(got)
                if after == "0":
                    if not entries:
                        after = ">"
                        continue
                    # pending ones come in id order; a read from the last one's id goes on from there
                    yield self._delivery(entries)
                    continue
                if entries:
                    yield self._delivery(entries)
        except RedisError as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: BaseException) -> EngineError:
        return unreachable(self.name, "Redis", self.config.url, exc)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()


def _entries(got: Any) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
    """The entries of an ``XREADGROUP`` answer for one stream (RESP2: a list; RESP3: a dict);
    an entry deleted since it was delivered has no fields (None)."""
    if not got:
        return []
    if isinstance(got, dict):
        return [(e[0], e[1]) for e in next(iter(got.values()))[0]]
    return [(e[0], e[1]) for e in got[0][1]]
