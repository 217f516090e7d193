"""``pigeon events import`` and ``pigeon flows``: back-fill events; check, list, pause and inspect flows."""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.cli.grammar import EXIT_BAD_INPUT, EXIT_NOT_FOUND, EXIT_OK, emit_json, shared_options
from engine.core.config import LoadedEngine, load_engine
from engine.core.engine_file import find_engine
from engine.core.errors import ConfigError, SourceError
from engine.core.phone import mask, parse_phone
from engine.flows.book import FlowBook
from engine.flows.config import Flow
from engine.flows.events import read_events
from engine.state.timers import TimerStore

__all__ = ["add_flow_commands", "events_command", "flows_command"]

_IMPORT_EXITS = (
    (EXIT_OK, "imported: every line was taken (or was a duplicate of an event taken before)"),
    (
        EXIT_BAD_INPUT,
        "a flow file or the events file is wrong, or some lines are not events (listed; the rest were taken)",
    ),
)


def add_flow_commands(sub: Any) -> None:
    """Register ``events import`` and ``flows list|check|pause|resume|pending``."""
    ev = sub.add_command("events", help="take order and customer events into the flows (back-fills)")
    ev.start_commands("events_command", "ACTION")
    imp = ev.add_command(
        "import",
        help="take the events of a JSON Lines or CSV file: start and cancel flows as POST /v1/events does",
        exit_codes=_IMPORT_EXITS,
        epilog="examples:\n  pigeon events import events.jsonl\n  pigeon events import orders-2026-11.csv\n\n"
        "JSON Lines: one event per line, as in POST /v1/events. CSV: columns id, type, phone, order_id, at;\n"
        "every other column is a field. An event id taken before is skipped, so a file can be imported\n"
        "again. Waits count from each event's `at`: steps already past are caught up by the service\n"
        "(or dropped past the flow's expire_after). docs/flows.md",
    )
    imp.add_argument("file", type=Path, metavar="FILE", help="events: .jsonl/.ndjson or .csv")
    shared_options(ev, [imp])

    fl = sub.add_command("flows", help="check, list, pause and resume flows; a customer's pending steps")
    fl.start_commands("flows_command", "ACTION")
    ck = fl.add_command(
        "check",
        help="check every flow file (and the templates they use) without starting anything",
        exit_codes=(
            (EXIT_OK, "every flow is valid"),
            (EXIT_BAD_INPUT, "a flow file is wrong (the message says what to change)"),
        ),
    )
    ls = fl.add_command(
        "list",
        help="every flow: its trigger, steps, whether it is paused, its timers by state",
        exit_codes=(EXIT_OK, EXIT_BAD_INPUT),
    )
    pa = fl.add_command(
        "pause",
        help="pause a flow: its steps stay pending (its triggers still schedule) until it resumes",
        exit_codes=((EXIT_OK, "paused"), (EXIT_NOT_FOUND, "no such flow"), EXIT_BAD_INPUT),
    )
    pa.add_argument("name", metavar="FLOW")
    re_ = fl.add_command(
        "resume",
        help="resume a flow: its late steps are caught up in due order (at service.flows.max_per_second)",
        exit_codes=((EXIT_OK, "resumed"), (EXIT_NOT_FOUND, "no such flow"), EXIT_BAD_INPUT),
    )
    re_.add_argument("name", metavar="FLOW")
    pe = fl.add_command(
        "pending",
        help="a customer's flow steps, the latest due first (the number masked)",
        exit_codes=((EXIT_OK, "shown"), (EXIT_NOT_FOUND, "the customer has no flow step"), EXIT_BAD_INPUT),
    )
    pe.add_argument("phone", metavar="PHONE")
    shared_options(fl, [ck, ls, pa, re_, pe])


def _load(args: argparse.Namespace) -> tuple[LoadedEngine, dict[str, Flow]]:
    from engine.core.clock import SystemClock
    from engine.observability.metrics import Metrics
    from engine.service.api_templates import ApiTemplates
    from engine.service.context import ServiceContext
    from engine.service.flows import flows_of

    engine = load_engine(find_engine(args.engine).path)
    templates = ApiTemplates(ServiceContext(engine, SystemClock(), Metrics())).templates
    return engine, flows_of(engine, templates)


def _embedded_only(engine: LoadedEngine, what: str) -> None:
    """:class:`ConfigError` when the timers live in a shared store the CLI does not open."""
    if engine.config.service.flows.store != "sqlite":
        raise ConfigError(
            engine.file,
            "service.flows.store",
            f"the timers are in the coordinator's Redis (store = {engine.config.service.flows.store!r}): "
            f"{what} through a running pigeon serve's API (POST /v1/events, GET /v1/flows, "
            "POST /v1/flows/{name}/pause|resume, GET /v1/customers/{phone}/flows)",
        )


