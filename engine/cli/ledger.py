"""``pigeon status``, ``pigeon report`` and ``pigeon cancel``: a campaign's ledger from the command line."""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.cli.grammar import EXIT_BAD_INPUT, EXIT_OK, emit_json, engine_option, json_option
from engine.core.config import load_campaign, load_engine
from engine.core.engine_file import EngineFile, find_engine, from_flags, with_engine
from engine.core.errors import ConfigError
from engine.core.timestamps import iso_utc
from engine.state.ledger.records import CampaignRecord, LedgerError
from engine.state.ledger.store import Ledger

__all__ = [
    "add_ledger_commands",
    "campaign_engine",
    "campaign_file_engine",
    "ledger_command",
    "resume_target",
]

_READ_EXITS = (
    (EXIT_OK, "printed"),
    (EXIT_BAD_INPUT, "no such campaign, or the engine file or its store is missing or unusable"),
)


_ID_ENGINE_HELP = (
    "engine file (default: $PIGEON_ENGINE, else the one the campaign was sent with as the ledger "
    "of ./engine.toml or ./config/engine.toml recorded it, else that file)"
)


def add_ledger_commands(sub: Any) -> None:
    """Register ``status``, ``report`` and ``cancel`` on the ``pigeon`` parser's subcommands."""
    st = sub.add_command(
        "status",
        help="where a campaign stands: its run state and recipients by state",
        exit_codes=_READ_EXITS,
    )
    st.add_argument("campaign", nargs="?", metavar="ID", help="campaign id (default: list every campaign)")
    st.add_argument(
        "--coordinator",
        metavar="URL",
        help="also show the campaign's workers, ranges and rates in this coordinator (redis://host:port/db)",
    )
    json_option(st)
    engine_option(st, _ID_ENGINE_HELP)
    rp = sub.add_command(
        "report",
        help="a campaign's report from its ledger: states, reasons, cost per carrier, delivery rate, latency",
        exit_codes=_READ_EXITS,
    )
    rp.add_argument("campaign", metavar="ID", help="campaign id")
    rp.add_argument(
        "--format",
        choices=["table", "json", "csv", "html"],
        default="table",
        help="output format (html: with --outcomes, one self-contained page)",
    )
    rp.add_argument(
        "--outcomes",
        action="store_true",
        help="per group × variant × carrier: funnel, buyers, revenue, ROI, lift over holdout "
        "(docs/outcomes.md)",
    )
    rp.add_argument("-o", "--output", type=Path, metavar="FILE", help="with --outcomes: write to FILE")
    json_option(rp, "print as JSON (the same as --format json)")
    engine_option(rp, _ID_ENGINE_HELP)
    cn = sub.add_command(
        "cancel",
        help="cancel a campaign: no run continues it (a running send stops)",
        exit_codes=((EXIT_OK, "cancelled"), _READ_EXITS[1]),
    )
    cn.add_argument("campaign", metavar="ID", help="campaign id")
    json_option(cn, "print the campaign's recipients by state as JSON")
    engine_option(cn, _ID_ENGINE_HELP)


def _ledger(engine: EngineFile) -> Ledger:
    path = load_engine(engine.path).store_path
    if not path.exists():
        raise ConfigError(
            str(engine.path),
            "store.path",
            f"no store at {path}: nothing was sent with this engine file (from {engine.source}); "
            "another one: --engine PATH",
        )
    return Ledger(path)


def _record(ledger: Ledger, campaign_id: str, engine: EngineFile) -> CampaignRecord:
    rec = ledger.campaign(campaign_id)
    if rec is None:
        known = ", ".join(c.id for c in ledger.campaigns()[:10]) or "(none)"
        raise LedgerError(
            f"no campaign {campaign_id!r} in {ledger.path}, the store of {engine.describe()}; "
            f"campaigns there: {known}. Another engine file: --engine PATH"
        )
    return rec


