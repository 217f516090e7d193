"""The metrics' vocabulary: names, label values and buckets that dashboards and alerts are written against."""

from __future__ import annotations

from importlib import metadata

__all__ = [
    "CALLBACK_EVENT_OUTCOMES",
    "CALLBACK_REQUEST_OUTCOMES",
    "CLAIM_ANSWERS",
    "COORDINATOR_CALLS",
    "DELIVERY_BUCKETS",
    "DELIVERY_STATUSES",
    "GATEWAY_BUCKETS",
    "KEPT_ONCE",
    "MESSAGE_OUTCOMES",
    "NAMES",
    "OPTOUT_SOURCES",
    "PRIORITIES",
    "RANGE_EVENTS",
    "REQUEST_OUTCOMES",
    "STAGE_BUCKETS",
    "STAGE_REASONS",
    "request_outcome",
]

# --- label values: bounded sets, every series pre-initialized from them ---------------------------

PRIORITIES = ("transactional", "marketing")
"""Lanes of the send queue (``priority`` label): a campaign's kind."""

STAGE_REASONS: dict[str, tuple[str, ...]] = {
    "source": ("malformed_row", "undecodable"),
    "normalize": ("missing_phone", "invalid_number", "iot_number", "not_mobile"),
    "dedupe": ("duplicate",),
    "suppress_optouts": ("opted_out",),
    "require_consent": ("no_consent",),
    "cap": ("capped",),
    "route": (
        "unallocated_prefix",
        "iot_number",
        "satellite_number",
        "special_number",
        "not_mobile",
        "invalid_number",
        "no_gateway",
    ),
    "links": ("no_link",),
    "render": ("missing_field", "url_in_field", "param_too_long"),
    "count_parts": ("too_long",),
    "same_content": ("same_content",),
    "holdout": ("held_out",),
    "hold_quiet_hours": ("outside_send_window",),
    "claim": ("claimed_elsewhere", "opted_out"),
}
"""Stage → every reason it can drop a row for (``RejectReason``/``SuppressReason`` values)."""

REQUEST_OUTCOMES = (
    "ok",
    "retry",
    "throttled",
    "unavailable",
    "unreachable",
    "timeout",
    "auth",
    "protocol",
    "error",
)
"""How a gateway request ended: answered (``ok``: every message settled; ``retry``/``throttled``:
some must go again), or failed as a whole (``unavailable``: answered 5xx, not taken;
``unreachable``: never left this machine (refused, DNS, TLS), no retry spent;
``timeout``: no answer, maybe taken; ``auth``: credentials refused; ``protocol``: unreadable
answer; ``error``: any other gateway error)."""

MESSAGE_OUTCOMES = ("accepted", "rejected", "failed", "unknown")
"""Where a message ended at the gateways: ``accepted`` (sent), ``rejected`` by the provider,
``failed`` (request failed for good, retries exhausted), ``unknown`` (no clear answer, not resent)."""

RETRY_OUTCOMES = tuple(o for o in REQUEST_OUTCOMES if o != "ok")
"""Why messages were sent again (``outcome`` of ``pigeon_retries_total``)."""

DELIVERY_STATUSES = ("delivered", "failed", "expired", "rejected", "unknown")
"""``DeliveryStatus`` values; anything else counts as ``unknown``."""

LINK_OUTCOMES = ("counted", "robot", "unknown")
"""What the short link redirector did with a request (``outcome`` of ``pigeon_link_clicks_total``):
``counted`` (a person's tap, recorded), ``robot`` (a ``HEAD``, prefetch, preview or robot:
redirected, not recorded), ``unknown`` (no such code: 404)."""

OPTOUT_SOURCES = ("api", "mo", "import", "manual", "other")
"""Where an opt-out came from (the ``reason`` label of ``pigeon_optouts_added_total``)."""

CALLBACK_EVENT_OUTCOMES = ("delivered", "dead")
"""What became of a status-callback event: a receiver answered 2xx, or it went to the dead letters."""

CALLBACK_REQUEST_OUTCOMES = ("ok", "refused", "unreachable", "timeout")
"""How a POST to a callback receiver ended: 2xx, another status, no connection, no answer in time."""
CLAIM_ANSWERS = ("new", "taken", "opted_out", "adopted", "capped", "same_content")
"""What a coordinator's claim answered per recipient (``answer`` label): this worker's to send,
another worker's (or row's), opted out on some worker, taken over from a dead worker, at a
frequency cap or the same text within the same-content window, counted across the workers."""

