"""The ``[service]`` section of the engine file: what ``pigeon serve`` needs beyond a blast."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from engine.core.provider_template import ProviderTemplateConfig

__all__ = [
    "CallbackConfig",
    "EventSourceConfig",
    "FlowsServiceConfig",
    "ServiceConfig",
    "ServiceTemplate",
    "WebhookConfig",
]

_Identifier = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class _Base(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Config base: immutable, keyword-only, a typo is an error."""


class ServiceTemplate(_Base, kw_only=True, frozen=True):
    """``[service.templates.<id>]``: a template the API sends by id (``template`` + ``fields``)."""

    text: str = ""
    """Body with ``{field}`` / ``{field|default}`` tokens (the campaign file's syntax); or give
    ``provider`` instead."""
    provider: ProviderTemplateConfig | None = None
    """A template filed with Aliyun or Tencent (``[service.templates.<id>.provider]``: code,
    approved text, placeholder → field): sent as filed, its parameters checked per message against
    the provider's limits (docs/providers-aliyun-tencent.md)."""
    signature: str = ""
    """Sender signature; unset = ``service.signature``."""
    max_length: Annotated[int, msgspec.Meta(ge=10, le=5000)] = 500


class WebhookConfig(_Base, kw_only=True, frozen=True):
    """``[service.webhooks.<gateway>]``: how the gateway's callbacks are verified."""

    secret_env: str = ""
    """Environment variable holding the shared HMAC secret (``X-Pigeon-Signature``); unset = the
    gateway's plugin verifies with its own scheme, or (no parser of its own) requests are refused."""
    parser: str = "generic"
    """Which registered webhook parser reads this gateway's callbacks (``generic``: the contract in
    docs/service.md; a gateway plugin registers its own)."""
    allow_unsigned: bool = False
    """Accept callbacks without a signature (loopback tests only; never in production)."""


class CallbackConfig(_Base, kw_only=True, frozen=True):
    """``[service.callbacks]``: status callbacks to the callers' URLs (docs/service.md)."""

    secret_env: str = ""
    """Environment variable holding the HMAC secret that signs every callback
    (``X-Pigeon-Signature``); unset: callbacks are off and a ``callback_url`` is refused (422)."""
    batch: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500
    """Most events in one POST to a receiver."""
    flush_every: Annotated[float, msgspec.Meta(gt=0, le=60)] = 0.25
    """Seconds between two looks at the outbox."""
    timeout: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0
    """Seconds a receiver has to answer a POST."""
    backoff_base: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 1.0
    """Seconds before the first retry of a receiver that failed; doubled per failure in a row."""
    backoff_cap: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 300.0
    """Longest wait between two tries of a failing receiver."""
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 50
    """POSTs an event may fail before it goes to the dead letters."""
    max_age: Annotated[float, msgspec.Meta(gt=0)] = 86400.0
    """Seconds an event may wait undelivered before it goes to the dead letters."""
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=256)] = 8
    """Receivers posted to at once."""


class EventSourceConfig(_Base, kw_only=True, frozen=True):
    """``[service.flows.source]``: a message queue the flows' events also come from (a plugin)."""

    plugin: str
    """An event-source plugin (``pigeon plugins`` lists them): ``redis_streams``, ``nats_jetstream``,
    ``rabbitmq``, …"""
    options: dict[str, Any] = {}
    """The plugin's own settings (``[service.flows.source.options]``)."""


class FlowsServiceConfig(_Base, kw_only=True, frozen=True):
    """``[service.flows]``: where flows are defined and how fast their timers fire (docs/flows.md)."""

    dir: str = "flows"
    """Directory of flow files (``*.toml``, one flow each), relative to the engine file; absent = no flows."""
    batch: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500
    """Due timers fetched, claimed and sent per step of the runner (one transaction each)."""
    max_per_second: Annotated[float, msgspec.Meta(gt=0, le=1_000_000)] = 1000.0
    """Most timers fired per second: after downtime, late timers are caught up in due order at
    this pace instead of in one burst."""
    poll: Annotated[float, msgspec.Meta(gt=0, le=60)] = 0.5
    """Most seconds the runner sleeps before looking for due timers again (the timing tolerance)."""
    max_events: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    """Most events in one ``POST /v1/events``."""
    source: EventSourceConfig | None = None
    """Events from a message queue too (besides ``POST /v1/events``)."""
    store: Literal["sqlite", "redis"] = "sqlite"
    """Where the timers live: ``sqlite`` (the store file; one ``pigeon serve`` per file) or
    ``redis`` (the ``[coordinator]``'s Redis: several ``pigeon serve`` hosts share one timer store,
    each due step fired by one of them; asyncio only)."""
    lease: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 30.0
    """With ``store = "redis"``: seconds a host's claim on the timers it is firing outlives its
    last heartbeat; after that another host adopts them (docs/flows.md)."""


class ServiceConfig(_Base, kw_only=True, frozen=True):
    """``[service]``: API keys, templates, limits and webhooks of the long-running service."""

    keys_file: str = "api-keys.json"
    """Where ``pigeon keys create`` stores API keys (SHA-256 hashes only), relative to the engine file."""
    signature: str = ""
    """Signature of ``text`` messages and of templates without their own."""
    templates: dict[_Identifier, ServiceTemplate] = {}
    templates_file: str | None = None
    """A TOML file of more ``[<id>]`` template tables, relative to the engine file."""
    campaigns_dir: str = "campaigns"
    """``POST /v1/campaigns`` with a ``file`` starts only campaign files under this directory."""
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    """Largest request body accepted (413 above)."""
    max_messages: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    """Most messages in one ``POST /v1/messages``."""
    transactional_in_flight: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    """Requests the priority lane keeps open per gateway, beside the gateway's own ``in_flight``
    (keep both within the plugin's connection pool)."""
    concurrent_blasts: Annotated[int, msgspec.Meta(ge=1, le=16)] = 1
    """Blasts that run at once. Each gets ``1/concurrent_blasts`` of every carrier's and gateway
    account's marketing budget, so together they never exceed it; campaigns started beyond that
    wait ``queued`` (in the order they were started)."""
    idempotency_ttl: Annotated[float, msgspec.Meta(gt=0)] = 86400.0
    """Seconds an ``Idempotency-Key`` is remembered."""
    drain_timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    """Seconds SIGTERM waits for in-flight requests and lanes before exiting."""
    webhooks: dict[str, WebhookConfig] = {}
    callbacks: CallbackConfig = CallbackConfig()
    """Status callbacks to the callers (``callback_url`` of a message)."""
    require_consent: bool = False
    """Every ``priority: marketing`` API message goes only to numbers with a consent record
    (``pigeon consent import``); others end ``suppressed: no_consent``. A key can ask for it too."""
    banned_terms: list[str] | None = None
    """Absolute terms refused in ``priority: marketing`` messages (the whole text as sent); unset =
    the built-in list campaigns use (``policy.banned_terms`` of a campaign file)."""
    allowed_terms: list[str] = []
    """Lawful phrases holding a banned term, added to the built-in carve-outs (as a campaign's)."""
    optout_keywords: list[str] | None = None
    """MO replies that opt out; unset = the built-in set (R, T, TD, 退订, STOP…)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    flows: FlowsServiceConfig = FlowsServiceConfig()
    """Triggered flows: events in, timed steps out (docs/flows.md)."""
