"""The ``pigeon`` command: preview and send campaigns, look up numbers, list plugins."""

from __future__ import annotations

import argparse
import os
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TextIO

import msgspec
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

from engine.carriers import CARRIER_NAMES, default_prefix_table
from engine.errors import EngineError, OutsideSendWindow, RunAbandoned, RunHalt
from engine.ledger import CampaignBusy
from engine.ledger_cli import add_ledger_commands, ledger_command, resume_target
from engine.lists_cli import consent_command, optout_command
from engine.messages import State
from engine.phone import mask, parse_phone
from engine.plugins import PluginHost
from engine.report import RunRecorder, RunSummary
from engine.runtime import prepare, preview, send

__all__ = ["main"]

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_FAILED_MESSAGES = 3
EXIT_NOT_NOW = 4
EXIT_STOPPED = 5
EXIT_HALTED = 6
EXIT_BUSY = 7
EXIT_CODES = """exit codes:
  0  done: every row is in a final state (sent, failed by the gateway, rejected, suppressed…)
  2  bad input: a config, template or segment to fix (the message says what); nothing was sent,
     unless the message says the whole run judged its segment unusable
  3  done, but some messages failed at a gateway (see the summary's reasons)
  4  outside the sending hours, with --no-wait: nothing was sent
  5  stopped on request (Ctrl-C / SIGTERM / pigeon cancel) after what was in flight was recorded
  6  stopped by a fault outside Pigeon: a gateway unreachable past outage.limit, a gateway that
     refused its credentials or template, gateways that stopped answering, a store that cannot be
     written (disk full), the campaign taken over: everyone not sent is pending — fix the cause,
     then `pigeon resume ID`
  7  the campaign is being sent by another process (its lease is held): nothing was sent
  130  abandoned on a second Ctrl-C: what was in flight was not waited for"""


def _version() -> str:
    try:
        v = version("pigeon-sms")
    except PackageNotFoundError:  # running from a source tree that is not installed
        v = "0+unknown"
    from engine import speedups

    if speedups.ACCELERATED:
        return f"{v} (compiled batch kernels)"
    why = "PIGEON_PURE is set" if speedups.AVAILABLE else "engine._speedups is not built"
    return f"{v} (pure-Python batch kernels: {why})"


def _store_engine_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        type=Path,
        default=Path(os.environ.get("PIGEON_ENGINE", "config/engine.toml")),
        help="engine file whose [store] to use (default: $PIGEON_ENGINE or config/engine.toml)",
    )


