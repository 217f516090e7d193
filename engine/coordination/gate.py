"""The lanes' gate to a coordinator: each request's claims and shared rate budgets; a pause when it is down.

:class:`CoordinatedGate` is the :class:`~engine.sending.sender.SharedGate` a run's lanes call when
the engine names a coordinator (``[coordinator]``, ``pigeon send --coordinator``). Per request,
never per message:

* ``claim`` — one call for the request's recipients (``Coordinator.claim``); those another worker
  holds leave the request (recorded ``suppressed``, ``claimed_elsewhere``: the claiming worker's
  ledger records the send); with frequency caps or a same-content window, the same call checks
  and counts them for every worker (those held back are recorded ``suppressed``, ``capped`` or
  ``same_content``, as the stages of those names do);
* ``charge`` — the request's billed parts on the carrier's budget (key ``(*, carrier, all)``,
  the carrier's ``rate_per_second`` for all workers together) and on the gateway's
  (``(gateway, *, all)``, its ``rate_per_second``). The carrier's is booked first; when the
  gateway's then says wait, the carrier's booking stays spent (a little throughput lost, never
  a window over its rate).

A store that does not answer raises :class:`~engine.core.errors.CoordinatorUnavailable` through
the gate: the lane waits :attr:`CoordinatedGate.pause` seconds and asks again, and the gate says
"paused" (then every few seconds, then "resumed") — a request never goes without its claims.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.coordination.contract import (
    BudgetKey,
    BudgetSpec,
    CapCheck,
    Claim,
    Coordinator,
    SharedChecks,
    SharedOptOuts,
    SharedSlowDown,
    SlowDown,
)
from engine.core.config import EngineConfig
from engine.core.errors import ConfigError, CoordinatorUnavailable
from engine.core.messages import MessageBatch, number_key
from engine.observability.metrics import NO_METRICS, Metrics
from engine.pipeline.stages.same_content import content_hash
from engine.state.caps import CapWindow

__all__ = [
    "ALL",
    "SLOW_DOWN",
    "ApiGate",
    "CoordinatedGate",
    "SharedBudgets",
    "shared_budgets",
    "shared_spec",
]

log = logging.getLogger("pigeon.coordination")

ALL = "*"
"""The budget key's part that stands for "every gateway" or "every carrier"."""
LANE = "all"
"""The lane of a budget kept for every request (no transactional reserve)."""
MARKETING = "marketing"
"""The lane of the part of a budget marketing campaigns book when a reserve is kept."""
RESERVE = "transactional"
"""The lane of the reserved part: transactional campaigns book it first, then the marketing part."""
_SAY_EVERY = 5.0
SLOW_DOWN = SlowDown()
"""The default slow-down of shared budgets (``[coordinator] slow_down = true``)."""


def shared_spec(
    rate: float, max_parts: int, burst_share: float, margin: float, *, key: str, file: str
) -> BudgetSpec:
    """The shared budget of ``rate`` parts/s: the largest request ``burst_share`` of the rate (at
    least one message of ``max_parts``, below the rate). ConfigError (naming ``key``) when one
    message would not fit below the rate."""
    burst = max(max_parts, min(math.floor(rate * burst_share), math.ceil(rate) - 1))
    if burst >= rate:
        raise ConfigError(
            file,
            key,
            f"{rate:g} parts/s shared by the workers leaves no room for one message of {max_parts} parts "
            f"and the GCRA's burst: raise it above {max_parts}",
        )
    return BudgetSpec(rate=rate, burst=burst, margin=margin)


@dataclass(frozen=True, slots=True)
class SharedBudgets:
    """The shared GCRA budgets of an engine's carriers and gateways (and their reserves)."""

    carriers: dict[str, BudgetSpec] = field(default_factory=dict)
    gateways: dict[str, BudgetSpec] = field(default_factory=dict)
    carrier_reserves: dict[str, BudgetSpec] = field(default_factory=dict)
    gateway_reserves: dict[str, BudgetSpec] = field(default_factory=dict)


