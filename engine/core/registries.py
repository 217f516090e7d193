"""Registries that plugins fill at set-up: named factories with their config types, per kind."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

from engine.core.errors import PluginContractError

__all__ = [
    "DISABLE_ENV",
    "CoordinatorRegistry",
    "EventSourceRegistry",
    "GatewayRegistry",
    "Registration",
    "Registry",
    "ResolverRegistry",
    "SourceRegistry",
    "WebhookParserRegistry",
]

DISABLE_ENV = "PIGEON_DISABLE_PLUGINS"
"""Comma-separated entry-point names that must not be loaded (added to the config's list)."""

F = TypeVar("F", bound=Callable[..., Any])


class _NoOptions(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Config type for factories that take no options."""


@dataclass(frozen=True, slots=True)
class Registration(Generic[F]):
    """One registered factory."""

    name: str
    factory: F
    config_type: type[msgspec.Struct]
    plugin: str
    description: str


class Registry(Generic[F]):
    """Factories of one kind, by name; duplicate names are a contract error naming both plugins."""

    kind = "factory"

    def __init__(self) -> None:
        self._items: dict[str, Registration[F]] = {}
        self._plugin = "<direct>"

    def add(
        self,
        name: str,
        factory: F,
        config_type: type[msgspec.Struct] | None = None,
        *,
        description: str = "",
    ) -> None:
        """Register ``factory`` under ``name``; ``config_type`` validates its config section."""
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise PluginContractError(
                f"plugin {self._plugin!r} registered {self.kind} name {name!r}: "
                "use letters, digits, '-' and '_'"
            )
        if name in self._items:
            other = self._items[name].plugin
            raise PluginContractError(
                f"{self.kind} {name!r} is registered by both {other!r} and {self._plugin!r}; "
                f"disable one of them with {DISABLE_ENV}"
            )
        if not callable(factory):
            raise PluginContractError(
                f"plugin {self._plugin!r} registered {self.kind} {name!r} with a non-callable factory"
            )
        ctype = config_type or _NoOptions
        if not (isinstance(ctype, type) and issubclass(ctype, msgspec.Struct)):
            raise PluginContractError(
                f"plugin {self._plugin!r}: config_type of {self.kind} {name!r} must be a msgspec.Struct"
            )
        self._items[name] = Registration(name, factory, ctype, self._plugin, description)

    def get(self, name: str) -> Registration[F]:
        """The registration for ``name``; KeyError if none."""
        return self._items[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def items(self) -> Iterable[Registration[F]]:
        """All registrations."""
        return self._items.values()


class SourceRegistry(Registry[Callable[..., Any]]):
    """Segment sources by name (``csv``, ``jsonl``…)."""

    kind = "source"


class GatewayRegistry(Registry[Callable[..., Any]]):
    """Gateways by plugin name (``blackhole``, ``file``, ``http``…)."""

    kind = "gateway"


class ResolverRegistry(Registry[Callable[..., Any]]):
    """Carrier resolvers by name."""

    kind = "carrier resolver"


class WebhookParserRegistry(Registry[Callable[..., Any]]):
    """Webhook parsers by name (the service's ``/v1/webhooks/{gateway}/…``)."""

    kind = "webhook parser"


class CoordinatorRegistry(Registry[Callable[..., Any]]):
    """Coordinators by name (``redis``…): where the workers of one campaign share leases, rate
    budgets and per-recipient claims. ``embedded`` (one host) is the engine's own, never registered."""

    kind = "coordinator"


class EventSourceRegistry(Registry[Callable[..., Any]]):
    """Event sources by name (``redis_streams``…): message queues whose events feed the flows."""

    kind = "event source"
