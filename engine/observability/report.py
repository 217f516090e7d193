"""What a run or preview tells the operator: counts by state and reason, cost per carrier, rejects."""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Protocol

import msgspec

from engine.core.messages import ACCEPTED, MessageBatch, Outcome, Reject, State, SubmitResult
from engine.core.phone import mask
from engine.core.preflight import Finding
from engine.observability.metrics import NO_METRICS, Metrics

__all__ = [
    "CarrierSummary",
    "GatewaySummary",
    "LatencyHistogram",
    "OutcomeSink",
    "RecorderState",
    "RejectsWriter",
    "RunRecorder",
    "RunSummary",
    "SampleMessage",
    "close_writers",
]


class CarrierSummary(msgspec.Struct, kw_only=True):
    """Messages, billed parts and cost for one carrier."""

    messages: int = 0
    parts: int = 0
    cost: float = 0.0


class LatencyHistogram:
    """Request latencies in log-spaced buckets (0.1 ms to ~100 s, 10% apart): constant memory,
    percentiles within 10%."""

    __slots__ = ("count", "counts")

    _BASE = 1e-4
    _STEP = math.log(1.1)

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.count = 0

    def observe(self, seconds: float) -> None:
        """Add one latency."""
        self.counts[max(0, int(math.log(max(seconds, self._BASE) / self._BASE) / self._STEP))] += 1
        self.count += 1

    def percentile(self, q: float) -> float:
        """The latency below which a share ``q`` (0–1) of requests fell, in seconds (upper bound)."""
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return self._BASE * math.exp((bucket + 1) * self._STEP)
        return 0.0


class GatewaySummary(msgspec.Struct, kw_only=True):
    """Requests and outcomes of one gateway."""

    requests: int = 0
    accepted: int = 0
    failed: int = 0
    retries: int = 0
    """Requests that sent messages again (after a throttle, a 5xx, a retry answer)."""
    latency_ms: dict[str, float] = {}
    """Request latency percentiles: ``p50``, ``p90``, ``p99``, ``p99.9``."""
    without_receipt: int = 0
    """SMPP/CMPP: accepted messages whose delivery receipt had not come when the run ended (after
    the gateway's ``receipt_wait``); their recipients stay ``submitted``."""


class SampleMessage(msgspec.Struct, kw_only=True):
    """A rendered message shown in a preview (the number masked)."""

    row: int
    to: str
    carrier: str
    parts: int
    text: str


class RunSummary(msgspec.Struct, kw_only=True):
    """The machine-readable summary of a preview or a run (``summary.json``)."""

    campaign: str
    name: str
    kind: str
    mode: str
    """``preview`` or ``send``."""
    rows: int
    """Rows read from the segment (blank lines excluded)."""
    states: dict[str, int]
    """Every row in exactly one state: ``sent``, ``failed``, ``rejected``… (``rendered`` in previews)."""
    reasons: dict[str, dict[str, int]]
    """Counts by reason for each state that has reasons."""
    carriers: dict[str, CarrierSummary]
    total_parts: int
    total_cost: float
    currency: str
    elapsed_seconds: float
    rows_per_second: float
    gateways: dict[str, GatewaySummary] = {}
    run_dir: str = ""
    files: dict[str, str] = {}
    """The CSV listing the rows of each state that has one: ``rejected``, ``suppressed``, ``deferred``."""
    variants: dict[str, int] = {}
    """An A/B test, in previews: the messages rendered of each variant (a send's are in ``pigeon report``)."""
    samples: list[SampleMessage] = []
    reject_samples: list[Reject] = []
    prefix_table: str = ""
    """Version of the carrier prefix table used."""
    findings: list[Finding] = []
    """Preflight findings (errors refuse a send)."""
    links: dict[str, str | int] = {}
    """The campaign's tracked link (``[links]``): ``mode``, an ``example`` link and its
    ``characters`` — billed in every message, as the parts above count them."""
    stopped: bool = False
    """The send was stopped (Ctrl-C / SIGTERM) before the whole segment was read: ``rows`` were read,
    and every one of them is accounted for; the rest of the segment was not touched."""
    halted: str = ""
    """A fault stopped the run before the end of its segment: ``gateway_unreachable`` (past
    ``outage.limit``), ``gateway_refused`` (credentials, account, signature or template),
    ``gateway_stalled`` (requests in a row without an answer), ``store_unwritable`` (a full disk…),
    ``lease_lost`` (another process took the campaign over). Everyone not sent is ``pending``
    (in ``states``) and ``pigeon resume`` sends them; ``message`` says what happened."""
    verdict: str = ""
    """The segment was judged not worth a send (``nothing_sendable``, ``too_many_rejected``: see
    ``policy.max_rejected_share``): the campaign is not marked finished; ``message`` says why."""
    message: str = ""
    """What stopped the run, or the verdict, and what to do — for the operator."""


