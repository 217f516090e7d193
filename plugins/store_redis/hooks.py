"""Registers the ``redis`` coordinator."""

from __future__ import annotations

from pigeon import ConfigError, Coordinator, CoordinatorContext, CoordinatorRegistry, hookimpl
from plugins.store_redis.config import RedisConfig

__all__ = ["register_coordinators"]


def _make(config: RedisConfig, ctx: CoordinatorContext) -> Coordinator:
    try:  # the client is an optional extra: every other plugin loads without it
        from plugins.store_redis.coordinator import RedisCoordinator
    except ImportError as exc:
        raise ConfigError(
            "<engine config>",
            "coordinator.plugin",
            f"'redis' needs the redis client ({exc}): pip install 'pigeon-sms[redis]'",
        ) from exc
    return RedisCoordinator(config, ctx)


@hookimpl
def register_coordinators(coordinators: CoordinatorRegistry) -> None:
    """Register ``redis``."""
    coordinators.add(
        "redis", _make, RedisConfig, description="leases, GCRA budgets and recipient claims shared in Redis 7"
    )
