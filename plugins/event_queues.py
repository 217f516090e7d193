"""What the message-queue event sources share: the factory that checks for asyncio and the client, and
the error that says the queue did not answer."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, cast

from pigeon import ConfigError, EngineError, EventSource, EventSourceContext

__all__ = ["factory", "unreachable"]


def factory(
    plugin: str, module: str, cls: str, client: str, extra: str
) -> Callable[[Any, EventSourceContext], EventSource]:
    """The ``plugin``'s factory: ``module.cls(config, ctx)`` when the service runs on asyncio and
    ``client`` is installed; else a :class:`ConfigError` saying what to change. The factory is
    called in the service's loop, before the service starts."""

    def make(config: Any, ctx: EventSourceContext) -> EventSource:
        import sniffio

        if sniffio.current_async_library() != "asyncio":
            raise ConfigError(
                "<engine config>",
                "backend",
                f"the {plugin!r} event source needs the asyncio backend ({client} is asyncio-only): "
                'set backend = "asyncio" in the engine file, or `pigeon serve --backend asyncio`',
            )
        try:  # the client is an optional extra: every other plugin loads without it
            source = importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(
                "<engine config>",
                "service.flows.source.plugin",
                f"{plugin!r} needs {client} ({exc}): pip install 'pigeon-sms[{extra}]'",
            ) from exc
        return cast(EventSource, getattr(source, cls)(config, ctx))

    return make


def unreachable(source: str, server: str, url: str, exc: BaseException) -> EngineError:
    """The error the service logs (and tries again after) when the queue's server did not answer;
    the URL without its credentials."""
    return EngineError(
        f"event source {source!r}: {server} at {url.rpartition('@')[2]} did not answer "
        f"({type(exc).__name__}: {exc}); is it running? (tried again in a moment)"
    )