class RecorderState(msgspec.Struct, kw_only=True):
    """A :class:`RunRecorder`'s counts, to carry across processes (a shard's, :mod:`engine.run.shards`)
    and add up: :meth:`RunRecorder.add` of every shard's state gives the run's counts."""

    rows: int = 0
    states: dict[str, int] = {}
    reasons: dict[str, dict[str, int]] = {}
    carriers: dict[str, CarrierSummary] = {}
    gateways: dict[str, GatewaySummary] = {}
    latency: dict[str, dict[int, int]] = {}
    """Gateway → latency histogram buckets (:class:`LatencyHistogram`), so percentiles merge exactly."""


class RejectsWriter:
    """Writes rejected or suppressed rows as CSV (``row,reason,detail,phone``), numbers masked."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] = path.open("w", newline="", encoding="utf-8")
        self._w = csv.writer(self._fh)
        self._w.writerow(["row", "reason", "detail", "phone"])

    def write(self, rejects: Iterable[Reject]) -> None:
        """Append rejects."""
        self._w.writerows((r.row, r.reason, r.detail, mask(r.phone)) for r in rejects)

    def close(self) -> None:
        """Flush and close."""
        self._fh.close()


def close_writers(recorder: RunRecorder) -> None:
    """Close every file the recorder writes to."""
    for w in recorder.writers.values():
        w.close()


class OutcomeSink(Protocol):
    """Something that keeps every recorded outcome too (the campaign ledger), called per batch."""

    def dropped(self, records: Sequence[Reject]) -> None:
        """A batch's rejected, suppressed and deferred rows."""

    def results(self, gateway: str, batch: MessageBatch, results: Sequence[SubmitResult]) -> None:
        """A request's answers."""

    def failed(self, gateway: str, batch: MessageBatch, reason: str) -> None:
        """A whole request failed."""

    def unknown(self, gateway: str, batch: MessageBatch, reason: str) -> None:
        """A request the gateway may or may not have taken."""

    def released(self, gateway: str, batch: MessageBatch, reason: str) -> None:
        """A request that did not go through (never left, or answered "again") is back to pending."""


_ELSEWHERE = {
    "claimed_elsewhere": "claimed by another worker or row",
    "opted_out": "opted out while the campaign ran (shared by the workers)",
    "capped": "this number reached its frequency cap (counted across the workers)",
    "same_content": "the same text went to this number within the window (from any worker)",
}


