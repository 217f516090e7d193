"""Hook specifications of the ``pigeon`` plugin system; every hook runs at set-up time only.

Hooks return nothing and register factories on registry objects; the hot path calls the objects
those factories build, never ``pm.hook``. New arguments may be added to a hook in a minor version
(pluggy passes implementations only the arguments they name).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from engine.core.registries import (
        CoordinatorRegistry,
        EventSourceRegistry,
        GatewayRegistry,
        ResolverRegistry,
        SourceRegistry,
        WebhookParserRegistry,
    )

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "pigeon"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
"""Marker for plugin hook implementations: ``@hookimpl def register_gateways(gateways): ...``."""


@hookspec
def register_sources(sources: SourceRegistry) -> None:
    """Register segment source factories.

    Called once per process when the plugin host starts. Must not do I/O.

    :param sources: call ``sources.add(name, factory, config_type)``. ``factory(config, ctx)``
        receives the campaign's ``[segment]`` table converted to ``config_type`` (a
        ``msgspec.Struct``) and a :class:`~engine.pipeline.source.SourceContext`, and returns a
        :class:`~engine.pipeline.source.SegmentSource`.

    .. versionadded:: 0.1
    """


@hookspec
def register_gateways(gateways: GatewayRegistry) -> None:
    """Register gateway factories.

    Called once per process when the plugin host starts. Must not do I/O.

    :param gateways: call ``gateways.add(name, factory, config_type)``. ``factory(config, ctx)``
        receives the ``options`` table of a ``[gateways.<name>]`` section converted to
        ``config_type`` and a :class:`~engine.sending.gateway.GatewayContext`, and returns a
        :class:`~engine.sending.gateway.Gateway`. It is called inside the run's event loop, so it may
        create async clients, but it must not block.

    .. versionadded:: 0.1
    """


@hookspec
def register_carrier_resolvers(resolvers: ResolverRegistry) -> None:
    """Register carrier resolvers that override the prefix table (number portability, 携号转网).

    Called once per process when the plugin host starts. Must not do I/O.

    :param resolvers: call ``resolvers.add(name, factory, config_type)``. ``factory(config, ctx)``
        receives ``[routing.options.<name>]`` converted to ``config_type`` and ``None``, and returns
        a :class:`~engine.pipeline.stages.route.CarrierResolver`. A resolver runs only when the engine config
        lists it in ``[routing] resolvers``; it is called once per batch.

    .. versionadded:: 0.1
    """


@hookspec
def register_webhook_parsers(parsers: WebhookParserRegistry) -> None:
    """Register parsers for a provider's own delivery-report and MO-reply callbacks.

    Called once per process when the plugin host starts. Must not do I/O.

    :param parsers: call ``parsers.add(name, factory)``. ``factory(secret, gateway)`` receives the
        shared secret of ``[service.webhooks.<gateway>]`` (bytes, or None when none is configured)
        and the gateway's name, and returns a :class:`~engine.sending.webhooks.WebhookParser`: ``verify``
        (the provider's signature scheme), ``reports`` and ``replies``. An engine selects it with
        ``service.webhooks.<gateway>.parser = "<name>"``.

    .. versionadded:: 0.2
    """


@hookspec
def register_coordinators(coordinators: CoordinatorRegistry) -> None:
    """Register coordinators: the shared plane through which many workers of one campaign hold its
    lease, charge per-(gateway, carrier, lane) rate budgets and claim recipients.

    Called once per process when the plugin host starts. Must not do I/O.

    :param coordinators: call ``coordinators.add(name, factory, config_type)``. ``factory(config,
        ctx)`` receives the ``[coordinator]`` options converted to ``config_type`` and a
        :class:`~engine.coordination.contract.CoordinatorContext`, and returns a
        :class:`~engine.coordination.contract.Coordinator`. It is called inside the run's event loop,
        so it may create async clients, but it must not block. ``embedded`` (today's SQLite lease
        and in-process limits, for one host) is the engine's own and the default.

    .. versionadded:: 0.2
    """


@hookspec
def register_event_sources(event_sources: EventSourceRegistry) -> None:
    """Register sources of order and customer events for the flows of ``pigeon serve``.

    Called once per process when the plugin host starts. Must not do I/O.

    :param event_sources: call ``event_sources.add(name, factory, config_type)``. ``factory(config,
        ctx)`` receives ``[service.flows.source.options]`` converted to ``config_type`` and an
        :class:`~engine.core.event_source.EventSourceContext`, and returns an
        :class:`~engine.core.event_source.EventSource`. It is called inside the service's event loop,
        so it may create async clients, but it must not block. The engine selects one with
        ``[service.flows.source] plugin = "<name>"``.

    .. versionadded:: 1.2
    """