def campaign_engine(explicit: Path | None, campaign_id: str) -> tuple[EngineFile, CampaignRecord]:
    """The engine file of a command given a campaign id, and the campaign's record: ``--engine`` or
    ``$PIGEON_ENGINE``; else the engine file the campaign was sent with, as the ledger of the
    current directory's engine file recorded it (if that file still exists); else that one."""
    chosen = from_flags(explicit)
    where = chosen or find_engine(None)
    ledger = _ledger(where)
    try:
        rec = _record(ledger, campaign_id, where)
    finally:
        ledger.close()
    if chosen is None and rec.engine_file:
        recorded = Path(rec.engine_file)
        if recorded.is_file() and recorded.resolve() != where.path.resolve():
            return EngineFile(recorded, "ledger"), rec
    return where, rec


def campaign_file_engine(campaign: Path, explicit: Path | None) -> EngineFile:
    """The engine file of a command given a campaign file: ``--engine``, ``$PIGEON_ENGINE``, the
    file's ``engine`` key, or the current directory's."""
    if explicit is None and from_flags(None) is None:
        loaded = load_campaign(campaign)
        if loaded.config.engine:
            return find_engine(None, campaign_key=loaded.base_dir / loaded.config.engine)
    return find_engine(explicit)


def resume_target(campaign: str, explicit: Path | None) -> tuple[Path, EngineFile]:
    """The campaign file and engine file ``pigeon resume CAMPAIGN`` sends: ``CAMPAIGN`` itself when it
    is a file, else the file the campaign was last sent from, as its ledger recorded it."""
    p = Path(campaign)
    if p.suffix == ".toml" or p.is_file():
        return p, campaign_file_engine(p, explicit)
    engine, rec = campaign_engine(explicit, campaign)
    return Path(rec.campaign_file), engine


def ledger_command(args: argparse.Namespace, console: Console) -> int:
    """Run ``status``, ``report`` or ``cancel``; returns the exit code."""
    if args.campaign is None:  # status of every campaign
        engine = find_engine(args.engine)
    else:
        engine, _ = campaign_engine(args.engine, args.campaign)
    ledger = _ledger(engine)
    try:
        if args.command == "status":
            shared = _shared(engine, args.campaign, args.coordinator) if args.coordinator else None
            return _status(ledger, args.campaign, args.json, console, engine, shared)
        _record(ledger, args.campaign, engine)
        if args.command == "cancel":
            counts = ledger.cancel(args.campaign)
            if args.json:
                emit_json({"campaign": args.campaign, "status": "cancelled", "states": counts.states})
                return EXIT_OK
            console.print(
                escape(
                    with_engine(
                        f"campaign {args.campaign} cancelled: "
                        + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.states.items()))
                        + ". A send still running stops within a second; `pigeon send … --again` "
                        "starts it afresh.",
                        engine,
                    )
                )
            )
            return EXIT_OK
        if getattr(args, "outcomes", False):
            from engine.cli.orders import outcomes_report, print_outcomes

            report = outcomes_report(engine, args.campaign)
            return print_outcomes(report, "json" if args.json else args.format, args.output, console)
        if args.format == "html":
            raise ConfigError("command line", "--format", "html is for --outcomes")
        prices: dict[str, float] = {
            c: cfg.price_per_part for c, cfg in load_engine(engine.path).config.carriers.items()
        }
        return _report(ledger.report(args.campaign, prices), "json" if args.json else args.format, console)
    finally:
        ledger.close()


def _when(ts: float) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    except (OverflowError, ValueError, OSError):
        return iso_utc(ts)


