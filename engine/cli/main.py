"""The ``pigeon`` command: preview and send campaigns, look up numbers, list plugins."""

from __future__ import annotations

import argparse
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

from engine.cli.flows import add_flow_commands
from engine.cli.grammar import (
    EXIT_BAD_INPUT,
    EXIT_BUSY,
    EXIT_FAILED_MESSAGES,
    EXIT_HALTED,
    EXIT_INTERRUPTED,
    EXIT_NOT_NOW,
    EXIT_OK,
    EXIT_STOPPED,
    EXITS,
    CommandParser,
    emit_json,
    engine_option,
    exit_codes_text,
    finish,
    json_option,
)
from engine.cli.ledger import add_ledger_commands, campaign_file_engine, ledger_command, resume_target
from engine.cli.links import add_links_commands, links_command
from engine.cli.lists import add_list_commands, consent_command, optout_command
from engine.cli.orders import add_orders_commands, orders_command
from engine.cli.segment import add_segment_commands, segment_command
from engine.cli.service import add_service_commands
from engine.cli.settle import add_settle_command, print_counts, settle_command, settle_now
from engine.core.carriers import CARRIER_NAMES, default_prefix_table
from engine.core.engine_file import EngineFile, with_engine
from engine.core.errors import EngineError, OutsideSendWindow, RunAbandoned, RunHalt
from engine.core.messages import State
from engine.core.phone import mask, parse_phone
from engine.core.plugin_host import PluginHost
from engine.observability.report import RunRecorder, RunSummary
from engine.run.plan import Plan, prepare
from engine.run.preview import preview
from engine.run.send import send
from engine.run.settle import SettleCounts
from engine.state.ledger.lease import CampaignBusy

__all__ = ["EXIT_CODES", "exit_code", "main", "parser"]

EXIT_CODES = exit_codes_text(tuple(EXITS))
"""Every exit code of the ``pigeon`` commands (``pigeon --help``); each command's ``--help`` lists its own."""
_SEND_EXITS = (
    EXIT_OK,
    EXIT_BAD_INPUT,
    EXIT_FAILED_MESSAGES,
    EXIT_NOT_NOW,
    EXIT_STOPPED,
    EXIT_HALTED,
    EXIT_BUSY,
    EXIT_INTERRUPTED,
)
_ROOT_EPILOG = """\
the engine file: every command that uses one takes --engine PATH (before or after an action);
without it: $PIGEON_ENGINE, then the campaign file's `engine` key (commands given a campaign
file), then the engine file the campaign was sent with (commands given a campaign id), then
./engine.toml or ./config/engine.toml. Every command that prints data takes --json.
Shell completion: pigeon completion bash|zsh|fish (docs/cli.md says where it goes)."""
_CAMPAIGN_ENGINE_HELP = (
    "engine file (default: $PIGEON_ENGINE, else the campaign file's `engine` key, "
    "else ./engine.toml or ./config/engine.toml)"
)


def _version() -> str:
    try:
        v = version("pigeon-sms")
    except PackageNotFoundError:  # running from a source tree that is not installed
        v = "0+unknown"
    from engine.core import speedups

    if speedups.ACCELERATED:
        return f"{v} (compiled batch kernels)"
    why = "PIGEON_PURE is set" if speedups.AVAILABLE else "engine.core._speedups is not built"
    return f"{v} (pure-Python batch kernels: {why})"


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
    parser.add_argument(
        "--settle-after",
        type=float,
        metavar="SECONDS",
        help="when the run leaves messages unknown, wait this long for late receipts, then ask the "
        "providers' query APIs about them (`pigeon settle`)",
    )


