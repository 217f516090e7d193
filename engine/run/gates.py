"""A campaign's gates before it starts: the planned cost against its spend cap, and the test send
of each variant to its seed numbers (recorded apart from the campaign: :mod:`engine.state.gates`)."""

from __future__ import annotations

import dataclasses
import getpass
import os
import time
from contextlib import suppress
from pathlib import Path

import anyio
import msgspec

from engine.core.carriers import INTL
from engine.core.config import convert_section
from engine.core.errors import ConfigError, EngineError, GatewayError
from engine.core.messages import MessageBatch, Outcome, SubmitResult
from engine.core.phone import mask, parse_phone
from engine.core.provider_template import ProviderParams
from engine.run.plan import Plan
from engine.run.preview import preview
from engine.sending.gateway import Gateway, GatewayContext
from engine.state.gates import Gates, TestRecord, content_hash

__all__ = ["SpendCapExceeded", "TestSendError", "check_spend", "run_send_test", "send_test"]

SAMPLE_ROWS = 100_000
"""Most segment rows read to find a real row for each variant of a test send."""


class SpendCapExceeded(EngineError):
    """The campaign's planned cost is over its ``policy.spend_cap`` (``spend_cap_mode = "refuse"``)."""


class TestSendError(EngineError):
    """A test send cannot be made (no seeds, no sendable row for a variant, a seed with no gateway)."""

    __test__ = False


def check_spend(plan: Plan) -> float | None:
    """Refuse, before anything is sent, a campaign whose planned cost — every sendable row of the
    segment through every stage, billed parts × the carrier's price, as ``pigeon preview`` counts
    it — is over ``policy.spend_cap`` (unless ``spend_cap_mode = "partial"``). Returns the planned
    cost (None without a cap, or in ``partial`` mode, where nothing is planned)."""
    policy = plan.campaign.config.policy
    if policy.spend_cap is None or policy.spend_cap_mode == "partial":
        return None
    summary = preview(plan, samples=0)
    planned = summary.total_cost
    if planned > policy.spend_cap + 1e-9:
        cur = plan.engine.config.currency
        raise SpendCapExceeded(
            f"{plan.campaign.file}: the campaign would cost {planned:,.2f} {cur} "
            f"({summary.total_parts:,} billed parts), {planned - policy.spend_cap:,.2f} {cur} over "
            f"policy.spend_cap = {policy.spend_cap:,.2f} {cur}. Nothing was sent. Raise spend_cap, "
            'cut the segment, or set spend_cap_mode = "partial" to send until the cap is reached '
            "(the rest stays pending for a resume)"
        )
    return planned


def _seeds(plan: Plan) -> list[tuple[str, str]]:
    """The seed numbers as the engine sends them, with their carrier."""
    c = plan.campaign
    out: list[tuple[str, str]] = []
    for i, raw in enumerate(c.config.review.seeds):
        parsed = parse_phone(raw)
        number = parsed.national or parsed.e164
        carrier = INTL if number.startswith("+") else plan.table.route.get(number[:5], "")
        if not carrier or carrier not in plan.routes:
            raise ConfigError(
                c.file,
                f"review.seeds[{i}]",
                f"{mask(raw)}: no gateway of the engine serves its carrier "
                f"({carrier or 'unallocated prefix'})",
            )
        out.append((number, carrier))
    return out


def _sample(plan: Plan) -> list[tuple[str, str, int, ProviderParams | None]]:
    """Per variant (``""`` without an A/B test): its name and its message as the first real row
    sent that variant renders it (link and filed-template parameters included), with its parts.

    The campaign's own send window, opt-outs, consents and caps are left out: they judge the
    recipients, not the text, and a test goes to the team's phones."""
    c = plan.campaign
    cfg = c.config
    policy = msgspec.structs.replace(cfg.policy, send_window="", respect_optouts=False)
    sampling = dataclasses.replace(
        plan,
        campaign=msgspec.structs.replace(c, config=msgspec.structs.replace(cfg, policy=policy)),
        optouts=None,
        consents=None,
        caps=None,
        same_content=None,
    )
    names = list(plan.split.names) if plan.split is not None else [""]
    found: dict[str, tuple[str, str, int, ProviderParams | None]] = {}
    segment = sampling.open_segment(record_links=False)
    read = 0
    try:
        for batch in segment.batches(min(plan.engine.config.batch_size, 4096)):
            read += len(batch.rows) + len(batch.rejects or ())
            for i in range(len(batch.nums)):
                name = batch.variants[i] if batch.variants else ""
                if name not in found:
                    params = batch.params[i] if batch.params else None
                    found[name] = (name, batch.texts[i], batch.parts[i], params)
            if len(found) == len(names) or read >= SAMPLE_ROWS:
                break
    finally:
        segment.close()
    missing = [n or "(the text)" for n in names if n not in found]
    if missing:
        raise TestSendError(
            f"{c.file}: no sendable row among the segment's first {read:,} rows for "
            f"{', '.join(missing)}: a test send renders real rows; check the segment with `pigeon preview`"
        )
    return [found[n] for n in names]


