"""The service's request and response bodies (msgspec Structs), shared by the API and its OpenAPI document."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import msgspec

__all__ = [
    "API_CAMPAIGNS",
    "MAX_PAGE",
    "MESSAGE_STATES",
    "ApiError",
    "CampaignTest",
    "DeadLetter",
    "DeadLetterPage",
    "FieldError",
    "MessageIn",
    "MessagePage",
    "MessageView",
    "MessagesIn",
    "Phone",
    "Priority",
    "Problem",
    "StartCampaign",
    "SubmitResponse",
    "TestMessage",
]

Priority = Literal["transactional", "marketing"]

API_CAMPAIGNS = ("api-transactional", "api-marketing")
MESSAGE_STATES = (
    "queued",
    "submitting",
    "submitted",
    "delivered",
    "failed",
    "unknown",
    "suppressed",
    "deferred",
)
"""What ``GET /v1/messages?state=`` filters on."""
MAX_PAGE = 1000
"""Most items in one page of a list."""

MAX_TEXT = 1000
"""Longest ``text`` of a message, in characters."""
MAX_FIELD = 500
"""Longest value of a template field, in characters."""

Phone = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=32,
        description="Recipient: a Chinese mobile (13800138000, +86 138-0013-8000…) or E.164",
    ),
]
_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
_FieldValue = Annotated[str, msgspec.Meta(max_length=MAX_FIELD)]


class MessageIn(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One message to send: ``to`` and either ``template`` + ``fields`` or ``text``.

    A template filed with Aliyun or Tencent (``[service.templates.<id>.provider]``) is sent as
    filed, its ``fields`` filling the provider's parameters; each value is checked as a campaign's
    rows are — within the provider's length limit, no link — and the message must route to a
    gateway of that provider (free text, to none that sends only filed templates): otherwise 422,
    naming the message and field, and nothing of the request is sent."""

    to: Phone
    template: _Name | None = None
    fields: Annotated[dict[_Name, _FieldValue], msgspec.Meta(max_length=64)] = {}
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)] | None = None


class MessagesIn(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The body of ``POST /v1/messages``."""

    messages: Annotated[list[MessageIn], msgspec.Meta(min_length=1)]
    """At most ``service.max_messages`` (413 above)."""
    priority: Priority
    """Required: ``transactional`` (order notices, codes: sent to opted-out numbers, at any hour) or
    ``marketing`` (preflight, opt-outs, quiet hours). No default, so nothing is sent as
    transactional by omission."""
    callback_url: Annotated[str, msgspec.Meta(min_length=8, max_length=2048)] | None = None
    """Where the messages' state changes are posted (signed, batched): a URL under one of the API
    key's allowed prefixes (``pigeon keys create --callback-url``); else 422."""


class MessageState(msgspec.Struct, kw_only=True):
    """One accepted message in a 202 answer."""

    index: int
    id: str
    state: str
    """``queued`` (in a lane), ``suppressed`` (opted out, capped) or ``deferred`` (quiet hours)."""
    reason: str = ""
    parts: int = 0


class SubmitResponse(msgspec.Struct, kw_only=True):
    """The 202 answer of ``POST /v1/messages``."""

    priority: str
    messages: list[MessageState]
    accepted: int
    """Messages queued for sending."""


class FieldError(msgspec.Struct, kw_only=True):
    """What is wrong with one message of a request."""

    index: int
    """Position of the message in ``messages`` (0-based)."""
    field: str
    detail: str


class ApiError(Exception):
    """An error the API answers as problem details (RFC 9457)."""

    def __init__(
        self, status: int, title: str, detail: str, *, errors: Sequence[FieldError] = (), kind: str = ""
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = list(errors)
        self.kind = kind or title.lower().replace(" ", "-")


class Delivery(msgspec.Struct, kw_only=True, gc=False):
    """The delivery report of a message."""

    status: str
    code: str = ""
    done_at: float = 0.0


class MessageView(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """``GET /v1/messages/{id}``: what is recorded about a message."""

    id: str
    state: str
    """``queued``, ``submitting``, ``submitted``/``sent``, ``failed``, ``unknown``, ``suppressed``,
    ``rejected``, ``deferred``; a delivery report moves it to ``delivered`` or keeps ``failed``."""
    campaign: str = ""
    to: str = ""
    """Masked (``138****8000``)."""
    priority: str = ""
    carrier: str = ""
    parts: int = 0
    reason: str = ""
    gateway: str = ""
    provider_id: str = ""
    accepted_at: float = 0.0
    submitted_at: float = 0.0
    answered_at: float = 0.0
    delivery: Delivery | None = None


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] = []
    """Per-message problems (``POST /v1/messages``)."""


class StartCampaign(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The body of ``POST /v1/campaigns``: a campaign file under ``service.campaigns_dir``."""

    file: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    """Relative to ``service.campaigns_dir``; each path component at most 255 bytes."""
    again: bool = False
    """Start a finished or cancelled campaign afresh (its ledger is archived), as ``pigeon send --again``."""
    callback_url: Annotated[str, msgspec.Meta(min_length=8, max_length=2048)] | None = None
    """Where the state changes of the campaign's recipients are posted (as for messages: under one of
    the API key's allowed prefixes). Kept for the campaign: a resume posts there too."""
    send_at: float | None = None
    """Start at this time (Unix seconds, at most 366 days ahead): checked now, ``scheduled`` until
    then, its worker ready (paused) a few seconds before. Absent or past: at once."""
    test: bool = False
    """Do not start it: send each variant's message, rendered from a real row, to the campaign's
    ``[review] seeds`` through its gateway, record the test and answer with its outcome
    (``CampaignTest``). A campaign with seeds starts only after a passed test of its current content."""


class TestMessage(msgspec.Struct, kw_only=True):
    """One message of a test send."""

    __test__ = False

    id: str
    variant: str
    """The A/B variant it shows (empty without an A/B test)."""
    to: str
    """The seed number, masked."""
    gateway: str
    outcome: str
    """``accepted``, ``rejected``… as the gateway answered."""
    code: str = ""
    provider_id: str = ""


class CampaignTest(msgspec.Struct, kw_only=True):
    """``POST /v1/campaigns`` with ``"test": true``: the test send's outcome."""

    id: str
    """The campaign's id."""
    content: str
    """The hash of the content tested (template, variants, segment, link): the real send needs a
    passed test of the content it has then."""
    at: float
    by: str
    """The API key that asked for it."""
    sent: int
    accepted: int
    passed: bool
    """Every message was accepted: the campaign may start (approval aside)."""
    messages: list[TestMessage]


class DeadLetter(msgspec.Struct, kw_only=True):
    """A status-callback event its receiver never took (``GET /v1/callbacks/dead``)."""

    url: str
    event: dict[str, str | float]
    """The event as it would have been posted."""
    created_at: float
    attempts: int
    """POSTs that failed."""
    last_error: str
    dead_at: float


class DeadLetterPage(msgspec.Struct, kw_only=True):
    """``GET /v1/callbacks/dead``: dead letters, newest first."""

    dead: list[DeadLetter]
    next_cursor: str | None = None


class MessagePage(msgspec.Struct, kw_only=True):
    """``GET /v1/messages``: one page of recent API messages, newest first."""

    messages: list[MessageView]
    next_cursor: str | None = None
    """Pass it as ``cursor`` for the next page; null on the last."""