def shared_budgets(
    ecfg: EngineConfig, file: str, max_parts: int, served: Callable[[str], Sequence[str]]
) -> SharedBudgets:
    """Every rated carrier's and gateway's shared budget under ``ecfg``'s ``[coordinator]`` (with
    ``reserve``: the ``transactional_share`` a bucket of its own; a gateway keeps the largest share
    of the carriers it ``served``). Every process that sends through the same Redis — ``pigeon
    send``, ``pigeon worker``, ``pigeon serve`` — computes the same figures from the same engine
    file, so they book the same buckets. ``max_parts``: the largest message, which each bucket must
    hold (ConfigError, naming the rate, when one cannot)."""
    ccfg = ecfg.coordinator
    out = SharedBudgets()
    shares: dict[str, float] = {c: cc.transactional_share for c, cc in ecfg.carriers.items()}
    rated: list[tuple[str, str, int, float, dict[str, BudgetSpec], dict[str, BudgetSpec]]] = [
        (
            f"carriers.{c}",
            str(c),
            cc.rate_per_second,
            cc.transactional_share,
            out.carriers,
            out.carrier_reserves,
        )
        for c, cc in ecfg.carriers.items()
        if cc.rate_per_second
    ]
    rated += [
        (
            f"gateways.{g}",
            g,
            gc.rate_per_second,
            max((shares.get(c, 0.2) for c in served(g)), default=0.2),
            out.gateways,
            out.gateway_reserves,
        )
        for g, gc in ecfg.gateways.items()
        if gc.rate_per_second
    ]
    for path, name, rate, share, specs, kept in rated:
        key = f"{path}.rate_per_second"
        most = max_parts
        if ccfg.reserve and share > 0:  # the reserve a bucket of its own; each must hold one message
            specs[name] = shared_spec(rate * (1 - share), most, ccfg.burst, ccfg.margin, key=key, file=file)
            kept[name] = shared_spec(rate * share, most, ccfg.burst, ccfg.margin, key=key, file=file)
        else:
            specs[name] = shared_spec(rate, most, ccfg.burst, ccfg.margin, key=key, file=file)
    return out


def _keys(batch: MessageBatch) -> list[str]:
    """The recipients as a coordinator's claims name them (their number keys, as text)."""
    return list(map(str, batch.keys()))