COORDINATOR_CALLS = ("claim", "charge", "range", "slow_down")
"""Calls a worker makes to its coordinator (``call`` label), each ``ok`` or ``unavailable``."""

RANGE_EVENTS = ("taken", "reclaimed", "done")
"""What happened to a segment range at a worker (``event`` label): ``taken`` (a fresh one, or its
own held one after a restart), ``reclaimed`` (from a worker that stopped renewing it), ``done``
(every row settled, acked)."""

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text format version 0.0.4, which every Prometheus scrapes."""

_OTHER_GATEWAY = "other"
"""A delivery report naming a gateway the config does not know (webhooks are outside input)."""

# --- buckets -------------------------------------------------------------------------------------

GATEWAY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
)
"""Gateway round trips and rate-limiter waits: 1 ms (loopback, SMPP window) to a minute (timeouts,
Retry-After), densest at 25–250 ms where provider HTTP APIs answer."""

STAGE_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.5)
"""One stage over one batch (about a thousand rows): 10 µs to 0.5 s."""

DELIVERY_BUCKETS = (
    1.0,
    2.0,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    21600.0,
    86400.0,
)
"""Submit to delivery report: a second (most handsets) to a day (phone off, carrier retries)."""

# --- names ---------------------------------------------------------------------------------------

NAMES = {
    "stage_in": "pigeon_stage_messages_in_total",
    "stage_out": "pigeon_stage_messages_out_total",
    "stage_dropped": "pigeon_stage_messages_dropped_total",
    "stage_seconds": "pigeon_stage_batch_duration_seconds",
    "queued": "pigeon_queued_messages",
    "ratelimit_wait": "pigeon_ratelimit_wait_seconds",
    "request_seconds": "pigeon_gateway_request_duration_seconds",
    "request_messages": "pigeon_gateway_request_messages_total",
    "in_flight": "pigeon_gateway_in_flight_requests",
    "in_flight_limit": "pigeon_gateway_in_flight_limit",
    "messages": "pigeon_messages_total",
    "parts": "pigeon_message_parts_total",
    "spend": "pigeon_spend_total",
    "retries": "pigeon_retries_total",
    "failovers": "pigeon_failovers_total",
    "dlr": "pigeon_delivery_reports_total",
    "dlr_seconds": "pigeon_submit_to_delivery_seconds",
    "optouts": "pigeon_optouts_added_total",
    "claims": "pigeon_coordinator_claims_total",
    "coordinator_calls": "pigeon_coordinator_calls_total",
    "coordinator_ranges": "pigeon_coordinator_ranges_total",
    "carrier_rate_limit": "pigeon_carrier_rate_limit_parts_per_second",
    "link_clicks": "pigeon_link_clicks_total",
    "build_info": "pigeon_build_info",
    "callback_events": "pigeon_callback_events_total",
    "callback_requests": "pigeon_callback_requests_total",
    "callback_queue": "pigeon_callback_queue_depth",
}
"""Every metric family's full name (as exposed: counters with ``_total``)."""

KEPT_ONCE = ("pigeon_build_info", NAMES["carrier_rate_limit"])
"""Gauges that say the same thing in every process (a setting, not a count): merged by taking
one value (the largest), never added up (:mod:`engine.observability.worker_metrics`)."""


def _base(name: str) -> str:
    """prometheus_client appends ``_total`` to counters itself."""
    return name.removesuffix("_total")


_ERROR_OUTCOMES = {
    "GatewayUnavailable": "unavailable",
    "GatewayUnreachable": "unreachable",
    "GatewayTimeout": "timeout",
    "GatewayAuthError": "auth",
    "GatewayProtocolError": "protocol",
}


def request_outcome(exc: BaseException) -> str:
    """The ``outcome`` label for a gateway request that raised ``exc`` (a bounded set)."""
    for cls in type(exc).__mro__:
        found = _ERROR_OUTCOMES.get(cls.__name__)
        if found is not None:
            return found
    return "error"


def _version() -> str:
    try:
        return metadata.version("pigeon-sms")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"
