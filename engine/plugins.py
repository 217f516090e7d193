"""The plugin host: loads the ``pigeon`` entry points, honours the disable list, and keeps registries."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any, Generic, TypeVar

import msgspec
import pluggy

from engine import hookspecs
from engine.errors import PluginContractError, PluginLoadError

__all__ = [
    "DISABLE_ENV",
    "GatewayRegistry",
    "PluginHost",
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


_HOOKS: Mapping[str, str] = {
    "register_sources": "sources",
    "register_gateways": "gateways",
    "register_carrier_resolvers": "resolvers",
    "register_webhook_parsers": "webhook_parsers",
}


class PluginHost:
    """Creates the plugin manager, loads plugins, and fills the registries once.

    :param load_entrypoints: load every ``pigeon`` entry point (built-ins included). Tests of a
        single plugin pass False and hand the plugin in ``plugins``.
    :param disabled: entry-point names not to load (plus those in ``PIGEON_DISABLE_PLUGINS``).
    :param plugins: extra plugin objects (modules or instances with hook implementations).
    """

    def __init__(
        self,
        *,
        load_entrypoints: bool = True,
        disabled: Iterable[str] = (),
        plugins: Iterable[object] = (),
    ) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        env = os.environ.get(DISABLE_ENV, "")
        self.disabled = frozenset(disabled) | {n.strip() for n in env.split(",") if n.strip()}
        self.sources = SourceRegistry()
        self.gateways = GatewayRegistry()
        self.resolvers = ResolverRegistry()
        self.webhook_parsers = WebhookParserRegistry()
        if load_entrypoints:
            self._load_entrypoints()
        for plugin in plugins:
            name = getattr(plugin, "__name__", None) or type(plugin).__name__
            self.pm.register(plugin, name=name)
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginContractError(f"plugin {exc.plugin!r}: {exc}") from exc
        self._register()

    def _load_entrypoints(self) -> None:
        for ep in entry_points(group=hookspecs.PROJECT):
            if ep.name in self.disabled or self.pm.has_plugin(ep.name):
                continue
            try:
                module = ep.load()
            except Exception as exc:
                raise PluginLoadError(
                    f"plugin {ep.name!r} ({ep.value}) failed to import: "
                    f"{type(exc).__name__}: {exc}. Fix or uninstall it, or disable it with "
                    f"{DISABLE_ENV}={ep.name}"
                ) from exc
            try:
                self.pm.register(module, name=ep.name)
            except pluggy.PluginValidationError as exc:
                raise PluginContractError(f"plugin {ep.name!r}: {exc}") from exc

    def _register(self) -> None:
        # Each implementation is called on its own so a registry knows which plugin is adding:
        # a duplicate name can then name both plugins. These hooks run once, at set-up.
        for hook_name, attr in _HOOKS.items():
            registry: Registry[Any] = getattr(self, attr)
            caller = getattr(self.pm.hook, hook_name)
            for impl in reversed(caller.get_hookimpls()):
                registry._plugin = impl.plugin_name
                try:
                    impl.function(**{impl.argnames[0]: registry} if impl.argnames else {})
                except PluginContractError:
                    raise
                except Exception as exc:
                    raise PluginContractError(
                        f"plugin {impl.plugin_name!r} failed in {hook_name}: {type(exc).__name__}: {exc}"
                    ) from exc
            registry._plugin = "<direct>"

    def plugin_names(self) -> list[str]:
        """Names of the loaded plugins."""
        return sorted(name for name, _ in self.pm.list_name_plugin())

    def modules(self) -> dict[str, ModuleType | object]:
        """Loaded plugin objects by name."""
        return dict(self.pm.list_name_plugin())