def parser() -> CommandParser:
    """The ``pigeon`` command's parser: every command and action, their options and exit codes
    (docs/cli.md's table and the shell completion scripts are made from it)."""
    p = CommandParser(
        prog="pigeon",
        description="Pigeon: a fast, safe SMS send engine for promotion blasts and transactional messages.",
        epilog=_ROOT_EPILOG,
        exit_codes=tuple(EXITS),
    )
    p.add_argument("--version", action="version", version=f"pigeon {_version()}")
    p.start_commands("command", "COMMAND")

    pv = p.add_command(
        "preview",
        help="show what a campaign would send: sample messages, counts and cost per carrier, rejects",
        exit_codes=(
            (EXIT_OK, "previewed: `pigeon send` would take this campaign"),
            (EXIT_BAD_INPUT, "bad input, or the campaign breaks a rule `pigeon send` would refuse"),
            EXIT_INTERRUPTED,
        ),
    )
    pv.add_argument("campaign", type=Path, metavar="CAMPAIGN_FILE", help="campaign file (TOML)")
    engine_option(pv, _CAMPAIGN_ENGINE_HELP)
    pv.add_argument(
        "-n", "--samples", type=int, default=5, metavar="N", help="rendered messages to show (default 5)"
    )
    pv.add_argument(
        "--rows", type=int, metavar="N", help="read only the first N rows (default: the whole segment)"
    )
    pv.add_argument("--rejects", type=Path, metavar="FILE", help="write every rejected row to this CSV file")
    json_option(pv, "print the summary as JSON")

    sd = p.add_command("send", help="send a campaign through the configured gateways", exit_codes=_SEND_EXITS)
    sd.add_argument("campaign", type=Path, metavar="CAMPAIGN_FILE", help="campaign file (TOML)")
    engine_option(sd, _CAMPAIGN_ENGINE_HELP)
    sd.add_argument("--backend", choices=["asyncio", "trio"], help="event loop (default: engine config)")
    sd.add_argument(
        "--runs-dir", type=Path, metavar="DIR", help="where run directories go (default: engine config)"
    )
    json_option(sd, "print the summary as JSON")
    sd.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    sd.add_argument(
        "--shards",
        type=int,
        metavar="N",
        help="split the campaign across N worker processes, each reading a byte range of the segment "
        "(PIGEON_SHARD_BY=hash: each keeps the numbers of its hash; default: engine config, 1)",
    )
    sd.add_argument(
        "--coordinator",
        metavar="URL",
        help="share claims and rate budgets with other workers: redis://host:port/db "
        "(default: the engine's [coordinator], embedded)",
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
    sd.add_argument(
        "--test",
        action="store_true",
        help="send each variant's message, rendered from a real row, to the campaign's [review] seeds "
        "only, and record the test (the campaign itself does not start)",
    )
    sd.add_argument(
        "--approved-by",
        metavar="NAME",
        default="",
        help="approve the campaign's current content as NAME (recorded in the store), for a campaign "
        "with review.require_approval",
    )
    _resume_args(sd)

    wk = p.add_command(
        "worker",
        help="send a campaign with other workers: take its byte ranges from the shared queue (Redis)",
        exit_codes=_SEND_EXITS,
    )
    wk.add_argument("campaign", type=Path, metavar="CAMPAIGN_FILE", help="campaign file (TOML)")
    engine_option(wk, _CAMPAIGN_ENGINE_HELP)
    wk.add_argument(
        "--coordinator",
        metavar="URL",
        help="the shared coordinator: redis://host:port/db (default: the engine's [coordinator])",
    )
    wk.add_argument("--backend", choices=["asyncio"], help="event loop (the redis client is asyncio's)")
    wk.add_argument(
        "--runs-dir", type=Path, metavar="DIR", help="where run directories go (default: engine config)"
    )
    json_option(wk, "print the summary as JSON")
    wk.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    wk.add_argument(
        "--range-kb",
        type=int,
        default=256,
        metavar="KB",
        help="when this worker publishes the campaign: KiB of segment per range (default 256)",
    )
    wk.add_argument(
        "--lease",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="a range not renewed this long goes to another worker (default 15; renewed every third)",
    )
    wk.add_argument(
        "--no-send",
        action="store_true",
        help="publish the ranges and show the merged progress until every range is done; send nothing",
    )
    wk.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus /metrics on this port")
    wk.add_argument("--metrics-addr", default="127.0.0.1", metavar="ADDR", help="address for --metrics-port")
    _resume_args(wk)

    rs = p.add_command(
        "resume",
        help="continue a campaign's unfinished run (what `send` does on it too)",
        exit_codes=_SEND_EXITS,
    )
    rs.add_argument(
        "campaign",
        metavar="ID_OR_FILE",
        help="campaign id (its file is found in the ledger) or campaign file",
    )
    engine_option(
        rs,
        "engine file (default: $PIGEON_ENGINE; for a campaign file its `engine` key, for an id the one it "
        "was sent with as the ledger recorded it; else ./engine.toml or ./config/engine.toml)",
    )
    rs.add_argument("--backend", choices=["asyncio", "trio"], help="event loop (default: engine config)")
    rs.add_argument(
        "--runs-dir", type=Path, metavar="DIR", help="where run directories go (default: engine config)"
    )
    json_option(rs, "print the summary as JSON")
    rs.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    rs.add_argument("--no-wait", action="store_true", help="outside the sending hours, stop at once (exit 4)")
    _resume_args(rs)
    add_ledger_commands(p)
    add_settle_command(p)

    lk = p.add_command(
        "lookup",
        help="normalize phone numbers and show their carrier",
        exit_codes=(
            (EXIT_OK, "printed (a number that cannot be sent to is a result: its reason is shown)"),
            (EXIT_BAD_INPUT, "bad arguments"),
        ),
    )
    lk.add_argument("numbers", nargs="+", metavar="NUMBER", help="numbers in any common form")
    json_option(lk)

    add_list_commands(p)
    add_segment_commands(p)
    add_orders_commands(p)
    add_links_commands(p)
    add_service_commands(p)
    add_flow_commands(p)

    pl = p.add_command(
        "plugins",
        help="list installed plugins and what they register",
        exit_codes=((EXIT_OK, "printed"), (EXIT_BAD_INPUT, "a plugin failed to load or broke its contract")),
    )
    json_option(pl, "print as JSON")

    cp = p.add_command(
        "completion",
        help="print a shell completion script (bash, zsh or fish); docs/cli.md says where it goes",
        exit_codes=((EXIT_OK, "printed"), (EXIT_BAD_INPUT, "an unknown shell")),
    )
    cp.add_argument("shell", choices=["bash", "zsh", "fish"], help="the shell")
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
    if s.links:
        console.print(
            escape(
                f"link ({s.links['mode']}): {s.links['example']} — {s.links['characters']} characters in "
                "every message, counted in its billed parts below"
            )
        )
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
    if s.variants:
        total = sum(s.variants.values())
        console.print(
            "A/B variants: "
            + ", ".join(f"{escape(name)} {n:,} ({n / total:.1%})" for name, n in sorted(s.variants.items()))
        )
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


def _lookup_rows(numbers: list[str]) -> list[dict[str, str]]:
    """One row per number: input, E.164, carrier (code and name), kind, result."""
    table = default_prefix_table()
    rows = []
    for raw in numbers:
        p = parse_phone(raw)
        row = {
            "input": raw,
            "e164": p.e164 or "",
            "carrier": "",
            "carrier_name": "",
            "kind": "",
            "result": "ok",
        }
        if p.reason is not None:
            row["result"] = f"rejected: {p.reason} ({p.detail})"
        elif not p.national:
            row |= {"carrier": "intl", "carrier_name": "intl"}
        else:
            info = table.lookup(p.national)
            if info is not None:
                vno = " (virtual operator, host carrier shown)" if info.vno else ""
                row |= {
                    "carrier": info.carrier,
                    "carrier_name": CARRIER_NAMES.get(info.carrier, info.carrier),
                    "kind": info.kind + vno,
                }
            if info is None or not info.sendable:
                reason, detail = table.reject_reason(p.national)
                row["result"] = f"rejected: {reason} ({detail})"
                row["carrier_name"] = row["carrier"]
        rows.append(row)
    return rows


def _lookup(numbers: list[str], console: Console, as_json: bool, tty: bool) -> int:
    """Print each number's E.164 and carrier: JSON, a table on a terminal, else tab-separated lines
    (whole values, never cut to a terminal's width)."""
    rows = _lookup_rows(numbers)
    version = default_prefix_table().version
    if as_json:
        emit_json({"prefix_table": version, "numbers": rows})
        return EXIT_OK
    columns = ("input", "e164", "carrier_name", "kind", "result")
    if not tty:  # piped: one line per number, every field whole
        sys.stdout.write("\t".join(("input", "E.164", "carrier", "kind", "result")) + "\n")
        for row in rows:
            sys.stdout.write("\t".join(row[c].replace("\t", " ") for c in columns) + "\n")
        return EXIT_OK
    t = Table(title=f"prefix table {version}")
    for col, name in zip(columns, ("input", "E.164", "carrier", "kind", "result"), strict=True):
        # numbers are never wrapped or cut; the text columns give way on a narrow terminal
        whole = col in ("input", "e164")
        t.add_column(name, no_wrap=whole, min_width=16 if col == "e164" else None, overflow="fold")
    for row in rows:
        t.add_row(*(escape(row[c]) for c in columns))
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
        "coordinators": {
            r.name: {"plugin": r.plugin, "description": r.description} for r in host.coordinators.items()
        },
        "event_sources": {
            r.name: {"plugin": r.plugin, "description": r.description} for r in host.event_sources.items()
        },
    }
    if as_json:
        emit_json(data)
        return EXIT_OK
    t = Table(title="Installed plugins")
    for col in ("kind", "name", "plugin", "description"):
        t.add_column(col)
    for kind in ("sources", "gateways", "carrier_resolvers", "coordinators", "event_sources"):
        for name, info in sorted(data[kind].items()):  # type: ignore[attr-defined]
            t.add_row(kind.rstrip("s"), name, info["plugin"], info["description"])
    console.print(t)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run the ``pigeon`` command; returns the process exit code.

    Exit codes: :data:`EXIT_CODES` (``pigeon --help`` lists them, each command's ``--help`` its own).
    """
    tree = parser()
    args = finish(tree.parse_args(argv))
    if args.command != "serve":  # serve's standard error is its JSON log: it logs them there
        for note in args.deprecations:
            print(f"warning: {note}", file=sys.stderr)
    console = Console(highlight=False, soft_wrap=True)
    engine: EngineFile | None = None  # once known: its path goes into the hints of what is printed
    try:
        if args.command == "completion":
            from engine.cli.completion import script

            sys.stdout.write(script(args.shell, tree))
            return EXIT_OK
        if args.command == "lookup":
            return _lookup(args.numbers, console, args.json, sys.stdout.isatty())
        if args.command == "plugins":
            return _plugins(args.json, console)
        if args.command == "optout":
            return optout_command(args, console)
        if args.command == "consent":
            return consent_command(args, console)
        if args.command == "segment":
            return segment_command(args, console)
        if args.command == "orders":
            return orders_command(args, console)
        if args.command == "links":
            return links_command(args, console)
        if args.command in ("events", "flows"):
            from engine.cli.flows import events_command, flows_command

            return (events_command if args.command == "events" else flows_command)(args, console)
        if args.command in ("serve", "keys"):
            from engine.cli.service import service_command

            return service_command(args)
        if args.command in ("status", "report", "cancel"):
            return ledger_command(args, console)
        if args.command == "settle":
            return settle_command(args, console)
        if args.command == "resume":
            campaign, engine = resume_target(args.campaign, args.engine)
            args.command = "send"
        else:
            campaign = args.campaign
            engine = campaign_file_engine(campaign, args.engine)
        plan = prepare(campaign, engine.path, strict=args.command in ("send", "worker"))
        if args.command == "worker":
            from engine.run.worker import work

            said_w = engine
            summary = work(
                plan,
                coordinator=args.coordinator,
                backend=args.backend,
                runs_dir=args.runs_dir,
                progress=None,
                notify=None
                if args.quiet
                else lambda text: print(with_engine(text, said_w), file=sys.stderr, flush=True),
                metrics_port=args.metrics_port,
                metrics_addr=args.metrics_addr,
                range_bytes=args.range_kb * 1024,
                lease=args.lease,
                send=not args.no_send,
                force=args.force,
                again=args.again,
            )
        elif args.command == "preview":
            summary = preview(plan, samples=args.samples, max_rows=args.rows, rejects_path=args.rejects)
        elif getattr(args, "test", False):
            return _test_send(plan, args, console)
        else:
            progress = None if args.quiet else _Progress(sys.stderr, live=sys.stderr.isatty())
            said = engine
            summary = send(
                plan,
                backend=args.backend,
                runs_dir=args.runs_dir,
                progress=progress,
                notify=lambda text: print(with_engine(text, said), file=sys.stderr, flush=True),
                wait=not args.no_wait,
                metrics_port=getattr(args, "metrics_port", None),  # resume has no --metrics-port
                metrics_addr=getattr(args, "metrics_addr", "127.0.0.1"),
                force=args.force,
                again=args.again,
                shards=getattr(args, "shards", None),  # resume keeps the engine's
                coordinator=getattr(args, "coordinator", None),
                approved_by=getattr(args, "approved_by", ""),
            )
    except RunAbandoned as exc:
        print(f"error: {with_engine(str(exc), engine)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OutsideSendWindow as exc:
        print(f"not now: {with_engine(str(exc), engine)}", file=sys.stderr)
        return EXIT_NOT_NOW
    except CampaignBusy as exc:
        print(f"busy: {with_engine(str(exc), engine)}", file=sys.stderr)
        return EXIT_BUSY
    except RunHalt as exc:  # a store that cannot even be opened for the run
        print(f"error: {with_engine(str(exc), engine)}", file=sys.stderr)
        return EXIT_HALTED
    except EngineError as exc:
        print(f"error: {with_engine(str(exc), engine)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    summary.message = with_engine(summary.message, engine)
    if not args.json:
        _print_summary(console, summary)
    settled: SettleCounts | None = None
    wait = getattr(args, "settle_after", None)
    if wait is not None and summary.states.get(State.UNKNOWN) and not summary.halted:
        try:
            settled = _settle_after(args, engine, summary, wait)
        except EngineError as exc:
            print(f"error: settling: {with_engine(str(exc), engine)}", file=sys.stderr)
        except KeyboardInterrupt:
            print("settling interrupted: `pigeon settle` asks again", file=sys.stderr)
        else:
            if not args.json:
                print_counts(settled, console, engine)
    if args.json:
        doc = msgspec.to_builtins(summary)
        if settled is not None:
            doc["settle"] = {**msgspec.to_builtins(settled), "settled": settled.settled}
        emit_json(doc)
        if summary.halted or summary.verdict:  # the JSON carries it too; stderr is where people look
            print(f"error: {summary.halted or summary.verdict}: {summary.message}", file=sys.stderr)
    return exit_code(summary)


def _test_send(plan: Plan, args: argparse.Namespace, console: Console) -> int:
    """``pigeon send --test``: the test send to the seeds, its outcome printed; exit 0 when every
    message was accepted (the real send may go), else 1."""
    from engine.run.gates import run_send_test

    record = run_send_test(plan, backend=args.backend or plan.engine.config.backend)
    if args.json:
        emit_json({**msgspec.to_builtins(record), "passed": record.passed})
    else:
        for m in record.messages:
            variant = f"variant {m['variant']}: " if m["variant"] else ""
            code = f" ({m['code']})" if m["code"] else ""
            console.print(f"  {variant}{m['to']} via {m['gateway']}: {m['outcome']}{code}")
        verdict = "passed" if record.passed else "NOT passed"
        console.print(
            f"test send of {plan.campaign.id!r} {verdict}: {record.accepted} of {record.sent} accepted "
            f"(content {record.content})"
            + ("; check the phones, then send" if record.passed else "; fix it and test again")
        )
    return EXIT_OK if record.passed else EXIT_FAILED_MESSAGES


def _settle_after(
    args: argparse.Namespace, engine: EngineFile, summary: RunSummary, wait: float
) -> SettleCounts:
    """``--settle-after``: wait for late receipts, then ask the query APIs about what is still unknown."""
    unknown = summary.states.get(State.UNKNOWN, 0)
    print(
        f"{unknown:,} message(s) unknown: waiting {wait:g} s for late receipts, then asking the providers",
        file=sys.stderr,
        flush=True,
    )
    time.sleep(max(0.0, wait))
    return settle_now(engine, summary.campaign, backend=args.backend, runs_dir=args.runs_dir)


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
