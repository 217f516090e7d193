"""``pigeon send``'s entry: check, open the ledger, and run the blast in this process or on shards."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import msgspec

from engine.coordination.select import EMBEDDED
from engine.core.clock import Clock
from engine.core.config import CoordinatorConfig
from engine.core.errors import (
    ConfigError,
    OutsideSendWindow,
    RunAbandoned,
)
from engine.observability.metrics import Metrics
from engine.observability.report import RunSummary
from engine.run.gates import check_spend
from engine.run.plan import (
    Plan,
    ProgressHook,
    _open_ledger,
    _reload_limits,
    _summarize,
    _verdict,
    check_segment,
    new_run_dir,
    prepare_run,
)
from engine.run.shards import check_budgets, check_shards, run_shards
from engine.run.signals import _send_until_signalled, quiet_gc
from engine.state.gates import Gates
from engine.state.ledger.run import CampaignLedger

__all__ = ["coordinator_from_url", "send"]


def coordinator_from_url(url: str, current: CoordinatorConfig) -> CoordinatorConfig:
    """``--coordinator URL``: ``redis://…`` / ``rediss://…`` (the ``redis`` plugin with that ``url``,
    keeping the engine file's other ``[coordinator.options]`` when it names ``redis`` too) or
    ``embedded``."""
    if url == EMBEDDED:
        return msgspec.structs.replace(current, plugin=EMBEDDED, options={})
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme in ("redis", "rediss", "unix"):
        options = dict(current.options) if current.plugin == "redis" else {}
        options["url"] = url
        return msgspec.structs.replace(current, plugin="redis", options=options)
    raise ConfigError(
        "--coordinator",
        "",
        f"{url!r} is not a coordinator: give redis://host:port/db (rediss:// for TLS) or 'embedded'",
    )


def check_coordinator(plan: Plan, backend: str, shards: int) -> None:
    """Refuse, before anything is sent, a coordinator this run cannot use."""
    ccfg, file = plan.engine.config.coordinator, plan.engine.file
    if ccfg.plugin == EMBEDDED:
        return
    if ccfg.plugin not in plan.host.coordinators:
        known = ", ".join([EMBEDDED, *plan.host.coordinators.names()])
        raise ConfigError(
            file,
            "coordinator.plugin",
            f"{ccfg.plugin!r} is not registered (known: {known}): install its plugin",
        )
    policy = plan.campaign.config.policy
    for key, what in (("daily_limit", "a daily limit"), ("spend_cap", "a spend cap")):
        if getattr(policy, key) is not None:
            raise ConfigError(
                plan.campaign.file,
                f"policy.{key}",
                f"{what} is counted by one host's ledger, and coordinator {ccfg.plugin!r} shares the "
                "campaign among hosts: send it from one host (embedded coordinator, --shards for more "
                f"cores) or leave {key} out",
            )
    if backend != "asyncio":
        raise ConfigError(
            file,
            "backend",
            f"coordinator {ccfg.plugin!r} runs on asyncio only (its client is asyncio's): "
            "send with --backend asyncio",
        )
    if shards > 1:
        raise ConfigError(
            file,
            "shards",
            f"coordinator {ccfg.plugin!r} shares the campaign among workers already: run one "
            "`pigeon send --coordinator …` per core instead of --shards",
        )


def _backend_options(backend: str) -> dict[str, Any]:
    if backend != "asyncio":
        return {}
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return {}
    return {"use_uvloop": True}


def send(
    plan: Plan,
    *,
    backend: str | None = None,
    runs_dir: str | Path | None = None,
    progress: ProgressHook | None = None,
    clock: Clock | None = None,
    notify: Callable[[str], None] | None = None,
    wait: bool = True,
    metrics: Metrics | None = None,
    metrics_port: int | None = None,
    metrics_addr: str = "127.0.0.1",
    ledger: bool = True,
    force: bool = False,
    again: bool = False,
    shards: int | None = None,
    coordinator: str | None = None,
    approved_by: str = "",
    shard_by: str | None = None,
) -> RunSummary:
    """Send the campaign: stages on each batch, then per-gateway lanes; returns the run summary.

    The run's directory receives ``rejects.csv`` and ``summary.json`` (and the ``file`` gateway's
    output). Runs on asyncio (with uvloop) or trio. With ``ledger`` (the default) every recipient's
    state is kept in the campaign ledger and a campaign with an unfinished run resumes
    (docs/ledger.md); ``force`` resumes despite a changed segment or template, ``again`` starts a
    finished or cancelled campaign afresh.

    ``metrics`` counts the run (default: a fresh :class:`~engine.observability.metrics.Metrics`;
    :data:`~engine.observability.metrics.NO_METRICS` counts nothing); with ``metrics_port`` it is served on
    ``http://metrics_addr:metrics_port/metrics`` while the run lasts.

    ``shards`` (default: the engine's ``shards``) above 1 splits the campaign across that many
    worker processes (:mod:`engine.run.shards`): each reads one byte range of the segment, the
    numbers deduplicated in a table the shards share (``shard_by="ranges"``, the default, when the
    file can be cut), or the whole segment keeping the numbers whose hash is its own
    (``shard_by="hash"``; the default comes from the environment's ``PIGEON_SHARD_BY``; figures
    in docs/scale-out.md). Each counts its own metrics (``metrics`` is then left untouched) and
    shard ``k`` serves them on ``metrics_port + k``.

    ``coordinator`` (``redis://…``, or ``embedded``) overrides the engine's ``[coordinator]``: with
    a shared one, every request's recipients are claimed and its parts booked on the rate budgets
    all workers share (docs/scale-out.md).

    A campaign with ``[review]`` gates starts only after a test send of its current content (and,
    with ``require_approval``, an approval: ``approved_by`` records one); one with
    ``policy.spend_cap`` only when its planned cost is within it (:mod:`engine.run.gates`).
    """
    if coordinator is not None:
        ecfg = plan.engine.config
        plan.engine = msgspec.structs.replace(
            plan.engine,
            config=msgspec.structs.replace(
                ecfg, coordinator=coordinator_from_url(coordinator, ecfg.coordinator)
            ),
        )
    backend = backend or plan.engine.config.backend
    clock = clock or plan.clock
    count = shards if shards is not None else plan.engine.config.shards
    shard_by = shard_by or os.environ.get("PIGEON_SHARD_BY", "") or "ranges"
    if shard_by not in ("hash", "ranges"):
        raise ConfigError("PIGEON_SHARD_BY", "", f"{shard_by!r}: use ranges (the default) or hash")
    check_shards(plan.engine.config, plan.engine.file, count)
    daily = plan.campaign.config.policy.daily_limit
    if daily is not None and daily < count:
        raise ConfigError(
            plan.campaign.file,
            "policy.daily_limit",
            f"{daily} a day cannot be split over {count} shards (each takes its share of a day): "
            f"raise it to at least {count} or send with fewer shards",
        )
    check_coordinator(plan, backend, count)
    check_budgets(plan, count)
    closed = [w for w in plan.pause_windows() if not w.is_open(clock.time())]
    if not wait and closed:
        window = closed[0]
        raise OutsideSendWindow(
            f"outside sending hours {window}; they open {window.describe_opening(clock.time())}. "
            "Nothing was sent: run again then, or without --no-wait to wait"
        )
    check_segment(plan)  # header, template fields, encoding, the first rows: before the ledger
    review = plan.campaign.config.review
    if review.needs_test:  # (the approval is checked, and recorded, as the ledger opens)
        with Gates(plan.engine.store_path) as gates:
            gates.check(plan.campaign.id, plan.campaign.config, approval=False)
    check_spend(plan)  # the planned cost within policy.spend_cap (a pass over the segment when set)
    metrics = metrics if metrics is not None else Metrics(backend=backend)
    prepare_run(metrics, plan, [])  # gateways and carriers at zero from the first scrape; stages at open
    cl = (
        _open_ledger(plan, force=force, again=again, notify=notify, approved_by=approved_by)
        if ledger
        else None
    )
    if cl is not None and cl.recounted:
        _reload_limits(plan)  # reconcile took back the cap counts of the messages it sends again
    try:
        # A taken port fails before anything; the shards serve their own.
        serving = metrics.serving(metrics_addr, metrics_port, notify) if count == 1 else nullcontext(None)
        run_dir = new_run_dir(plan, runs_dir, clock)
        if count > 1:
            summary = _send_sharded(
                plan,
                count,
                run_dir,
                progress=progress,
                clock=clock,
                notify=notify,
                ledger=cl,
                backend=backend,
                metrics_port=metrics_port,
                metrics_addr=metrics_addr,
                shard_by=shard_by,
            )
        else:
            with quiet_gc(), serving:
                summary = anyio.run(
                    _send_until_signalled,
                    plan,
                    run_dir,
                    progress,
                    clock,
                    notify,
                    metrics,
                    cl,
                    backend=backend,
                    backend_options=_backend_options(backend),
                )
    finally:
        if cl is not None:
            cl.close()  # the lease goes back with it
    if summary is None:
        raise RunAbandoned(
            f"abandoned on a second signal: messages in flight were not waited for; {run_dir} holds "
            "the rows recorded so far"
        )
    try:
        (run_dir / "summary.json").write_bytes(msgspec.json.format(msgspec.json.encode(summary)))
    except OSError as exc:  # a full disk: the summary is still returned (and printed)
        if notify is not None:
            notify(f"cannot write {run_dir / 'summary.json'}: {exc}")
    return summary


def _send_sharded(
    plan: Plan,
    count: int,
    run_dir: Path,
    *,
    progress: ProgressHook | None,
    clock: Clock,
    notify: Callable[[str], None] | None,
    ledger: CampaignLedger | None,
    backend: str,
    metrics_port: int | None,
    metrics_addr: str,
    shard_by: str = "ranges",
) -> RunSummary | None:
    """:func:`send` on ``count`` worker processes; None when abandoned."""
    started = time.perf_counter()
    if metrics_port is not None and notify is not None:
        last = metrics_port + count - 1
        notify(f"metrics: http://{metrics_addr}:{metrics_port}…{last}/metrics (one port per shard)")
    with quiet_gc():  # frozen before the fork: the workers share what is loaded, copy-on-write
        run = run_shards(
            plan,
            count,
            run_dir,
            progress=progress,
            clock=clock,
            notify=notify,
            ledger=ledger,
            backend=backend,
            backend_options=_backend_options(backend),
            metrics_port=metrics_port,
            metrics_addr=metrics_addr,
            ranged=shard_by == "ranges",
        )
    if run.abandoned:
        return None
    verdict = _verdict(plan, run.recorder, ledger) if run.complete else None
    if ledger is not None:
        ledger.finish(complete=run.complete and verdict is None)
    if progress is not None:
        progress(run.recorder, time.perf_counter() - started, 1.0, True)
    summary = _summarize(plan, run.recorder, "send", time.perf_counter() - started, str(run_dir))
    summary.files = run.files
    summary.stopped = run.stopped
    summary.halted, summary.message = run.halted, run.message
    if verdict is not None:
        summary.verdict, summary.message = verdict.reason, verdict.message
    return summary