class CoordinatedGate:
    """Claims and shared budgets of one campaign on ``coordinator`` (see the module docstring)."""

    def __init__(
        self,
        coordinator: Coordinator,
        campaign: str,
        *,
        carrier_budgets: Mapping[str, BudgetSpec],
        gateway_budgets: Mapping[str, BudgetSpec],
        notify: Callable[[str], None] | None = None,
        pause: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics = NO_METRICS,
        worker: str = "",
        carrier_reserves: Mapping[str, BudgetSpec] | None = None,
        gateway_reserves: Mapping[str, BudgetSpec] | None = None,
        priority: str = "marketing",
        caps: Sequence[CapWindow] = (),
        same_content: float = 0.0,
        wall: Callable[[], float] = time.time,
        slow: SlowDown | None = SLOW_DOWN,
    ) -> None:
        self.coordinator = coordinator
        self.slow = slow if isinstance(coordinator, SharedSlowDown) else None
        """How the shared budgets slow down for every worker when a receiver says "too fast"
        (None: not shared — off, or a coordinator that cannot; each process's own limiter still
        halves its rate)."""
        self.cuts = 0
        """Cuts of a shared budget this worker made (a throttled answer outside another's hold)."""
        sharing = bool(caps or same_content) and "caps" in inspect.signature(coordinator.claim).parameters
        self.caps = tuple(caps) if sharing else ()
        claim = getattr(coordinator, "claim", None)
        self._optouts_kw = claim is not None and "optouts" in inspect.signature(claim).parameters
        """The coordinator's claim can leave the shared opt-outs out (a transactional campaign)."""
        """The campaign kind's frequency cap windows, checked and counted with each claim by a
        coordinator that shares them (every worker's sends count); empty: none, or a coordinator
        written before :class:`~engine.coordination.contract.CapCheck` (its ``claim`` takes no
        ``caps``: each worker's own ``cap`` stage counts, as before)."""
        self.same_content = same_content if sharing else 0.0
        """The same-content window (seconds; 0: none) checked with each claim across the workers."""
        self.wall = wall
        """The wall clock (epoch seconds) that places a claim in its cap windows."""
        self.carrier_reserves = dict(carrier_reserves or {})
        """Carrier → its transactional reserve: then :attr:`carrier_budgets` holds the rest (lane
        ``marketing``), and the reserve is a GCRA bucket of its own (lane ``transactional``)."""
        self.gateway_reserves = dict(gateway_reserves or {})
        """Gateway → its transactional reserve (as :attr:`carrier_reserves`)."""
        self.priority = priority
        """The campaign's kind: ``transactional`` books a reserve first, then the marketing part;
        ``marketing`` never books a reserve."""
        self.metrics = metrics
        self.worker = worker
        """This process's name in the coordinator (the ``worker`` label of its metrics)."""
        metrics.prepare_worker(worker)
        self.campaign = campaign
        self.carrier_budgets = dict(carrier_budgets)
        self.gateway_budgets = dict(gateway_budgets)
        self.notify = notify
        self.pause = pause
        self.clock = clock
        self.down_since: float | None = None
        """Monotonic time the store stopped answering (None while it answers)."""
        self._said = -math.inf
        self.claims = self.taken = self.adopted = self.capped = self.charges = self.calls = 0
        """Recipients claimed by this worker, found claimed by another, taken over from a dead one,
        held back by a shared cap, requests booked, store calls."""
        self.adopt = ""
        """The dead worker whose range this worker is sending now: its claims are taken over."""
        self.resend_adopted = False
        """Whether recipients a dead worker claimed are sent again (every gateway is idempotent:
        the provider drops a message id it has seen) or end ``unknown`` (the default)."""

    # -- claims ------------------------------------------------------------------------------------

    async def claim(
        self, batch: MessageBatch
    ) -> tuple[list[int], list[int], list[int], dict[str, list[int]]]:
        """Claim ``batch``'s recipients in one call, tagged with their rows (the same number on
        another row is ``TAKEN``: a duplicate across ranges). Returns the indices another worker or
        row holds, those opted out since the campaign started (any worker's
        :meth:`add_optouts`), those adopted from :attr:`adopt` that must not be resent (unless
        :attr:`resend_adopted`), and — by reason, ``capped`` or ``same_content`` — those held back
        by a cap or a same-content window every worker's sends count (:attr:`caps`)."""
        keys = _keys(batch)
        self.calls += 1
        metrics, worker = self.metrics, self.worker
        tags = list(map(str, batch.rows))
        extra: dict[str, Any] = {}
        if self._optouts_kw and self.priority == RESERVE:  # opt-outs stop marketing only
            extra["optouts"] = False
        try:
            if self.caps or self.same_content:
                contents = tuple(map(content_hash, batch.texts)) if self.same_content else ()
                caps = CapCheck(self.priority, self.caps, self.wall(), self.same_content, contents)
                answers = await self.coordinator.claim(
                    self.campaign, keys, tags=tags, adopt=self.adopt, caps=caps, **extra
                )
            else:
                answers = await self.coordinator.claim(
                    self.campaign, keys, tags=tags, adopt=self.adopt, **extra
                )
        except CoordinatorUnavailable:
            metrics.coordinator_call(worker, "claim", False)
            raise
        metrics.coordinator_call(worker, "claim", True)
        if answers.count(Claim.NEW) == len(answers):  # the usual case, one C scan
            self.claims += len(answers)
            metrics.claims(worker, "new", len(answers))
            return [], [], [], {}
        taken = [i for i, a in enumerate(answers) if a is Claim.TAKEN]
        opted = [i for i, a in enumerate(answers) if a is Claim.OPTED_OUT]
        capped = [i for i, a in enumerate(answers) if a is Claim.CAPPED]
        repeated = [i for i, a in enumerate(answers) if a is Claim.SAME_CONTENT]
        doubtful = [] if self.resend_adopted else [i for i, a in enumerate(answers) if a is Claim.ADOPTED]
        self.taken += len(taken)
        self.capped += len(capped)
        self.adopted += sum(a is Claim.ADOPTED for a in answers)
        self.claims += len(answers) - len(taken) - len(opted) - len(capped) - len(repeated) - len(doubtful)
        adopted = sum(a is Claim.ADOPTED for a in answers)
        metrics.claims(worker, "taken", len(taken))
        metrics.claims(worker, "opted_out", len(opted))
        metrics.claims(worker, "capped", len(capped))
        metrics.claims(worker, "same_content", len(repeated))
        metrics.claims(worker, "adopted", adopted)
        metrics.claims(
            worker, "new", len(answers) - len(taken) - len(opted) - len(capped) - len(repeated) - adopted
        )
        held = {reason: idx for reason, idx in (("capped", capped), ("same_content", repeated)) if idx}
        return taken, opted, doubtful, held

    async def add_optouts(self, numbers: Sequence[str]) -> None:
        """Numbers opted out now (an MO reply this worker read): every worker's next claim of them
        is refused. Best effort: a store that does not answer leaves them to this worker's own set
        and the SQL store (the record)."""
        if not numbers or not isinstance(self.coordinator, SharedOptOuts):
            return
        keys = [str(number_key(n)) for n in numbers]
        try:
            self.calls += 1
            await self.coordinator.add_optouts(self.campaign, keys)
        except CoordinatorUnavailable as exc:
            log.warning("opt-outs not shared: %s", exc, extra={"event": "coordinator.optouts_unshared"})

    async def release(self, batch: MessageBatch) -> None:
        """Give back the claims of a request that never left; a store that does not answer keeps them."""
        try:
            self.calls += 1
            await self.coordinator.release_claims(self.campaign, _keys(batch))
        except CoordinatorUnavailable:
            pass

    # -- budgets -----------------------------------------------------------------------------------

    def _level(
        self, gateway: str, carrier: str, spec: BudgetSpec | None, reserve: BudgetSpec | None
    ) -> list[tuple[BudgetKey, BudgetSpec]]:
        """The buckets a request may book at one level (carrier or gateway), in order."""
        if spec is None:
            return []
        if reserve is None:
            return [(BudgetKey(gateway, carrier, LANE), spec)]
        rest = (BudgetKey(gateway, carrier, MARKETING), spec)
        return [(BudgetKey(gateway, carrier, RESERVE), reserve), rest] if self.priority == RESERVE else [rest]

    def _account(self, gateway: str, carrier: str) -> list[tuple[BudgetKey, BudgetSpec]]:
        """The buckets a receiver's "too fast" slows: every bucket of the gateway's budget (the
        provider account that answered), or the carrier's when the gateway has none."""
        for gw, ca, spec, reserve in (
            (gateway, ALL, self.gateway_budgets.get(gateway), self.gateway_reserves.get(gateway)),
            (ALL, carrier, self.carrier_budgets.get(carrier), self.carrier_reserves.get(carrier)),
        ):
            if spec is None:
                continue
            if reserve is None:
                return [(BudgetKey(gw, ca, LANE), spec)]
            return [(BudgetKey(gw, ca, RESERVE), reserve), (BudgetKey(gw, ca, MARKETING), spec)]
        return []

    async def throttled(self, gateway: str, carrier: str) -> None:
        """``gateway`` answered "too fast" for ``carrier``: slow its shared budget down for every
        worker (one call per bucket, at most one cut per hold: see :class:`SlowDown`). Best effort:
        a store that does not answer leaves the rate as it is (the next charge pauses the lane)."""
        coordinator = self.coordinator
        if self.slow is None or not isinstance(coordinator, SharedSlowDown):
            return
        for key, spec in self._account(gateway, carrier):
            self.calls += 1
            try:
                share, cut = await coordinator.slow_down(key, spec, self.slow)
            except CoordinatorUnavailable:
                self.metrics.coordinator_call(self.worker, "slow_down", False)
                return
            self.metrics.coordinator_call(self.worker, "slow_down", True)
            if cut:
                self.cuts += 1
                said = (
                    f"shared budget {key.tag()} slowed to {share:.0%} of {spec.rate:,.0f} parts/s for every "
                    f"worker: {gateway} answered too fast"
                )
                extra = {"event": "budget.slowed", "budget": key.tag(), "share": round(share, 4)}
                log.warning(said, extra=extra)
                if self.notify is not None:
                    self.notify(said)

    def _specs(self, gateway: str, carrier: str) -> list[list[tuple[BudgetKey, BudgetSpec]]]:
        levels = [
            self._level(ALL, carrier, self.carrier_budgets.get(carrier), self.carrier_reserves.get(carrier)),
            self._level(gateway, ALL, self.gateway_budgets.get(gateway), self.gateway_reserves.get(gateway)),
        ]
        return [alts for alts in levels if alts]

    def burst(self, gateway: str, carrier: str) -> int | None:
        """The most parts one request may take on these budgets (None: no shared budget)."""
        levels = self._specs(gateway, carrier)
        return min(max(s.burst for _, s in alts) for alts in levels) if levels else None

    async def charge(self, gateway: str, carrier: str, parts: int) -> float:
        """Book ``parts`` on the carrier's, then the gateway's shared budget — at each, a
        transactional campaign's reserve first, then the marketing part; the shortest wait asked
        at the first level that booked nothing."""
        for alts in self._specs(gateway, carrier):
            wait = math.inf
            for key, spec in alts:
                if parts > spec.burst:
                    continue
                self.calls += 1
                try:
                    asked = await self.coordinator.charge(key, spec, parts)
                except CoordinatorUnavailable:
                    self.metrics.coordinator_call(self.worker, "charge", False)
                    raise
                self.metrics.coordinator_call(self.worker, "charge", True)
                if asked <= 0:
                    wait = 0.0
                    break
                wait = min(wait, asked)
            if wait > 0:
                return wait
        self.charges += 1
        return 0.0

    # -- the store's health ----------------------------------------------------------------------

    def unavailable(self, error: CoordinatorUnavailable, waiting: int) -> None:
        """The store did not answer: sending is paused; say so now and every few seconds."""
        now = self.clock()
        if self.down_since is None:
            self.down_since = now
            log.warning(
                "coordinator unreachable: %s",
                error,
                extra={"event": "coordinator.down", "reason": "unreachable"},
            )
        if self.notify is not None and now - self._said >= _SAY_EVERY:
            self._said = now
            self.notify(
                f"coordinator {self.coordinator.name} unreachable for {now - self.down_since:.0f} s "
                f"({error}): sending paused, {waiting:,} recipients waiting — nothing goes without its claim"
            )

    def available(self) -> None:
        """The store answered: if it had not, sending resumes (said once)."""
        if self.down_since is not None:
            gone = self.clock() - self.down_since
            self.down_since = None
            self._said = -math.inf
            log.info("coordinator answers again", extra={"event": "coordinator.up"})
            if self.notify is not None:
                self.notify(
                    f"coordinator {self.coordinator.name} answers again after {gone:.0f} s: sending resumed"
                )