def _resume_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--force",
        action="store_true",
        help="resume even though the segment file or the template changed since the campaign started",
    )
    parser.add_argument(
        "--again",
        action="store_true",
        help="send a finished or cancelled campaign afresh (its old ledger is kept as <id>~N)",
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pigeon",
        description="Pigeon: a fast, safe SMS send engine for promotion blasts and transactional messages.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"pigeon {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pv = sub.add_parser(
        "preview",
        help="show what a campaign would send: sample messages, counts and cost per carrier, rejects",
    )
    pv.add_argument("campaign", type=Path, help="campaign file (TOML)")
    pv.add_argument("--engine", type=Path, help="engine file (default: the campaign's `engine` key)")
    pv.add_argument("-n", "--samples", type=int, default=5, help="rendered messages to show (default 5)")
    pv.add_argument("--rows", type=int, help="read only the first ROWS rows (default: the whole segment)")
    pv.add_argument("--rejects", type=Path, help="write every rejected row to this CSV file")
    pv.add_argument("--json", action="store_true", help="print the summary as JSON")

    sd = sub.add_parser(
        "send",
        help="send a campaign through the configured gateways",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sd.add_argument("campaign", type=Path, help="campaign file (TOML)")
    sd.add_argument("--engine", type=Path, help="engine file (default: the campaign's `engine` key)")
    sd.add_argument("--backend", choices=["asyncio", "trio"], help="event loop (default: engine config)")
    sd.add_argument("--runs-dir", type=Path, help="where run directories go (default: engine config)")
    sd.add_argument("--json", action="store_true", help="print the summary as JSON")
    sd.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    sd.add_argument(
        "--shards",
        type=int,
        metavar="N",
        help="split the campaign by number across N worker processes (default: engine config, 1)",
    )
    sd.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus /metrics on this port during the run",
    )
    sd.add_argument(
        "--metrics-addr",
        default="127.0.0.1",
        metavar="ADDR",
        help="address for --metrics-port (default 127.0.0.1)",
    )
    sd.add_argument(
        "--no-wait",
        action="store_true",
        help="outside the sending hours, stop at once (exit 4) instead of waiting for them",
    )
    _resume_args(sd)

    rs = sub.add_parser(
        "resume",
        help="continue a campaign's unfinished run (what `send` does on it too)",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rs.add_argument("campaign", help="campaign id (its file is found in the ledger) or campaign file")
    rs.add_argument(
        "--engine", type=Path, help="engine file (default: $PIGEON_ENGINE, else the one it was sent with)"
    )
    rs.add_argument("--backend", choices=["asyncio", "trio"], help="event loop (default: engine config)")
    rs.add_argument("--runs-dir", type=Path, help="where run directories go (default: engine config)")
    rs.add_argument("--json", action="store_true", help="print the summary as JSON")
    rs.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    rs.add_argument("--no-wait", action="store_true", help="outside the sending hours, stop at once (exit 4)")
    _resume_args(rs)
    add_ledger_commands(sub, _store_engine_arg)

    lk = sub.add_parser("lookup", help="normalize phone numbers and show their carrier")
    lk.add_argument("numbers", nargs="+", help="numbers in any common form")

    oo = sub.add_parser("optout", help="manage the opt-out list (people who replied 退订/R or asked to stop)")
    _store_engine_arg(oo)
    oo_sub = oo.add_subparsers(dest="optout_command", required=True, metavar="ACTION")
    imp = oo_sub.add_parser(
        "import", help="add every number of a file (one per line, or the first CSV column)"
    )
    imp.add_argument("file", type=Path)
    imp.add_argument("--source", default="import", help="where the list came from (default: import)")
    imp.add_argument("--reason", default="", help="why (shown by `check`)")
    imp.add_argument("--encoding", default="utf-8-sig", help="file encoding (default utf-8, BOM accepted)")
    exp = oo_sub.add_parser("export", help="write the whole list as CSV (number,source,reason,created_at)")
    exp.add_argument("file", type=Path, nargs="?", help="output file (default: standard output)")
    add = oo_sub.add_parser("add", help="add numbers")
    add.add_argument("numbers", nargs="+")
    add.add_argument("--source", default="manual")
    add.add_argument("--reason", default="")
    rm = oo_sub.add_parser("remove", help="remove numbers (someone opted back in)")
    rm.add_argument("numbers", nargs="+")
    chk = oo_sub.add_parser("check", help="is a number on the list, and since when")
    chk.add_argument("numbers", nargs="+")

    cs = sub.add_parser(
        "consent", help="record who agreed to marketing messages, with proof (kept 5+ months)"
    )
    _store_engine_arg(cs)
    cs_sub = cs.add_subparsers(dest="consent_command", required=True, metavar="ACTION")
    cimp = cs_sub.add_parser("import", help="record consent for every number of a file")
    cimp.add_argument("file", type=Path)
    cimp.add_argument("--source", required=True, help="where consent was given (checkout, member_signup…)")
    cimp.add_argument("--proof", default="", help="what shows it (form id, terms version…)")
    cimp.add_argument("--encoding", default="utf-8-sig")
    cchk = cs_sub.add_parser("check", help="show the consent on record for numbers")
    cchk.add_argument("numbers", nargs="+")

    sv = sub.add_parser("serve", help="run the HTTP service: transactional API, campaigns, webhooks, metrics")
    sv.add_argument("--config", type=Path, required=True, help="engine file (with its [service] section)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free port)")
    sv.add_argument("--backend", choices=["asyncio", "trio"], help="event loop (default: engine config)")
    ks = sub.add_parser("keys", help="manage the service's API keys (stored hashed)")
    ks.add_argument("action", choices=["create", "list", "revoke"])
    ks.add_argument("name", nargs="?", help="key name (create, revoke)")
    ks.add_argument("--config", type=Path, required=True, help="engine file (its service.keys_file)")

    pl = sub.add_parser("plugins", help="list installed plugins and what they register")
    pl.add_argument("--json", action="store_true", help="print as JSON")
    return p


class _Progress:
    """Shows a blast's progress: a live panel on a terminal, a plain line every few seconds otherwise.

    Per carrier it shows messages sent per second (on average since the start); the ETA comes from
    how much of the segment has been read.
    """

    def __init__(self, out: TextIO, live: bool) -> None:
        self.out = out
        self.interval = 0.25 if live else 5.0
        self.last = time.monotonic()
        self._live: Live | None = None
        if live:
            self._live = Live(console=Console(file=out), auto_refresh=False, transient=True)
            self._live.start()

    def __call__(self, rec: RunRecorder, elapsed: float, fraction: float | None, final: bool = False) -> None:
        now = time.monotonic()
        if now - self.last < self.interval and not final:
            return
        # Average rates since the start: sends are recorded per request, so instants are lumpy.
        rates = {c: cs.messages / elapsed for c, cs in rec.carriers.items()} if elapsed > 0 else {}
        self.last = now
        eta = elapsed * (1 - fraction) / fraction if fraction else None
        st = rec.states
        counts = (
            f"rows {rec.rows:,}  sent {st[State.SENT]:,}  suppressed {st[State.SUPPRESSED]:,}  "
            f"deferred {st[State.DEFERRED]:,}  rejected {st[State.REJECTED]:,}  failed {st[State.FAILED]:,}"
            + (f"  unknown {st[State.UNKNOWN]:,}" if st[State.UNKNOWN] else "")
            + (f"  pending {st[State.PENDING]:,}" if st[State.PENDING] else "")
            + (f"  waiting {rec.waiting():,}" if not final and rec.waiting() else "")
        )
        per_carrier = "  ".join(f"{c} {r:,.0f}/s" for c, r in sorted(rates.items()))
        eta_text = "done" if final else (f"ETA {eta:,.0f}s" if eta is not None else "ETA ?")
        if self._live is None:
            print(f"[{elapsed:7.1f}s] {counts}  |  {per_carrier}  |  {eta_text}", file=self.out, flush=True)
            return
        bar = ProgressBar(total=1.0, completed=fraction or 0.0, width=40)
        grid = Table.grid(padding=(0, 2))
        grid.add_row(bar, f"{(fraction or 0) * 100:5.1f}%  {elapsed:,.0f}s  {eta_text}")
        grid.add_row(counts, "")
        grid.add_row(f"sent per second: {per_carrier or '—'}", "")
        self._live.update(grid, refresh=True)
        if final:
            self._live.stop()


def _print_summary(console: Console, s: RunSummary) -> None:
    title = escape(f"{s.mode}: {s.campaign}" + (f" — {s.name}" if s.name else ""))
    console.print(f"[bold]{title}[/bold]  ({s.kind}, prefix table {s.prefix_table})")
    for f in s.findings:
        style = "red" if f.level == "error" else "yellow"
        console.print(f"[{style}]{f.level}[/{style}] {escape(f.key)}: {escape(f.message)}")
    if any(f.level == "error" for f in s.findings):
        console.print("[red]`pigeon send` will refuse this campaign until the errors above are fixed.[/red]")
    if s.samples:
        t = Table(title="Sample messages", show_lines=False)
        for col in ("row", "to", "carrier", "parts", "text"):
            t.add_column(col, overflow="fold")
        for m in s.samples:
            t.add_row(str(m.row), m.to, m.carrier, str(m.parts), escape(m.text))
        console.print(t)
    t = Table(title=f"Per carrier ({s.currency})")
    for col in ("carrier", "messages", "billed parts", "cost"):
        t.add_column(col, justify="right" if col != "carrier" else "left")
    for c, cs in s.carriers.items():
        t.add_row(CARRIER_NAMES.get(c, c), f"{cs.messages:,}", f"{cs.parts:,}", f"{cs.cost:,.2f}")
    t.add_row(
        "[bold]total[/bold]",
        f"{sum(c.messages for c in s.carriers.values()):,}",
        f"{s.total_parts:,}",
        f"{s.total_cost:,.2f}",
    )
    console.print(t)
    states = "  ".join(f"{k} {v:,}" for k, v in sorted(s.states.items()))
    console.print(f"rows {s.rows:,}:  {states}")
    for state, reasons in s.reasons.items():
        console.print(f"  {state} by reason: " + ", ".join(f"{r} {n:,}" for r, n in reasons.items()))
    undecodable = s.reasons.get(State.REJECTED, {}).get("undecodable", 0)
    if s.rows and undecodable * 2 >= s.rows:
        console.print(
            f"[yellow]{undecodable:,} of {s.rows:,} rows are not valid in the segment's encoding: "
            'is it an Excel export from Chinese Windows? Try segment.encoding = "gbk".[/yellow]'
        )
    if s.reject_samples:
        t = Table(title="First rejected rows")
        for col in ("row", "reason", "detail", "phone"):
            t.add_column(col, overflow="fold")
        for r in s.reject_samples:
            t.add_row(str(r.row), r.reason, escape(r.detail), mask(r.phone))
        console.print(t)
    console.print(f"{s.elapsed_seconds:.2f}s, {s.rows_per_second:,.0f} rows/s")
    if s.stopped:
        console.print(
            f"[yellow]stopped on request after {s.rows:,} rows: those are all accounted for above; "
            "the rest of the segment was not read[/yellow]"
        )
    if s.halted:
        console.print(f"[red]stopped ({s.halted}): {escape(s.message)}[/red]")
    elif s.verdict:
        console.print(f"[red]{s.verdict}: {escape(s.message)}[/red]")
    if s.run_dir:
        console.print(f"run directory: {s.run_dir}")
    for state, path in s.files.items():
        if s.states.get(state):
            console.print(f"{state} rows: {escape(path)}")


def _lookup(numbers: list[str], console: Console) -> int:
    table = default_prefix_table()
    t = Table(title=f"prefix table {table.version}")
    for col in ("input", "E.164", "carrier", "kind", "result"):
        t.add_column(col)
    for raw in numbers:
        p = parse_phone(raw)
        if p.reason is not None:
            t.add_row(escape(raw), "", "", "", f"rejected: {p.reason} ({escape(p.detail)})")
            continue
        if not p.national:
            t.add_row(escape(raw), p.e164, "intl", "", "ok")
            continue
        info = table.lookup(p.national)
        if info is None or not info.sendable:
            reason, detail = table.reject_reason(p.national)
            t.add_row(
                escape(raw),
                p.e164,
                info.carrier if info else "",
                info.kind if info else "",
                f"rejected: {reason} ({detail})",
            )
        else:
            kind = info.kind + (" (virtual operator, host carrier shown)" if info.vno else "")
            t.add_row(escape(raw), p.e164, CARRIER_NAMES[info.carrier], kind, "ok")
    console.print(t)
    return EXIT_OK


def _plugins(as_json: bool, console: Console) -> int:
    host = PluginHost()
    data = {
        "plugins": host.plugin_names(),
        "sources": {r.name: {"plugin": r.plugin, "description": r.description} for r in host.sources.items()},
        "gateways": {
            r.name: {"plugin": r.plugin, "description": r.description} for r in host.gateways.items()
        },
        "carrier_resolvers": {
            r.name: {"plugin": r.plugin, "description": r.description} for r in host.resolvers.items()
        },
    }
    if as_json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(data)).decode() + "\n")
        return EXIT_OK
    t = Table(title="Installed plugins")
    for col in ("kind", "name", "plugin", "description"):
        t.add_column(col)
    for kind in ("sources", "gateways", "carrier_resolvers"):
        for name, info in sorted(data[kind].items()):  # type: ignore[attr-defined]
            t.add_row(kind.rstrip("s"), name, info["plugin"], info["description"])
    console.print(t)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run the ``pigeon`` command; returns the process exit code.

    Exit codes: :data:`EXIT_CODES` (``pigeon --help`` lists them).
    """
    args = _parser().parse_args(argv)
    console = Console(highlight=False, soft_wrap=True)
    try:
        if args.command == "lookup":
            return _lookup(args.numbers, console)
        if args.command == "plugins":
            return _plugins(args.json, console)
        if args.command == "optout":
            return optout_command(args, console)
        if args.command == "consent":
            return consent_command(args, console)
        if args.command in ("serve", "keys"):
            from engine.service_cli import service_command

            return service_command(args)
        if args.command in ("status", "report", "cancel"):
            return ledger_command(args, console)
        if args.command == "resume":
            args.campaign, args.engine = resume_target(args.campaign, args.engine)
            args.command = "send"
        plan = prepare(args.campaign, args.engine, strict=args.command == "send")
        if args.command == "preview":
            summary = preview(plan, samples=args.samples, max_rows=args.rows, rejects_path=args.rejects)
        else:
            progress = None if args.quiet else _Progress(sys.stderr, live=sys.stderr.isatty())
            summary = send(
                plan,
                backend=args.backend,
                runs_dir=args.runs_dir,
                progress=progress,
                notify=lambda text: print(text, file=sys.stderr, flush=True),
                wait=not args.no_wait,
                metrics_port=getattr(args, "metrics_port", None),  # resume has no --metrics-port
                metrics_addr=getattr(args, "metrics_addr", "127.0.0.1"),
                force=args.force,
                again=args.again,
                shards=getattr(args, "shards", None),  # resume keeps the engine's
            )
    except RunAbandoned as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 130
    except OutsideSendWindow as exc:
        print(f"not now: {exc}", file=sys.stderr)
        return EXIT_NOT_NOW
    except CampaignBusy as exc:
        print(f"busy: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except RunHalt as exc:  # a store that cannot even be opened for the run
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_HALTED
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if args.json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(summary)).decode() + "\n")
        if summary.halted or summary.verdict:  # the JSON carries it too; stderr is where people look
            print(f"error: {summary.halted or summary.verdict}: {summary.message}", file=sys.stderr)
    else:
        _print_summary(console, summary)
    return exit_code(summary)


def exit_code(summary: RunSummary) -> int:
    """The exit code of a preview or a send that ran (see :data:`EXIT_CODES`)."""
    if any(f.level == "error" for f in summary.findings):
        return EXIT_BAD_INPUT  # a preview of a campaign that `send` would refuse
    if summary.halted:
        return EXIT_HALTED
    if summary.verdict:
        return EXIT_BAD_INPUT
    if summary.stopped:
        return EXIT_STOPPED
    return EXIT_FAILED_MESSAGES if summary.states.get(State.FAILED) else EXIT_OK