def _shared(engine: EngineFile, campaign_id: str | None, url: str) -> dict[str, Any]:
    """The campaign's queue in the coordinator at ``url``: ranges, who holds and did them, workers."""
    import asyncio

    from engine.coordination.contract import CoordinatorContext, RangeQueue
    from engine.coordination.select import open_coordinator
    from engine.core.plugin_host import PluginHost
    from engine.run.send import coordinator_from_url

    if campaign_id is None:
        raise ConfigError("--coordinator", "", "give the campaign's id with --coordinator")
    ccfg = coordinator_from_url(url, load_engine(engine.path).config.coordinator)

    async def read() -> dict[str, Any]:
        queue = open_coordinator(PluginHost().coordinators, ccfg.plugin, ccfg.options, CoordinatorContext())
        try:
            if not isinstance(queue, RangeQueue):
                raise ConfigError("--coordinator", "", f"coordinator {queue.name!r} hands out no ranges")
            return await queue.queue_state(campaign_id)
        finally:
            await queue.aclose()

    state = asyncio.run(read())
    if state.get("published"):
        state["merged"] = merged_workers(state.get("workers", {}), time.time())
    return state


LIVE_WITHIN = 30.0
"""Seconds since a worker's last figures (it sends them every 2 s) within which it counts as live."""


def merged_workers(workers: dict[str, dict[str, Any]], now: float) -> dict[str, float]:
    """Every worker's figures merged: how many are live, sent by all of them, and the live ones'
    rates summed (each worker's messages sent per second since it started)."""
    live = [f for f in workers.values() if now - float(f.get("at", 0)) < LIVE_WITHIN]
    return {
        "workers_live": len(live),
        "sent": sum(int(f.get("sent", 0)) for f in workers.values()),
        "rate": sum(float(f.get("rate", 0)) for f in live),
    }


def _status(
    ledger: Ledger,
    campaign_id: str | None,
    as_json: bool,
    console: Console,
    engine: EngineFile,
    shared: dict[str, Any] | None = None,
) -> int:
    records = [_record(ledger, campaign_id, engine)] if campaign_id else ledger.campaigns()
    holders = {rec.id: ledger.lease(rec.id) for rec in records}
    out = [
        {
            **msgspec.to_builtins(rec),
            "states": (counts := ledger.counts(rec.id)).states,
            "reasons": counts.reasons,
            "lease": msgspec.to_builtins(h) if (h := holders[rec.id]) is not None and h.alive else None,
        }
        for rec in records
    ]
    if shared is not None and out:
        out[0]["shared"] = shared
    if as_json:
        emit_json(out if campaign_id is None else out[0])
        return EXIT_OK
    if shared is not None:
        _print_shared(console, shared)
    if not records:
        console.print("no campaigns in the ledger yet")
        return EXIT_OK
    for rec, data in zip(records, out, strict=True):
        console.print(
            f"[bold]{escape(rec.id)}[/bold]  {rec.status.value}  ({rec.kind}, {rec.semantics.value}, "
            f"{rec.runs} run(s), started {_when(rec.created_at)}, last {_when(rec.updated_at)})"
        )
        states = sorted(data["states"].items())
        console.print("  " + ("  ".join(f"{k} {v:,}" for k, v in states) if states else "no recipients yet"))
        for state, reasons in data["reasons"].items():
            console.print(f"    {state}: " + ", ".join(f"{r} {n:,}" for r, n in reasons.items()))
        holder = holders[rec.id]
        if holder is not None and holder.alive:
            console.print(f"  being sent now by {escape(holder.describe())}")
        elif rec.status.value == "running" and campaign_id:
            console.print(
                "  " + escape(with_engine(f"unfinished: `pigeon resume {rec.id}` continues it", engine))
            )
    return EXIT_OK


