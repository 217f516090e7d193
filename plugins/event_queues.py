"""What the message-queue event sources share: the asyncio-only check and importing their client."""

from __future__ import annotations

import importlib
from types import ModuleType

from pigeon import ConfigError

__all__ = ["client_module"]


def client_module(plugin: str, module: str, client: str, extra: str) -> ModuleType:
    """``module`` (the plugin's part that imports ``client``), when the service runs on asyncio and
    the client is installed; else a :class:`ConfigError` saying what to change. Called by the
    factory, in the service's loop, before the service starts."""
    import sniffio

    if sniffio.current_async_library() != "asyncio":
        raise ConfigError(
            "<engine config>",
            "backend",
            f"the {plugin!r} event source needs the asyncio backend ({client} is asyncio-only): "
            'set backend = "asyncio" in the engine file, or `pigeon serve --backend asyncio`',
        )
    try:  # the client is an optional extra: every other plugin loads without it
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            "<engine config>",
            "service.flows.source.plugin",
            f"{plugin!r} needs {client} ({exc}): pip install 'pigeon-sms[{extra}]'",
        ) from exc