class ApiGate(CoordinatedGate):
    """The gate of ``pigeon serve``'s API lanes: the same shared budgets as a blast's (one charge per
    request), but no claims kept — one number may get many API messages — only a check per request
    (:class:`~engine.coordination.contract.SharedChecks`): opt-outs (``optouts``, for marketing:
    the stream's and the shared set), the kind's frequency caps and same-content window, counted
    with every worker's. ``campaign`` names the stream (``api-marketing``, ``api-transactional``):
    its opt-out set, and its messages' rows (tags) keep two messages to one number apart. With
    nothing to check (transactional, no caps) a request asks only for its charge."""

    def __init__(
        self,
        coordinator: Coordinator,
        campaign: str,
        *,
        optouts: bool,
        on_held: Callable[[list[str], str], None] | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(coordinator, campaign, **kwargs)  # type: ignore[arg-type]
        self.on_held = on_held
        """Told the message ids held back and why (``opted_out``, ``capped``, ``same_content``)."""
        checks = isinstance(coordinator, SharedChecks)
        self.optouts = optouts and checks
        """Whether each request's recipients are checked against the shared opt-outs."""
        if not checks:
            self.caps, self.same_content = (), 0.0

    async def claim(
        self, batch: MessageBatch
    ) -> tuple[list[int], list[int], list[int], dict[str, list[int]]]:
        """Check ``batch``'s recipients in one call: the indices opted out, and — by reason,
        ``capped`` or ``same_content`` — those held back by a cap every worker counts; nothing is
        claimed (the first and third lists stay empty)."""
        if not (self.optouts or self.caps or self.same_content):
            return [], [], [], {}
        coordinator = self.coordinator
        assert isinstance(coordinator, SharedChecks)
        self.calls += 1
        contents = tuple(map(content_hash, batch.texts)) if self.same_content else ()
        caps = CapCheck(self.priority, self.caps, self.wall(), self.same_content, contents)
        try:
            answers = await coordinator.check(
                self.campaign,
                _keys(batch),
                tags=list(map(str, batch.rows)),
                caps=caps if (self.caps or self.same_content) else None,
                optouts=self.optouts,
            )
        except CoordinatorUnavailable:
            self.metrics.coordinator_call(self.worker, "claim", False)
            raise
        self.metrics.coordinator_call(self.worker, "claim", True)
        if answers.count(Claim.NEW) == len(answers):
            self.metrics.claims(self.worker, "new", len(answers))
            return [], [], [], {}
        opted = [i for i, a in enumerate(answers) if a is Claim.OPTED_OUT]
        capped = [i for i, a in enumerate(answers) if a is Claim.CAPPED]
        repeated = [i for i, a in enumerate(answers) if a is Claim.SAME_CONTENT]
        self.capped += len(capped)
        for answer, n in (("opted_out", opted), ("capped", capped), ("same_content", repeated)):
            self.metrics.claims(self.worker, answer, len(n))
        self.metrics.claims(self.worker, "new", len(answers) - len(opted) - len(capped) - len(repeated))
        held = {reason: idx for reason, idx in (("capped", capped), ("same_content", repeated)) if idx}
        if self.on_held is not None:
            for reason, idx in (("opted_out", opted), *held.items()):
                if idx:
                    self.on_held([batch.ids[i] for i in idx], reason)
        return [], opted, [], held

    async def release(self, batch: MessageBatch) -> None:
        """Nothing was claimed (what the caps counted stays counted: held back early, never over)."""