def _print_shared(console: Console, shared: dict[str, Any]) -> None:
    if not shared.get("published"):
        console.print(
            "shared: the coordinator has no ranges for this campaign (no `pigeon worker` started it)"
        )
        return
    total = shared["meta"].get("ranges", 0)
    held = shared["held_by"]
    console.print(
        f"shared: {shared['ranges_done']:,}/{total:,} ranges done ({shared['meta'].get('rows', 0):,} rows), "
        f"{sum(held.values())} being sent"
    )
    now = time.time()
    merged = merged_workers(shared["workers"], now)
    console.print(
        f"  all workers: {merged['workers_live']} live, {int(merged['sent']):,} sent, {merged['rate']:,.0f}/s"
    )
    for name, figures in sorted(shared["workers"].items()):
        done = shared["done_by"].get(name, {})
        ago = now - float(figures.get("at", 0))
        console.print(
            f"  worker {escape(name)}: {int(figures.get('sent', 0)):,} sent, "
            f"{float(figures.get('rate', 0)):,.0f}/s, {done.get('ranges', 0)} ranges done, "
            f"{held.get(name, 0)} held; last seen {ago:.0f} s ago"
        )


def _report(rep: dict[str, Any], fmt: str, console: Console) -> int:
    if fmt == "json":
        emit_json(rep)
        return EXIT_OK
    if fmt == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(["section", "key", "subkey", "value"])
        for state, n in rep["states"].items():
            w.writerow(["state", state, "", n])
        for state, reasons in rep["reasons"].items():
            for reason, n in reasons.items():
                w.writerow(["reason", state, reason, n])
        for carrier, c in rep["carriers"].items():
            for k in ("messages", "parts", "cost"):
                w.writerow(["carrier", carrier, k, c[k]])
        for variant, v in rep.get("variants", {}).items():
            for k, value in v.items():
                w.writerow(["variant", variant, k, value])
        for k in ("recipients", "total_parts", "total_cost", "delivery_reports", "delivery_rate"):
            w.writerow(["total", k, "", rep[k]])
        for k, v in rep["latency_seconds"].items():
            w.writerow(["latency_seconds", k, "", v])
        return EXIT_OK
    console.print(
        f"[bold]{escape(rep['campaign'])}[/bold]  {rep['status']}  ({rep['kind']}, {rep['semantics']}, "
        f"{rep['runs']} run(s)): {rep['recipients']:,} recipients"
    )
    t = Table(title="By state")
    t.add_column("state")
    t.add_column("recipients", justify="right")
    t.add_column("by reason")
    for state, n in rep["states"].items():
        reasons = rep["reasons"].get(state, {})
        t.add_row(state, f"{n:,}", escape(", ".join(f"{r} {k:,}" for r, k in reasons.items())))
    console.print(t)
    t = Table(title="Per carrier")
    for col in ("carrier", "messages", "billed parts", "cost"):
        t.add_column(col, justify="left" if col == "carrier" else "right")
    for carrier, c in rep["carriers"].items():
        t.add_row(carrier, f"{c['messages']:,}", f"{c['parts']:,}", f"{c['cost']:,.2f}")
    t.add_row("total", "", f"{rep['total_parts']:,}", f"{rep['total_cost']:,.2f}")
    console.print(t)
    if rep.get("variants"):
        t = Table(title="Per A/B variant")
        for col in (
            "variant",
            "messages",
            "billed parts",
            "cost",
            "delivered",
            "failed",
            "unknown",
            "delivery rate",
        ):
            t.add_column(col, justify="left" if col == "variant" else "right")
        for name, v in rep["variants"].items():
            t.add_row(
                escape(name),
                f"{v['messages']:,}",
                f"{v['parts']:,}",
                f"{v['cost']:,.2f}",
                f"{v['delivered']:,}",
                f"{v['failed']:,}",
                f"{v['unknown']:,}",
                f"{v['delivery_rate']:.1%}",
            )
        console.print(t)
    lat = rep["latency_seconds"]
    console.print(
        f"delivery reports {rep['delivery_reports']:,}, delivery rate {rep['delivery_rate']:.1%}"
        + (
            "; submit→delivery " + ", ".join(f"{k} {v:,.1f}s" for k, v in lat.items())
            if lat
            else " (no delivery reports yet)"
        )
    )
    return EXIT_OK