class RunRecorder:
    """Counts outcomes per batch: the one place a run's states are decided and tallied."""

    def __init__(self, prices: Mapping[str, float], samples: int = 0) -> None:
        self.prices = dict(prices)
        self.states: Counter[str] = Counter()
        self.reasons: dict[str, Counter[str]] = {}
        self.carriers: dict[str, CarrierSummary] = {}
        self.gateways: dict[str, GatewaySummary] = {}
        self.variants: Counter[str] = Counter()
        self.rows = 0
        self.sample_limit = samples
        self.samples: list[SampleMessage] = []
        self.reject_samples: list[Reject] = []
        self.latency: dict[str, LatencyHistogram] = {}
        self.writers: dict[str, RejectsWriter] = {}
        """Where the rows of each state go (``rejects.csv``, ``suppressed.csv``, ``deferred.csv``)."""
        self.sinks: list[OutcomeSink] = []
        """Also told every outcome, per batch (the campaign ledger)."""
        self.metrics: Metrics = NO_METRICS
        """Where gateway outcomes are also counted (the run sets it; the lanes count requests there)."""

    def _reason(self, state: State, reason: str, n: int = 1) -> None:
        self.reasons.setdefault(state, Counter())[reason] += n

    def dropped(self, records: Sequence[Reject]) -> None:
        """Record a batch's rejected and suppressed rows, and write them to their files."""
        if not records:
            return
        for sink in self.sinks:
            sink.dropped(records)
        self.rows += len(records)
        for (state, reason), n in Counter((r.state, r.reason) for r in records).items():
            self.states[state] += n
            self.reasons.setdefault(state, Counter())[reason] += n
        rejects = [r for r in records if r.state == State.REJECTED]
        if rejects and len(self.reject_samples) < self.sample_limit:
            self.reject_samples.extend(rejects[: self.sample_limit - len(self.reject_samples)])
        if self.writers:
            by_state: dict[str, list[Reject]] = {}
            for r in records:
                by_state.setdefault(r.state, []).append(r)
            for state, rows in by_state.items():
                w = self.writers.get(state)
                if w is not None:
                    w.write(rows)

    def rendered(
        self,
        nums: Sequence[int],
        numbers: Sequence[str],
        carriers: Sequence[str],
        texts: Sequence[str],
        parts: Sequence[int],
        variants: Sequence[str] = (),
    ) -> None:
        """Record a batch that passed every stage (previews: nothing is sent)."""
        self.rows += len(nums)
        if variants:
            self.variants.update(variants)
        self.states["rendered"] += len(nums)
        self._bill(carriers, parts)
        room = self.sample_limit - len(self.samples)
        for i in range(min(room, len(nums))):
            n = numbers[i]
            self.samples.append(
                SampleMessage(row=nums[i], to=mask(n), carrier=carriers[i], parts=parts[i], text=texts[i])
            )

    def queued(self, n: int) -> None:
        """Count rows that passed the stages and were handed to the sender."""
        self.rows += n

    def _bill(self, carriers: Sequence[str], parts: Sequence[int]) -> None:
        msgs = Counter(carriers)
        billed: Counter[str] = Counter()
        if len(msgs) == 1:
            billed[carriers[0]] = sum(parts)
        else:
            for c, p in zip(carriers, parts, strict=True):
                billed[c] += p
        for c, n in msgs.items():
            self._add(c, n, billed[c])

    def _add(self, carrier: str, messages: int, parts: int) -> None:
        s = self.carriers.get(carrier)
        if s is None:
            s = self.carriers[carrier] = CarrierSummary()
        s.messages += messages
        s.parts += parts
        s.cost = s.parts * self.prices.get(carrier, 0.0)

    def results(self, gateway: str, chunk: MessageBatch, results: Sequence[SubmitResult]) -> None:
        """Record one gateway request's answers (index-aligned with ``chunk``)."""
        g = self.gateways.get(gateway)
        if g is None:
            g = self.gateways[gateway] = GatewaySummary()
        g.requests += 1
        if len(results) != len(chunk):
            self.failed(gateway, chunk, "gateway_contract", count_request=False)
            return
        for sink in self.sinks:
            sink.results(gateway, chunk, results)
        if results.count(ACCEPTED) == len(results) or all(r.outcome is Outcome.ACCEPTED for r in results):
            n_accepted, parts = len(chunk), chunk.total_parts()
        else:
            n_accepted = parts = n_unknown = unknown_parts = 0
            for r, p in zip(results, chunk.parts, strict=True):
                if r.outcome is Outcome.ACCEPTED:
                    n_accepted += 1
                    parts += p
                elif r.outcome is Outcome.UNKNOWN:  # the provider could not say: not resent
                    n_unknown += 1
                    unknown_parts += p
                    self._reason(State.UNKNOWN, r.code or r.outcome.value)
                else:
                    self._reason(State.FAILED, f"{r.outcome.value}:{r.code or r.outcome.value}")
            n_failed = len(chunk) - n_accepted - n_unknown
            self.states[State.FAILED] += n_failed
            g.failed += n_failed
            failed_parts = chunk.total_parts() - parts - unknown_parts
            self.metrics.messages(gateway, chunk.carrier, "rejected", n_failed, failed_parts)
            if n_unknown:
                self.states[State.UNKNOWN] += n_unknown
                self.metrics.messages(gateway, chunk.carrier, "unknown", n_unknown, unknown_parts)
        g.accepted += n_accepted
        if n_accepted:
            self.metrics.messages(gateway, chunk.carrier, "accepted", n_accepted, parts)
            self.states[State.SENT] += n_accepted
            self._add(chunk.carrier, n_accepted, parts)

    def observe(self, gateway: str, seconds: float, *, retry: bool = False) -> None:
        """One request's latency (and whether it re-sent messages)."""
        h = self.latency.get(gateway)
        if h is None:
            h = self.latency[gateway] = LatencyHistogram()
        h.observe(seconds)
        if retry:
            self._gateway(gateway).retries += 1

    def request(self, gateway: str, *, count_only: bool = True) -> None:
        """Count a request whose messages all go again (nothing final to record yet)."""
        if count_only:
            self._gateway(gateway).requests += 1

    def released(self, gateway: str, chunk: MessageBatch, reason: str) -> None:
        """Messages handed over that did not go through (the request never left, or must go again):
        back to ``pending`` in the sinks until they are handed over again. Not a final state."""
        for sink in self.sinks:
            sink.released(gateway, chunk, reason)

    def elsewhere(self, chunk: MessageBatch, reason: str) -> None:
        """Messages queued here that another worker claimed first (a coordinated campaign): recorded
        ``suppressed`` with ``reason`` in the sinks and the row files — the claiming worker's ledger
        records the send. Already counted as rows when they were queued."""
        if not len(chunk):
            return
        records = [
            Reject(row, reason, _ELSEWHERE.get(reason, ""), number, State.SUPPRESSED)
            for row, number in zip(chunk.rows, chunk.numbers, strict=True)
        ]
        self.rows -= len(records)  # dropped() counts them again
        self.dropped(records)
        self.metrics.stage_batch("claim", len(records), 0, {reason: len(records)})

    def doubtful(self, gateway: str, chunk: MessageBatch, reason: str) -> None:
        """Messages another (dead) worker claimed and may have sent: recorded ``unknown`` with
        ``reason`` (never resent blindly), as if ``gateway`` had answered so — no request made."""
        if not len(chunk):
            return
        answers = [SubmitResult(Outcome.UNKNOWN, code=reason)] * len(chunk)
        for sink in self.sinks:
            sink.results(gateway, chunk, answers)
        self.states[State.UNKNOWN] += len(chunk)
        self._reason(State.UNKNOWN, reason, len(chunk))

    def pending(self, chunk: MessageBatch, reason: str) -> None:
        """Messages read but not sent when the run halted (``reason``): ``pending``, for a resume."""
        self.states[State.PENDING] += len(chunk)
        self._reason(State.PENDING, reason, len(chunk))

    def waiting(self) -> int:
        """Rows handed to the sender and not settled yet."""
        return self.rows - sum(self.states.values())

    def unknown(self, gateway: str, chunk: MessageBatch, reason: str) -> None:
        """Record messages a gateway may or may not have taken (not resent: a delivery report settles it)."""
        for sink in self.sinks:
            sink.unknown(gateway, chunk, reason)
        self._gateway(gateway).requests += 1
        self.states[State.UNKNOWN] += len(chunk)
        self.metrics.messages(gateway, chunk.carrier, "unknown", len(chunk), chunk.total_parts())
        self._reason(State.UNKNOWN, reason, len(chunk))

    def _gateway(self, name: str) -> GatewaySummary:
        g = self.gateways.get(name)
        if g is None:
            g = self.gateways[name] = GatewaySummary()
        return g

    def failed(self, gateway: str, chunk: MessageBatch, reason: str, *, count_request: bool = True) -> None:
        """Record a whole request that failed."""
        g = self.gateways.get(gateway)
        if g is None:
            g = self.gateways[gateway] = GatewaySummary()
        if count_request:
            g.requests += 1
        for sink in self.sinks:
            sink.failed(gateway, chunk, reason)
        g.failed += len(chunk)
        self.states[State.FAILED] += len(chunk)
        self.metrics.messages(gateway, chunk.carrier, "failed", len(chunk), chunk.total_parts())
        self._reason(State.FAILED, reason, len(chunk))

    def state(self) -> RecorderState:
        """A copy of the counts (see :class:`RecorderState`)."""
        return RecorderState(
            rows=self.rows,
            states=dict(self.states),
            reasons={k: dict(v) for k, v in self.reasons.items()},
            carriers={c: msgspec.structs.replace(s) for c, s in self.carriers.items()},
            gateways={g: msgspec.structs.replace(s, latency_ms={}) for g, s in self.gateways.items()},
            latency={g: dict(h.counts) for g, h in self.latency.items()},
        )

    def add(self, state: RecorderState) -> None:
        """Add another recorder's counts to these (costs are recomputed from the parts)."""
        self.rows += state.rows
        self.states.update(state.states)
        for k, v in state.reasons.items():
            self.reasons.setdefault(k, Counter()).update(v)
        for c, cs in state.carriers.items():
            self._add(c, cs.messages, cs.parts)
        for name, gs in state.gateways.items():
            g = self._gateway(name)
            g.requests += gs.requests
            g.accepted += gs.accepted
            g.failed += gs.failed
            g.retries += gs.retries
        for name, counts in state.latency.items():
            h = self.latency.get(name)
            if h is None:
                h = self.latency[name] = LatencyHistogram()
            h.counts.update(counts)
            h.count += sum(counts.values())

    def _with_latency(self, name: str, g: GatewaySummary) -> GatewaySummary:
        h = self.latency.get(name)
        if h is not None and h.count:
            g.latency_ms = {
                label: round(h.percentile(q) * 1000, 2)
                for label, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999))
            }
        return g

    def summary(
        self,
        *,
        campaign: str,
        name: str,
        kind: str,
        mode: str,
        currency: str,
        elapsed: float,
        run_dir: str = "",
        prefix_table: str = "",
    ) -> RunSummary:
        """Freeze the counts into a :class:`RunSummary`."""
        parts = sum(c.parts for c in self.carriers.values())
        cost = sum(c.cost for c in self.carriers.values())
        return RunSummary(
            campaign=campaign,
            name=name,
            kind=kind,
            mode=mode,
            rows=self.rows,
            states=dict(self.states),
            reasons={k: dict(v.most_common()) for k, v in self.reasons.items()},
            carriers=dict(sorted(self.carriers.items())),
            variants=dict(self.variants),
            total_parts=parts,
            total_cost=round(cost, 4),
            currency=currency,
            elapsed_seconds=round(elapsed, 3),
            rows_per_second=round(self.rows / elapsed, 1) if elapsed > 0 else 0.0,
            gateways={name: self._with_latency(name, g) for name, g in self.gateways.items()},
            run_dir=run_dir,
            files={state: str(w.path) for state, w in self.writers.items()},
            samples=self.samples,
            reject_samples=self.reject_samples,
            prefix_table=prefix_table,
        )
