"""Picks the coordinator a run uses: the embedded one unless the engine names a registered plugin."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from engine.coordination.contract import Coordinator, CoordinatorContext
from engine.coordination.embedded import EmbeddedCoordinator
from engine.core.errors import ConfigError
from engine.core.registries import CoordinatorRegistry

__all__ = ["EMBEDDED", "open_coordinator"]

EMBEDDED = "embedded"
"""The default coordinator's name (one host)."""


def open_coordinator(
    registry: CoordinatorRegistry,
    name: str = EMBEDDED,
    options: Mapping[str, Any] | None = None,
    ctx: CoordinatorContext | None = None,
    *,
    file: str = "<engine config>",
) -> Coordinator:
    """Build the coordinator ``name`` (``embedded``, or one a plugin registered) with ``options``
    (the ``[coordinator.options]`` table of ``file``, named in errors).

    Call inside the run's event loop: a plugin's factory may create async clients.
    """
    ctx = ctx or CoordinatorContext()
    if name == EMBEDDED:
        if options:
            raise ConfigError(
                file, "coordinator.options", f"{EMBEDDED!r} takes no options: {sorted(options)}"
            )
        return EmbeddedCoordinator(ctx)
    if name not in registry:
        known = ", ".join([EMBEDDED, *registry.names()])
        raise ConfigError(
            file,
            "coordinator.plugin",
            f"{name!r} is not registered (known: {known}): install its plugin",
        )
    reg = registry.get(name)
    try:
        config = msgspec.convert(dict(options or {}), reg.config_type)
    except msgspec.ValidationError as exc:
        raise ConfigError(file, "coordinator.options", f"coordinator {name!r}: {exc}") from exc
    coordinator: Coordinator = reg.factory(config, ctx)
    return coordinator
