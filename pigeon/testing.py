"""The plugin author's test kit: sample batches, a gateway context, a recording gateway, a fake clock.

``check_gateway`` runs the contract every gateway must keep (one result per message, in order;
errors as :class:`~pigeon.GatewayError` subclasses), ``check_coordinator`` the one every
coordinator keeps (lease and fence, budgets, claims); ``registered`` loads plugin modules into a
fresh host as the engine would, without installing them.
"""

from __future__ import annotations

from engine.coordination.testing import check_coordinator
from engine.sending.testing import (
    FakeClock,
    RecordingGateway,
    check_gateway,
    gateway_context,
    registered,
    sample_batch,
)

__all__ = [
    "FakeClock",
    "RecordingGateway",
    "check_coordinator",
    "check_gateway",
    "gateway_context",
    "registered",
    "sample_batch",
]