async def send_test(plan: Plan, *, by: str, runs_dir: str | Path | None = None) -> TestRecord:
    """Send each variant's message (rendered from a real row) to every seed number through the
    campaign's gateways, outside its ledger, caps and dedupe; record and return the outcome.

    Message ids are ``<campaign>~test-<time>-<n>``: a delivery report of one never matches a
    recipient of the campaign. A request that fails counts its messages as not accepted."""
    c = plan.campaign
    if not c.config.review.seeds:
        raise ConfigError(c.file, "review.seeds", "list the seed numbers a test send goes to")
    seeds = _seeds(plan)
    closed = [
        (carrier, w) for carrier, w in plan.gateway_windows().items() if not w.is_open(plan.clock.time())
    ]
    if any(carrier == seed_carrier for carrier, _ in closed for _, seed_carrier in seeds):
        window = closed[0][1]
        raise TestSendError(
            f"the gateway of the seeds' carrier accepts messages only {window}: test again "
            f"{window.describe_opening(plan.clock.time())}"
        )
    messages = await anyio.to_thread.run_sync(lambda: _sample(plan))
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(plan.clock.time()))
    run_dir = Path(runs_dir or plan.engine.config.runs_dir) / c.id / f"test-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    by_carrier: dict[str, list[tuple[str, str, str, int, ProviderParams | None, str]]] = {}
    n = 0
    for variant, text, parts, params in messages:  # variant by variant, seed by seed
        for number, carrier in seeds:
            n += 1
            item = (f"{c.id}~test-{stamp}-{n}", number, text, parts, params, variant)
            by_carrier.setdefault(carrier, []).append(item)
    report: list[dict[str, str]] = []
    gateways: dict[str, Gateway] = {}
    try:
        for carrier, items in by_carrier.items():
            name = plan.routes[carrier]
            gw = gateways.get(name)
            if gw is None:
                gcfg = plan.engine.config.gateways[name]
                reg = plan.host.gateways.get(gcfg.plugin)
                opts = convert_section(
                    gcfg.options, reg.config_type, file=plan.engine.file, path=f"gateways.{name}.options"
                )
                gw = gateways[name] = reg.factory(
                    opts, GatewayContext(name=name, base_dir=plan.engine.base_dir, run_dir=run_dir)
                )
            step = max(1, gw.max_batch)
            for start in range(0, len(items), step):
                chunk = items[start : start + step]
                has_params = any(i[4] is not None for i in chunk)
                batch = MessageBatch(
                    carrier,
                    rows=[0] * len(chunk),
                    numbers=[i[1] for i in chunk],
                    texts=[i[2] for i in chunk],
                    parts=[i[3] for i in chunk],
                    ids=[i[0] for i in chunk],
                    params=[i[4] for i in chunk] if has_params else None,
                    variants=[i[5] for i in chunk] if plan.split is not None else None,
                )
                try:
                    results: list[SubmitResult] = list(await gw.send(batch))
                except GatewayError as exc:  # the whole request: none of its messages counts as accepted
                    results = [SubmitResult(Outcome.REJECTED, code=type(exc).__name__)] * len(chunk)
                for item, result in zip(chunk, results, strict=False):
                    report.append(
                        {
                            "id": item[0],
                            "variant": item[5],
                            "to": mask(item[1]),
                            "gateway": name,
                            "outcome": result.outcome.value,
                            "code": result.code,
                            "provider_id": result.provider_id,
                        }
                    )
    finally:
        for gw in gateways.values():
            with anyio.move_on_after(10, shield=True), suppress(Exception):
                await gw.aclose()
    record = TestRecord(
        campaign=c.id,
        content=content_hash(c.config),
        at=time.time(),
        by=by,
        sent=n,
        accepted=sum(1 for m in report if m["outcome"] == Outcome.ACCEPTED.value),
        messages=report,
    )
    with Gates(plan.engine.store_path) as gates:
        gates.record_test(record)
    return record


def cli_user() -> str:
    """Who runs ``pigeon send --test`` on this machine (for the record)."""
    with suppress(Exception):
        return f"cli:{getpass.getuser()}"
    return f"cli:uid{os.getuid()}"


def run_send_test(plan: Plan, *, by: str | None = None, backend: str = "asyncio") -> TestRecord:
    """:func:`send_test` in its own event loop (the CLI)."""
    who = by or cli_user()
    return anyio.run(lambda: send_test(plan, by=who), backend=backend)
