"""Pigeon's public plugin API: the one import a source, gateway, webhook, coordinator or event plugin needs.

Plugins import from here and from :mod:`pigeon.testing`; ``engine.*`` is internal and may move
between releases. The surface follows :data:`API_VERSION`: a minor version only adds (new names,
new optional hook arguments, new fields with defaults); a major version may remove or change.

A gateway plugin in full::

    from pigeon import GatewayContext, GatewayRegistry, MessageBatch, Outcome, SubmitResult, hookimpl

    class EchoGateway:
        max_batch = 100  # messages per request
        idempotent = False  # may a message id be sent twice safely? (no: an unanswered request ends unknown)

        def __init__(self, options: object, ctx: GatewayContext) -> None:
            self.name = ctx.name

        async def send(self, batch: MessageBatch) -> list[SubmitResult]:
            return [SubmitResult(Outcome.ACCEPTED, provider_id=f"echo-{i}") for i in batch.ids]

        async def aclose(self) -> None:
            pass

    @hookimpl
    def register_gateways(gateways: GatewayRegistry) -> None:
        gateways.add("echo", EchoGateway)

Register the module under the ``pigeon`` entry-point group (``[project.entry-points.pigeon]``).
docs/plugins.md is the guide; examples/pigeon-gateway-example is a package to copy.
"""

from __future__ import annotations

from engine.coordination.contract import (
    BudgetKey,
    BudgetSpec,
    CapCheck,
    Claim,
    Coordinator,
    CoordinatorContext,
    CoordinatorUnavailable,
    LeaseGrant,
    LeaseLost,
    RangeQueue,
    SharedOptOutCopy,
    SharedOptOuts,
    SharedSlowDown,
    SlowDown,
    TakenRange,
)
from engine.core.errors import (
    ConfigError,
    EngineError,
    GatewayAuthError,
    GatewayError,
    GatewayProtocolError,
    GatewayTimeout,
    GatewayUnavailable,
    GatewayUnreachable,
    RunHalt,
    SourceError,
)
from engine.core.event_source import EventDelivery, EventSource, EventSourceContext
from engine.core.hookspecs import hookimpl
from engine.core.messages import (
    ACCEPTED,
    DeliveryReport,
    DeliveryStatus,
    Message,
    MessageBatch,
    Outcome,
    Reject,
    RejectReason,
    SubmitResult,
)
from engine.core.phone import mask
from engine.core.provider_template import ProviderParams
from engine.core.registries import (
    CoordinatorRegistry,
    EventSourceRegistry,
    GatewayRegistry,
    Registration,
    ResolverRegistry,
    SourceRegistry,
    WebhookParserRegistry,
)
from engine.pipeline.source import (
    RangedSource,
    SegmentRange,
    SegmentReader,
    SegmentSource,
    SourceBatch,
    SourceContext,
)
from engine.sending.gateway import Gateway, GatewayContext, InboundSink, Receiving, about_to_write
from engine.sending.settling import Journal, ProviderStatus, Settled, SettleQuery, Settling, request_key
from engine.sending.webhooks import MoReply, WebhookError, WebhookParser
from engine.state.ledger.lease import CampaignBusy, LeaseHolder

__all__ = [
    "ACCEPTED",
    "API_VERSION",
    "BudgetKey",
    "BudgetSpec",
    "CampaignBusy",
    "CapCheck",
    "Claim",
    "ConfigError",
    "Coordinator",
    "CoordinatorContext",
    "CoordinatorRegistry",
    "CoordinatorUnavailable",
    "DeliveryReport",
    "DeliveryStatus",
    "EngineError",
    "EventDelivery",
    "EventSource",
    "EventSourceContext",
    "EventSourceRegistry",
    "Gateway",
    "GatewayAuthError",
    "GatewayContext",
    "GatewayError",
    "GatewayProtocolError",
    "GatewayRegistry",
    "GatewayTimeout",
    "GatewayUnavailable",
    "GatewayUnreachable",
    "InboundSink",
    "Journal",
    "LeaseGrant",
    "LeaseHolder",
    "LeaseLost",
    "Message",
    "MessageBatch",
    "MoReply",
    "Outcome",
    "ProviderParams",
    "ProviderStatus",
    "RangeQueue",
    "RangedSource",
    "Receiving",
    "Registration",
    "Reject",
    "RejectReason",
    "ResolverRegistry",
    "RunHalt",
    "SegmentRange",
    "SegmentReader",
    "SegmentSource",
    "SettleQuery",
    "Settled",
    "Settling",
    "SharedOptOutCopy",
    "SharedOptOuts",
    "SharedSlowDown",
    "SlowDown",
    "SourceBatch",
    "SourceContext",
    "SourceError",
    "SourceRegistry",
    "SubmitResult",
    "TakenRange",
    "WebhookError",
    "WebhookParser",
    "WebhookParserRegistry",
    "about_to_write",
    "hookimpl",
    "mask",
    "request_key",
]

API_VERSION = "1.5"
"""The plugin API's version (``major.minor``), separate from the package's; see the module docstring."""
