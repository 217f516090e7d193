"""The gateway contract: what a gateway plugin returns, what it is given, and what it must answer.

Gateways that receive on their own connections (SMPP deliver_sm, CMPP_DELIVER) also implement
:class:`Receiving`: a long-lived host attaches an :class:`InboundSink` (where delivery reports
and MO replies go: the service's ``apply_reports`` / ``apply_replies``) and runs ``serve()``.

Gateways whose provider makes and tracks per-phone short links implement :class:`ManagedLinks`
(the contract of a campaign's ``[links] mode = "provider"``; docs/outcomes.md). The built-in
``aliyun`` gateway does: ``CreateSmartShortUrl(PhoneNumbers, SourceUrl, OutId)`` returns per phone
``{ShortUrl, ShortName, Domain, Expiration}`` and ``QueryPageSmartShortUrlLog`` pages of
``{PhoneNumber, ShortUrl, ClickState, ClickTime, CreateTime}``; Huawei KooMessage's personal links
resolve once and last 1–7 days; Tencent has none.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import msgspec

from engine.core.messages import DeliveryReport, MessageBatch, SubmitResult
from engine.sending.webhooks import MoReply

__all__ = [
    "Gateway",
    "GatewayContext",
    "InboundSink",
    "LinkClick",
    "ManagedLink",
    "ManagedLinks",
    "Receiving",
    "about_to_write",
    "handing_over",
    "reset_handing_over",
]

_HANDOVER: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "pigeon_handover", default=None
)


def about_to_write() -> None:
    """Called by a gateway whose ``hands_over_on_write`` is true, in the task that called
    ``send``, once its connection is up and just before the first byte of the request is written
    (the ``http`` gateway: in its stream's write). The engine records the request's hand-over then —
    so a crash before it leaves no recipient ``submitting`` that never left, and a connection that
    cannot be opened leaves them ``pending`` without a record at all. Raises
    :class:`~engine.core.errors.RunHalt` when the request must not go (the store cannot be written…):
    the gateway must then not write it, and let the exception out of ``send`` as it is. Calling it
    more than once, or outside ``send``, does nothing."""
    hook = _HANDOVER.get()
    if hook is not None:
        hook()


def handing_over(hook: Callable[[], None] | None) -> contextvars.Token[Callable[[], None] | None]:
    """The engine's side of :func:`about_to_write`, around one ``send``: ``hook`` records the
    hand-over; :func:`reset_handing_over` with the returned token ends it."""
    return _HANDOVER.set(hook)


def reset_handing_over(token: contextvars.Token[Callable[[], None] | None]) -> None:
    """End what :func:`handing_over` began."""
    _HANDOVER.reset(token)


@dataclass(frozen=True, slots=True)
class GatewayContext:
    """What a gateway factory gets besides its config."""

    name: str
    """The gateway's name in the engine config (``[gateways.<name>]``)."""
    base_dir: Path
    """Directory of the engine config file: relative paths resolve against it."""
    run_dir: Path
    """Directory of the current run, for gateways that write files."""


@runtime_checkable
class Gateway(Protocol):
    """Sends batches of messages to one provider over one pooled connection (or a few).

    A :class:`~engine.core.messages.MessageBatch` holds one carrier's messages as columns (``ids``,
    ``tos``, ``texts``, ``parts``); iterating it yields :class:`~engine.core.messages.Message` structs.
    ``send`` answers with one :class:`SubmitResult` per message, index-aligned with the batch.
    Per-message refusals are results, not exceptions; a failure of the whole request raises a
    :class:`~engine.core.errors.GatewayError`. Library exceptions never escape a gateway.
    """

    name: str
    max_batch: int
    """Messages per request (1 for one-per-request APIs)."""
    idempotent: bool
    """Whether sending the same message id twice is safe (the provider deduplicates)."""
    # Optional: ``hands_over_on_write = True`` — the gateway calls :func:`about_to_write` just
    # before it writes a request (else the engine records the hand-over before calling ``send``).
    # Optional: ``template_provider = "aliyun"`` — it sends only templates filed with that provider
    # (``MessageBatch.params``); the service refuses an API message it could not send.
    # Optional: ``settle(queries)`` — :class:`engine.sending.settling.Settling`, for ``pigeon settle``.

    async def send(self, batch: MessageBatch) -> Sequence[SubmitResult]:
        """Submit ``batch`` (at most ``max_batch`` messages) and report each message's outcome."""

    async def aclose(self) -> None:
        """Close connections and flush files; called once at the end of a run."""


class InboundSink(Protocol):
    """Where a :class:`Receiving` gateway hands what its connections bring in."""

    async def reports(self, reports: Sequence[DeliveryReport]) -> None:
        """Delivery reports, one per message settled (its parts folded)."""

    async def replies(self, replies: Sequence[MoReply]) -> None:
        """MO replies, reassembled from their parts."""


@runtime_checkable
class Receiving(Protocol):
    """A gateway whose connections also bring delivery reports and MO replies (SMPP, CMPP)."""

    def attach(self, sink: InboundSink) -> None:
        """Send reports and replies to ``sink`` from now on (without one, the gateway keeps them)."""

    async def serve(self) -> None:
        """Keep the connections up and read them until cancelled (reports arrive between sends)."""


class ManagedLink(msgspec.Struct, frozen=True, kw_only=True):
    """A per-phone short link a provider made."""

    phone: str
    """The number it was made for, as :meth:`ManagedLinks.create_links` was given it (E.164)."""
    url: str
    """The short link to put in that phone's message (its characters are billed); empty: the
    provider made none for this phone (its message is not sent: rejected ``no_link``)."""
    expires_at: float = 0.0
    """Epoch seconds after which it stops resolving (0: unknown)."""


class LinkClick(msgspec.Struct, frozen=True, kw_only=True):
    """A click the provider saw on one of its per-phone links."""

    phone: str
    """The number the link was made for (E.164)."""
    clicked_at: float
    """Epoch seconds of the (first) click."""
    url: str = ""
    """The link clicked (the engine matches a click to its recipient by it; by ``phone`` when empty)."""


@runtime_checkable
class ManagedLinks(Protocol):
    """A gateway whose provider makes per-phone short links and reports their clicks.

    The engine calls :meth:`create_links` once per batch for the phones its stages routed to this
    gateway and has no link for yet, before the batch is rendered (the links fill the ``{link}``
    field and are billed like any text; :mod:`engine.run.provider_links`), and
    :meth:`link_clicks` when asked to pull clicks (``pigeon links pull``). A gateway declares it
    with ``managed_links = True`` on its class. Failures are the gateway errors ``send`` raises:
    :class:`~engine.core.errors.GatewayAuthError` stops the run, a retriable one is tried again.
    """

    managed_links: ClassVar[bool]

    async def create_links(self, phones: Sequence[str], target: str, out_id: str) -> Sequence[ManagedLink]:
        """One link per phone (E.164) to ``target``, tagged ``out_id`` (the campaign) at the
        provider, index-aligned with ``phones`` (the gateway splits them into requests as its API
        allows)."""

    async def link_clicks(self, out_id: str, since: float) -> Sequence[LinkClick]:
        """Clicks on the links made for ``out_id`` since ``since`` (epoch seconds: when the
        campaign's first link was made) — or on any of the account's links made since then when
        the provider cannot filter by ``out_id`` (Aliyun): the engine keeps the clicks on links it
        made for the campaign. A click may come again in a later pull (the engine counts it once)."""
