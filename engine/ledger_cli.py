"""``pigeon status``, ``pigeon report`` and ``pigeon cancel``: a campaign's ledger from the command line."""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.config import load_engine
from engine.errors import ConfigError
from engine.ledger import CampaignRecord, Ledger, LedgerError

__all__ = ["add_ledger_commands", "ledger_command", "resume_target"]

EXIT_OK = 0
EXIT_NOT_FOUND = 2


def add_ledger_commands(sub: Any, store_engine_arg: Any) -> None:
    """Register ``status``, ``report`` and ``cancel`` on the ``pigeon`` parser's subcommands."""
    st = sub.add_parser("status", help="where a campaign stands: its run state and recipients by state")
    st.add_argument("campaign", nargs="?", help="campaign id (default: list every campaign)")
    st.add_argument("--json", action="store_true", help="print as JSON")
    store_engine_arg(st)
    rp = sub.add_parser(
        "report",
        help="a campaign's report from its ledger: states, reasons, cost per carrier, delivery rate, latency",
    )
    rp.add_argument("campaign", help="campaign id")
    rp.add_argument("--format", choices=["table", "json", "csv"], default="table", help="output format")
    store_engine_arg(rp)
    cn = sub.add_parser("cancel", help="cancel a campaign: no run continues it (a running send stops)")
    cn.add_argument("campaign", help="campaign id")
    store_engine_arg(cn)


def _ledger(engine: Path) -> Ledger:
    path = load_engine(engine).store_path
    if not path.exists():
        raise ConfigError(
            str(engine), "store.path", f"no store at {path}: nothing was sent with this engine file"
        )
    return Ledger(path)


def _record(ledger: Ledger, campaign_id: str) -> CampaignRecord:
    rec = ledger.campaign(campaign_id)
    if rec is None:
        known = ", ".join(c.id for c in ledger.campaigns()[:10]) or "(none)"
        raise LedgerError(f"no campaign {campaign_id!r} in {ledger.path}; campaigns there: {known}")
    return rec


def resume_target(campaign: str, engine: Path | None) -> tuple[Path, Path | None]:
    """The campaign file (and engine file) ``pigeon resume CAMPAIGN`` sends: ``CAMPAIGN`` itself
    when it is a file, else the file the campaign was last sent from, as its ledger recorded it."""
    p = Path(campaign)
    if p.suffix == ".toml" or p.is_file():
        return p, engine
    ledger = _ledger(engine or Path(os.environ.get("PIGEON_ENGINE", "config/engine.toml")))
    try:
        rec = _record(ledger, campaign)
    finally:
        ledger.close()
    env = os.environ.get("PIGEON_ENGINE")
    return Path(rec.campaign_file), engine or (
        Path(env) if env else Path(rec.engine_file) if rec.engine_file else None
    )


def ledger_command(args: argparse.Namespace, console: Console) -> int:
    """Run ``status``, ``report`` or ``cancel``; returns the exit code."""
    ledger = _ledger(args.engine)
    try:
        if args.command == "status":
            return _status(ledger, args.campaign, args.json, console)
        if args.command == "cancel":
            _record(ledger, args.campaign)
            counts = ledger.cancel(args.campaign)
            console.print(
                f"campaign {escape(args.campaign)} cancelled: "
                + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.states.items()))
                + ". A send still running stops within a second; `pigeon send … --again` starts it afresh."
            )
            return EXIT_OK
        _record(ledger, args.campaign)
        prices: dict[str, float] = {
            c: cfg.price_per_part for c, cfg in load_engine(args.engine).config.carriers.items()
        }
        return _report(ledger.report(args.campaign, prices), args.format, console)
    finally:
        ledger.close()


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _status(ledger: Ledger, campaign_id: str | None, as_json: bool, console: Console) -> int:
    records = [_record(ledger, campaign_id)] if campaign_id else ledger.campaigns()
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
    if as_json:
        sys.stdout.write(
            msgspec.json.format(msgspec.json.encode(out if campaign_id is None else out[0])).decode()
        )
        sys.stdout.write("\n")
        return EXIT_OK
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
            console.print(f"  unfinished: `pigeon resume {escape(rec.id)}` continues it")
    return EXIT_OK


def _report(rep: dict[str, Any], fmt: str, console: Console) -> int:
    if fmt == "json":
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(rep)).decode() + "\n")
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
