"""The plugin host: loads the ``pigeon`` entry points, honours the disable list, and keeps registries."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

import pluggy

from engine.core import hookspecs
from engine.core.errors import PluginContractError, PluginLoadError
from engine.core.registries import (
    DISABLE_ENV,
    CoordinatorRegistry,
    EventSourceRegistry,
    GatewayRegistry,
    Registry,
    ResolverRegistry,
    SourceRegistry,
    WebhookParserRegistry,
)

__all__ = ["DISABLE_ENV", "PluginHost"]


_HOOKS: Mapping[str, str] = {
    "register_sources": "sources",
    "register_gateways": "gateways",
    "register_carrier_resolvers": "resolvers",
    "register_webhook_parsers": "webhook_parsers",
    "register_coordinators": "coordinators",
    "register_event_sources": "event_sources",
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
        self.coordinators = CoordinatorRegistry()
        self.event_sources = EventSourceRegistry()
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
