"""Every Prometheus metric Pigeon exports, in one place, with per-batch counting methods.

A :class:`Metrics` owns its own :class:`prometheus_client.CollectorRegistry` (tests and several
engines in one process never collide). It is created once per run (or per service process),
pre-initialized from the plan with :meth:`Metrics.prepare` so every series exists from the first
scrape (dashboards see zeros, not gaps), and passed to the parts that count. Each counting method
is called once per batch or per gateway request, never per message; label children are looked up
in plain dicts and hold plain numbers, so a call costs a dict lookup and an add (no lock: the
counting methods are called from one thread, the event loop's; :meth:`Metrics.delivery_reports`
and :meth:`Metrics.optouts_added` take a lock, as a service may call them from worker threads).

Names follow DESIGN.md: prefix ``pigeon_``, counters end ``_total``, durations are ``_seconds``
histograms, labels only from ``stage, reason, carrier, gateway, outcome, status, priority, shard``,
and for a coordinated worker ``worker, answer, call`` (``worker``: the process's own name, one value
per process, so bounded by the deployment)
(``pigeon_build_info`` alone carries ``version, python, backend``). Never a phone number, campaign
id or raw error text: labels that come from outside (a webhook's gateway name, a report's status,
an opt-out's source) are folded into bounded sets.

The method API (stable; other modules call exactly these)::

    Metrics(*, version=None, backend="")       # registry, build info
    prepare(*, stages=(), routes={}, in_flight={}, priorities=PRIORITIES, rates={})   # pre-initialize
    stage_batch(stage, n_in, n_out, drops=None, seconds=None)
    queued(priority, carrier, delta)
    ratelimit_wait(carrier, seconds)
    in_flight(gateway, delta)
    request(gateway, outcome, seconds, n_messages)
    messages(gateway, carrier, outcome, n, parts=0)
    retries(gateway, outcome, n)
    failover(carrier, gateway, n)
    delivery_reports(counts_by_status, latencies=(), *, gateway="")
    optouts_added(n, source)
    prepare_worker(worker); claims(worker, answer, n); coordinator_call(worker, call, ok)
    range_event(worker, event)
    exposition() -> (body, content type)
    serve(addr, port) -> MetricsServer        # /metrics over HTTP in a thread, .close() stops it
    serving(addr, port, notify=None)          # serve() as a context manager; nothing when port is None

:data:`NO_METRICS` is a :class:`Metrics` that counts nothing (metrics off).
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server

from engine.core.errors import EngineError
from engine.observability.families import _Counter, _Gauge, _Histogram
from engine.observability.metric_names import (
    _OTHER_GATEWAY,
    CALLBACK_EVENT_OUTCOMES,
    CALLBACK_REQUEST_OUTCOMES,
    CLAIM_ANSWERS,
    CONTENT_TYPE,
    COORDINATOR_CALLS,
    DELIVERY_BUCKETS,
    DELIVERY_STATUSES,
    GATEWAY_BUCKETS,
    LINK_OUTCOMES,
    MESSAGE_OUTCOMES,
    NAMES,
    OPTOUT_SOURCES,
    PRIORITIES,
    RANGE_EVENTS,
    REQUEST_OUTCOMES,
    RETRY_OUTCOMES,
    STAGE_BUCKETS,
    STAGE_REASONS,
    _base,
    _version,
)
from engine.observability.metrics_server import MetricsServer

__all__ = ["NO_METRICS", "Metrics"]


class Metrics:
    """Pigeon's metrics: one registry, every family, per-batch counting methods.

    :param version: reported by ``pigeon_build_info`` (default: the installed package's).
    :param backend: the event loop (``asyncio``/``trio``), for ``pigeon_build_info``.
    """

    enabled = True
    """False for :data:`NO_METRICS`."""

    def __init__(self, *, version: str | None = None, backend: str = "") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        """The registry :meth:`exposition` renders; nothing else is registered in it."""
        r = self.registry
        self._stage_in = _Counter(
            _base(NAMES["stage_in"]), "Rows that entered a stage (source: rows read).", ["stage"], registry=r
        )
        self._stage_out = _Counter(
            _base(NAMES["stage_out"]), "Rows a stage passed on.", ["stage"], registry=r
        )
        self._stage_dropped = _Counter(
            _base(NAMES["stage_dropped"]),
            "Rows a stage took out: rejected, suppressed or deferred, by reason.",
            ["stage", "reason"],
            registry=r,
        )
        self._stage_seconds = _Histogram(
            NAMES["stage_seconds"],
            "Time one stage took over one batch.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self._queued = _Gauge(
            NAMES["queued"],
            "Messages handed to the send lanes and waiting for a gateway request "
            "(packing, lane queue, in-flight window, rate limiter, retry backoff).",
            ["priority", "carrier"],
            registry=r,
        )
        self._wait = _Histogram(
            NAMES["ratelimit_wait"],
            "Time a request waited for its carrier's and gateway's rate budgets (0 when it did not).",
            ["carrier"],
            buckets=GATEWAY_BUCKETS,
            registry=r,
        )
        self._req_seconds = _Histogram(
            NAMES["request_seconds"],
            "Gateway request round trip, by how the request ended.",
            ["gateway", "outcome"],
            buckets=GATEWAY_BUCKETS,
            registry=r,
        )
        self._req_messages = _Counter(
            _base(NAMES["request_messages"]),
            "Messages carried by gateway requests (resends included), by how the request ended.",
            ["gateway", "outcome"],
            registry=r,
        )
        self._in_flight = _Gauge(
            NAMES["in_flight"], "Gateway requests open right now.", ["gateway"], registry=r
        )
        self._in_flight_limit = _Gauge(
            NAMES["in_flight_limit"], "The gateway's configured in-flight window.", ["gateway"], registry=r
        )
        self._messages = _Counter(
            _base(NAMES["messages"]),
            "Messages that reached their end at a gateway, by outcome (accepted = sent).",
            ["gateway", "carrier", "outcome"],
            registry=r,
        )
        self._parts = _Counter(
            _base(NAMES["parts"]),
            "Billed SMS parts of the messages counted by pigeon_messages_total.",
            ["gateway", "carrier", "outcome"],
            registry=r,
        )
        self._spend = _Counter(
            _base(NAMES["spend"]),
            "Money handed over to gateways by campaigns with a spend cap, in the engine's currency "
            "(billed parts x the carrier's price_per_part, once per recipient).",
            ["carrier"],
            registry=r,
        )
        self._retries = _Counter(
            _base(NAMES["retries"]),
            "Messages scheduled to be sent again, by the outcome that sent them back.",
            ["gateway", "outcome"],
            registry=r,
        )
        self._failovers = _Counter(
            _base(NAMES["failovers"]),
            "Messages sent through a gateway other than their carrier's primary one.",
            ["carrier", "gateway"],
            registry=r,
        )
        self._dlr = _Counter(
            _base(NAMES["dlr"]), "Delivery reports received, by status.", ["gateway", "status"], registry=r
        )
        self._dlr_seconds = _Histogram(
            NAMES["dlr_seconds"],
            "Time from a gateway accepting a message to its delivery report (the carrier's done time).",
            ["gateway"],
            buckets=DELIVERY_BUCKETS,
            registry=r,
        )
        self._optouts = _Counter(
            _base(NAMES["optouts"]),
            "Numbers added to the opt-out list, by where the opt-out came from (api, mo, import, manual).",
            ["reason"],
            registry=r,
        )
        self._cb_events = _Counter(
            _base(NAMES["callback_events"]),
            "Status-callback events, by what became of them: delivered to the receiver (2xx), or dead "
            "(dead letters, after callbacks.max_attempts or callbacks.max_age).",
            ["outcome"],
            registry=r,
        )
        self._cb_requests = _Counter(
            _base(NAMES["callback_requests"]),
            "POSTs to status-callback receivers, by how they ended (ok, refused, unreachable, timeout).",
            ["outcome"],
            registry=r,
        )
        self._cb_queue = _Gauge(
            NAMES["callback_queue"],
            "Status-callback events in the outbox, not yet delivered nor dead.",
            [],
            registry=r,
        )
        self._cb_depth = self._cb_queue.labels()
        for o in CALLBACK_EVENT_OUTCOMES:
            self._cb_events.labels(o)
        for o in CALLBACK_REQUEST_OUTCOMES:
            self._cb_requests.labels(o)
        self._claims = _Counter(
            _base(NAMES["claims"]),
            "Recipients a worker's coordinator claims answered, by answer (new, taken, opted_out, adopted).",
            ["worker", "answer"],
            registry=r,
        )
        self._coord = _Counter(
            _base(NAMES["coordinator_calls"]),
            "Calls a worker made to its coordinator (claim, charge, range, slow_down), ok or unavailable.",
            ["worker", "call", "outcome"],
            registry=r,
        )
        self._ranges = _Counter(
            _base(NAMES["coordinator_ranges"]),
            "Segment ranges of a coordinated worker, by event (taken, reclaimed from a dead worker, done).",
            ["worker", "event"],
            registry=r,
        )
        self._rate_limit = _Gauge(
            NAMES["carrier_rate_limit"],
            "The carrier's configured rate_per_second (SMS parts per second over all gateways; "
            "with a coordinator, shared by every worker).",
            ["carrier"],
            registry=r,
        )
        self._clicks = _Counter(
            _base(NAMES["link_clicks"]),
            "Requests to the short link redirector, by outcome (counted, robot, unknown).",
            ["outcome"],
            registry=r,
        )
        for outcome in LINK_OUTCOMES:
            self._clicks.labels(outcome)
        self._build = _Gauge(
            NAMES["build_info"],
            "Always 1: the running Pigeon's version, Python and event loop.",
            ["version", "python", "backend"],
            registry=r,
        )
        self._build.labels(version or _version(), platform.python_version(), backend or "none").set(1)
        self._stage: dict[str, tuple[Any, Any, Any]] = {}
        self._drops: dict[tuple[str, str], Any] = {}
        self._queue: dict[tuple[str, str], Any] = {}
        self._waits: dict[str, Any] = {}
        self._flight: dict[str, Any] = {}
        self._requests: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._outcomes: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._retry: dict[tuple[str, str], Any] = {}
        self._failover: dict[tuple[str, str], Any] = {}
        self._gateways: set[str] = set()
        self._lock = threading.Lock()
        for source in OPTOUT_SOURCES[:-1]:
            self._optouts.labels(source)

    # --- set-up ----------------------------------------------------------------------------------

    def prepare(
        self,
        *,
        stages: Iterable[str] = (),
        routes: Mapping[str, Sequence[str]] | None = None,
        in_flight: Mapping[str, int] | None = None,
        priorities: Iterable[str] = PRIORITIES,
        rates: Mapping[str, int] | None = None,
    ) -> None:
        """Create every series a run can touch, at zero, so dashboards never see gaps.

        :param stages: the stage names, in order (``source`` is always added).
        :param routes: carrier → the gateways serving it, primary first (``Plan.failover``).
        :param in_flight: gateway → its configured in-flight window.
        :param priorities: the lanes (``priority`` label) to show.
        :param rates: carrier → its configured ``rate_per_second`` (carriers without one: none).

        Call it again to add more (the service prepares per campaign); nothing is reset.
        """
        routes = routes or {}
        in_flight = dict(in_flight or {})
        for stage in ("source", *stages):
            self._stage_children(stage)
            for reason in STAGE_REASONS.get(stage, ()):
                self._drop(stage, reason)
        gateways = sorted({g for names in routes.values() for g in names} | set(in_flight))
        self._gateways.update(gateways)
        for prio in priorities:
            for carrier in routes:
                self._queue_child(prio, carrier)
        for carrier, names in routes.items():
            self._wait_child(carrier)
            self._spend.labels(carrier)
            for g in names:
                for outcome in MESSAGE_OUTCOMES:
                    self._outcome_children(g, carrier, outcome)
                self._failover_child(carrier, g)
        for carrier, rate in (rates or {}).items():
            self._rate_limit.labels(carrier).set(rate)
        for g in gateways:
            self._flight_child(g)
            if g in in_flight:
                self._in_flight_limit.labels(g).set(in_flight[g])
            for outcome in REQUEST_OUTCOMES:
                self._request_children(g, outcome)
            for outcome in RETRY_OUTCOMES:
                self._retry_child(g, outcome)
            for status in DELIVERY_STATUSES:
                self._dlr.labels(g, status)
            self._dlr_seconds.labels(g)

    # --- counting (once per batch or request) ----------------------------------------------------

    def stage_batch(
        self,
        stage: str,
        n_in: int,
        n_out: int,
        drops: Mapping[str, int] | None = None,
        seconds: float | None = None,
    ) -> None:
        """One stage ran over one batch: rows in, rows out, rows dropped by reason, time taken."""
        c = self._stage.get(stage) or self._stage_children(stage)
        c[0].inc(n_in)
        c[1].inc(n_out)
        if seconds is not None:
            c[2].observe(seconds)
        if drops:
            get = self._drops.get
            for reason, n in drops.items():
                (get((stage, reason)) or self._drop(stage, reason)).inc(n)

    def queued(self, priority: str, carrier: str, delta: int) -> None:
        """Messages entered (``delta`` > 0) or left (< 0) the send queue of a lane and carrier."""
        (self._queue.get((priority, carrier)) or self._queue_child(priority, carrier)).inc(delta)

    def ratelimit_wait(self, carrier: str, seconds: float) -> None:
        """A request waited ``seconds`` (0 when it did not) for the rate budgets of ``carrier``."""
        (self._waits.get(carrier) or self._wait_child(carrier)).observe(seconds)

    def in_flight(self, gateway: str, delta: int) -> None:
        """A request to ``gateway`` opened (+1) or closed (-1)."""
        (self._flight.get(gateway) or self._flight_child(gateway)).inc(delta)

    def request(self, gateway: str, outcome: str, seconds: float, n_messages: int) -> None:
        """One gateway request of ``n_messages`` took ``seconds`` and ended with ``outcome``
        (one of :data:`REQUEST_OUTCOMES`)."""
        c = self._requests.get((gateway, outcome)) or self._request_children(gateway, outcome)
        c[0].observe(seconds)
        c[1].inc(n_messages)

    def messages(self, gateway: str, carrier: str, outcome: str, n: int, parts: int = 0) -> None:
        """``n`` messages (``parts`` billed parts) of ``carrier`` ended at ``gateway`` with
        ``outcome`` (one of :data:`MESSAGE_OUTCOMES`)."""
        if n:
            c = self._outcomes.get((gateway, carrier, outcome)) or self._outcome_children(
                gateway, carrier, outcome
            )
            c[0].inc(n)
            if parts:
                c[1].inc(parts)

    def spend(self, carrier: str, amount: float) -> None:
        """``amount`` (in the engine's currency) of ``carrier``'s messages handed over under a spend cap."""
        if amount:
            self._spend.labels(carrier).inc(amount)

    def retries(self, gateway: str, outcome: str, n: int) -> None:
        """``n`` messages sent back for another attempt after ``gateway`` answered ``outcome``."""
        if n:
            (self._retry.get((gateway, outcome)) or self._retry_child(gateway, outcome)).inc(n)

    def failover(self, carrier: str, gateway: str, n: int) -> None:
        """``n`` messages of ``carrier`` went to ``gateway``, which is not the carrier's primary."""
        (self._failover.get((carrier, gateway)) or self._failover_child(carrier, gateway)).inc(n)

    def delivery_reports(
        self,
        counts_by_status: Mapping[str, int],
        latencies: Iterable[float] = (),
        *,
        gateway: str = "",
    ) -> None:
        """A batch of delivery reports: counts by status, and the submit-to-report seconds of
        those whose times are known. A gateway or status outside the config's and
        ``DeliveryStatus``'s sets is counted as ``other`` / ``unknown`` (webhooks are outside input)."""
        g = gateway if gateway in self._gateways else _OTHER_GATEWAY
        with self._lock:
            for status, n in counts_by_status.items():
                if n:
                    self._dlr.labels(g, status if status in DELIVERY_STATUSES else "unknown").inc(n)
            h = self._dlr_seconds.labels(g)
            for s in latencies:
                h.observe(max(0.0, s))

    def prepare_worker(self, worker: str) -> None:
        """Every coordinator series of ``worker`` (this process's name: one value per process) at zero."""
        for answer in CLAIM_ANSWERS:
            self._claims.labels(worker, answer)
        for call in COORDINATOR_CALLS:
            for outcome in ("ok", "unavailable"):
                self._coord.labels(worker, call, outcome)
        for event in RANGE_EVENTS:
            self._ranges.labels(worker, event)

    def claims(self, worker: str, answer: str, n: int) -> None:
        """``n`` recipients of one claim call answered ``answer`` (one of :data:`CLAIM_ANSWERS`)."""
        if n:
            self._claims.labels(worker, answer).inc(n)

    def coordinator_call(self, worker: str, call: str, ok: bool) -> None:
        """One call to the coordinator (``claim``, ``charge``, ``range``) answered, or not."""
        self._coord.labels(worker, call, "ok" if ok else "unavailable").inc()

    def range_event(self, worker: str, event: str) -> None:
        """One segment range ``taken``, ``reclaimed`` or ``done`` by ``worker`` (:data:`RANGE_EVENTS`)."""
        self._ranges.labels(worker, event).inc()

    def optouts_added(self, n: int, source: str) -> None:
        """``n`` numbers newly added to the opt-out list from ``source`` (``api``, ``mo``,
        ``import``, ``manual``; anything else counts as ``other``)."""
        if n:
            with self._lock:
                self._optouts.labels(source if source in OPTOUT_SOURCES else "other").inc(n)

    def callback_events(self, outcome: str, n: int) -> None:
        """``n`` status-callback events ``delivered`` or ``dead``."""
        if n:
            with self._lock:
                self._cb_events.labels(outcome).inc(n)

    def callback_request(self, outcome: str) -> None:
        """One POST to a callback receiver ended ``outcome`` (:data:`CALLBACK_REQUEST_OUTCOMES`)."""
        with self._lock:
            self._cb_requests.labels(outcome).inc()

    def callback_queue(self, depth: int) -> None:
        """Events now in the callback outbox."""
        self._cb_depth.set(depth)

    def link_click(self, outcome: str) -> None:
        """One request to the short link redirector (``counted``, ``robot`` or ``unknown``)."""
        self._clicks.labels(outcome if outcome in LINK_OUTCOMES else "unknown").inc(1)

    # --- output ----------------------------------------------------------------------------------

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition of every series and its content type: what ``/metrics`` serves."""
        return generate_latest(self.registry), CONTENT_TYPE

    def serve(self, addr: str = "127.0.0.1", port: int = 0) -> MetricsServer:
        """Serve ``/metrics`` (any path) on ``addr:port`` from a daemon thread until closed.

        Raises :class:`~engine.core.errors.EngineError` when the address cannot be bound.
        """
        try:
            server, thread = start_http_server(port, addr, registry=self.registry)
        except OSError as exc:
            raise EngineError(
                f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}; "
                "choose another --metrics-port (or --metrics-addr)"
            ) from None
        return MetricsServer(server, thread)

    def serving(
        self, addr: str, port: int | None, notify: Callable[[str], None] | None = None
    ) -> AbstractContextManager[MetricsServer | None]:
        """:meth:`serve` now (so a taken port fails at once) and stop at the end of the ``with``;
        nothing when ``port`` is None. ``notify`` is told the URL."""
        if port is None:
            return nullcontext()
        server = self.serve(addr, port)
        if notify is not None:
            notify(f"metrics: {server.url}")
        return server

    # --- children, created once --------------------------------------------------------------------

    def _stage_children(self, stage: str) -> tuple[Any, Any, Any]:
        c = self._stage[stage] = (
            self._stage_in.labels(stage),
            self._stage_out.labels(stage),
            self._stage_seconds.labels(stage),
        )
        return c

    def _drop(self, stage: str, reason: str) -> Any:
        c = self._drops[stage, reason] = self._stage_dropped.labels(stage, reason)
        return c

    def _queue_child(self, priority: str, carrier: str) -> Any:
        c = self._queue[priority, carrier] = self._queued.labels(priority, carrier)
        return c

    def _wait_child(self, carrier: str) -> Any:
        c = self._waits[carrier] = self._wait.labels(carrier)
        return c

    def _flight_child(self, gateway: str) -> Any:
        c = self._flight[gateway] = self._in_flight.labels(gateway)
        return c

    def _request_children(self, gateway: str, outcome: str) -> tuple[Any, Any]:
        c = self._requests[gateway, outcome] = (
            self._req_seconds.labels(gateway, outcome),
            self._req_messages.labels(gateway, outcome),
        )
        return c

    def _outcome_children(self, gateway: str, carrier: str, outcome: str) -> tuple[Any, Any]:
        c = self._outcomes[gateway, carrier, outcome] = (
            self._messages.labels(gateway, carrier, outcome),
            self._parts.labels(gateway, carrier, outcome),
        )
        return c

    def _retry_child(self, gateway: str, outcome: str) -> Any:
        c = self._retry[gateway, outcome] = self._retries.labels(gateway, outcome)
        return c

    def _failover_child(self, carrier: str, gateway: str) -> Any:
        c = self._failover[carrier, gateway] = self._failovers.labels(carrier, gateway)
        return c


class _NoMetrics(Metrics):
    """Counts nothing: every method returns at once (metrics off)."""

    enabled = False

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)

    def prepare(self, **_: Any) -> None:
        """Nothing to create."""

    def stage_batch(self, *_: Any, **__: Any) -> None:
        """Not counted."""

    def queued(self, *_: Any) -> None:
        """Not counted."""

    def ratelimit_wait(self, *_: Any) -> None:
        """Not counted."""

    def in_flight(self, *_: Any) -> None:
        """Not counted."""

    def request(self, *_: Any) -> None:
        """Not counted."""

    def messages(self, *_: Any, **__: Any) -> None:
        """Not counted."""

    def spend(self, *_: Any) -> None:
        """Not counted."""

    def retries(self, *_: Any) -> None:
        """Not counted."""

    def failover(self, *_: Any) -> None:
        """Not counted."""

    def delivery_reports(self, *_: Any, **__: Any) -> None:
        """Not counted."""

    def link_click(self, *_: Any) -> None:
        """Not counted."""

    def optouts_added(self, *_: Any) -> None:
        """Not counted."""

    def callback_events(self, *_: Any) -> None:
        """Not counted."""

    def callback_request(self, *_: Any) -> None:
        """Not counted."""

    def callback_queue(self, *_: Any) -> None:
        """Not counted."""

    def prepare_worker(self, *_: Any) -> None:
        """Not counted."""

    def claims(self, *_: Any) -> None:
        """Not counted."""

    def coordinator_call(self, *_: Any) -> None:
        """Not counted."""

    def range_event(self, *_: Any) -> None:
        """Not counted."""


NO_METRICS: Metrics = _NoMetrics()
"""Metrics off: a :class:`Metrics` whose counting methods do nothing and whose registry is empty."""