def events_command(args: argparse.Namespace, console: Console) -> int:
    """``pigeon events import FILE``."""
    engine, flows = _load(args)
    _embedded_only(engine, "send the events")
    if not args.file.is_file():
        raise SourceError(f"file not found: {args.file}")
    store = TimerStore(engine.store_path)
    book = FlowBook(flows, store)
    bad: list[tuple[int, str]] = []
    totals = {"events": 0, "accepted": 0, "duplicates": 0, "rejected": 0, "scheduled": 0, "cancelled": 0}
    try:
        for lines, events, wrong in read_events(args.file):
            bad += wrong
            if not events:
                continue
            resp = book.ingest(events, time.time())
            totals["events"] += len(events)
            totals["accepted"] += resp.accepted
            totals["duplicates"] += resp.duplicates
            totals["rejected"] += resp.rejected
            totals["scheduled"] += resp.scheduled
            totals["cancelled"] += resp.cancelled
            bad += [(lines[r.index], r.reason) for r in resp.events if r.state == "rejected"]
    except ValueError as exc:
        raise SourceError(str(exc)) from None
    finally:
        store.close()
    bad.sort()
    if args.json:
        emit_json({**totals, "bad_lines": [{"line": n, "reason": r} for n, r in bad[:1000]], "bad": len(bad)})
    else:
        console.print(
            f"{totals['events']:,} events: {totals['accepted']:,} taken, "
            f"{totals['duplicates']:,} taken before; "
            f"{totals['scheduled']:,} steps scheduled, {totals['cancelled']:,} cancelled"
        )
        for n, r in bad[:20]:
            console.print(f"[yellow]line {n}: {escape(r)}[/yellow]")
        if len(bad) > 20:
            console.print(f"[yellow]… and {len(bad) - 20:,} more lines that are not events[/yellow]")
    return EXIT_BAD_INPUT if bad else EXIT_OK


def flows_command(args: argparse.Namespace, console: Console) -> int:
    """Run one ``pigeon flows`` action."""
    engine, flows = _load(args)
    action = args.flows_command
    if action == "check":
        if args.json:
            emit_json({"flows": sorted(flows), "dir": str(engine.base_dir / engine.config.service.flows.dir)})
        else:
            console.print(f"{len(flows)} flow(s) valid: {', '.join(sorted(flows)) or '(none)'}")
        return EXIT_OK
    _embedded_only(engine, f"flows {action}")
    store = TimerStore(engine.store_path)
    try:
        if action in ("pause", "resume"):
            if args.name not in flows:
                console.print(f"no flow {escape(args.name)!r}; flows: {', '.join(sorted(flows)) or '(none)'}")
                return EXIT_NOT_FOUND
            if action == "pause":
                store.pause(args.name, time.time())
            else:
                store.resume(args.name)
            if args.json:
                emit_json({"flow": args.name, "paused": action == "pause"})
            else:
                console.print(f"{args.name}: {'paused' if action == 'pause' else 'resumed'}")
            return EXIT_OK
        if action == "pending":
            parsed = parse_phone(args.phone)
            if parsed.reason is not None or not parsed.e164:
                raise ConfigError("PHONE", "", f"{args.phone[:32]!r} is not a phone number")
            views = store.of_customer(parsed.e164)
            rows = [
                {
                    "flow": v.flow,
                    "step": flows[v.flow].steps[v.step].name
                    if v.flow in flows and v.step < len(flows[v.flow].steps)
                    else str(v.step),
                    "order_id": v.subject,
                    "due": v.due,
                    "state": v.state,
                    "message_id": v.message,
                    "reason": v.reason,
                }
                for v in views
            ]
            if args.json:
                emit_json({"phone": mask(parsed.e164), "steps": rows})
            else:
                t = Table(title=f"{mask(parsed.e164)}: flow steps", box=box.SIMPLE_HEAD)
                for col in ("flow", "step", "order", "due", "state", "message", "reason"):
                    t.add_column(col)
                for r in rows:
                    due = datetime.fromtimestamp(float(r["due"] or 0)).strftime("%Y-%m-%d %H:%M")
                    t.add_row(
                        *(
                            escape(str(x or ""))
                            for x in (
                                r["flow"],
                                r["step"],
                                r["order_id"],
                                due,
                                r["state"],
                                r["message_id"],
                                r["reason"],
                            )
                        )
                    )
                console.print(t)
            return EXIT_OK if rows else EXIT_NOT_FOUND
        counts = store.counts()
        paused = set(store.paused())
        out: list[dict[str, Any]] = [
            {
                "name": f.name,
                "trigger": f.trigger,
                "cancel_on": sorted(f.cancel_on),
                "steps": [
                    {"name": s.name, "wait": f.config.steps[s.index].wait, "lane": s.lane} for s in f.steps
                ],
                "paused": f.name in paused,
                "timers": counts.get(f.name, {}),
            }
            for f in flows.values()
        ]
        if args.json:
            emit_json({"flows": out})
        else:
            t = Table(title="flows", box=box.SIMPLE_HEAD)
            for col in ("flow", "trigger", "steps", "cancel on", "paused", "pending", "fired", "cancelled"):
                t.add_column(col)
            for f in out:
                timers = f["timers"]
                t.add_row(
                    escape(f["name"]),
                    f["trigger"],
                    ", ".join(f"{s['name']} +{s['wait']}" for s in f["steps"]),
                    ", ".join(f["cancel_on"]),
                    "yes" if f["paused"] else "",
                    f"{timers.get('pending', 0):,}",
                    f"{timers.get('fired', 0):,}",
                    f"{timers.get('cancelled', 0):,}",
                )
            console.print(t)
        return EXIT_OK
    finally:
        store.close()
