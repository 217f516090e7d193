"""``pigeon segment rfm``: segment files per RFM class or life stage, built from an order export."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.cli.grammar import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    FileOrAddress,
    emit_json,
    shared_options,
)
from engine.core.config import load_engine
from engine.core.engine_file import default_engine, from_flags
from engine.core.errors import ConfigError
from engine.core.plugin_host import PluginHost
from engine.outcomes.build import RfmRequest, RfmSummary, build_rfm
from engine.outcomes.orders import FILE_FORMATS, OrderColumns
from engine.outcomes.rfm import Scoring
from engine.outcomes.segments import GROUP_BY

__all__ = ["add_segment_commands", "segment_command"]

_RFM_EXITS = (
    (EXIT_OK, "built: the segment files are written (rows that could not be read are in rejects.csv)"),
    (
        EXIT_BAD_INPUT,
        "the export, the database, a column or an option is wrong (nothing written), or no row could be "
        "read (see rejects.csv)",
    ),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C): the files in --out are incomplete; run it again"),
)
_RFM_EPILOG = """\
examples:
  pigeon segment rfm orders.csv --out rfm
  pigeon segment rfm 订单导出.csv --encoding gbk --phone-column 收货人手机号 \\
      --time-column 订单付款时间 --amount-column 买家实际支付金额 \\
      --status-column 订单状态 --paid 交易成功 --out rfm
  pigeon segment rfm postgresql://shop@127.0.0.1/shop --table orders --out rfm
  pigeon segment rfm mysql://root@127.0.0.1/shop --query "SELECT mobile AS phone, paid_at, \\
      total AS amount FROM orders WHERE paid_at >= '2025-01-01'" --out rfm

Then send each group its own copy: every file in --out is a segment (docs/segments.md)."""


def _cuts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"whole numbers separated by commas, not {text!r}") from None


def _yuan_cuts(text: str) -> tuple[int, ...]:
    try:
        return tuple(round(float(v) * 100) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"amounts separated by commas, not {text!r}") from None


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a date as YYYY-MM-DD, not {text!r}") from None


def add_segment_commands(sub: Any) -> None:
    """Register ``segment`` and its action ``rfm`` on the ``pigeon`` parser."""
    sg = sub.add_command("segment", help="build segment files from what customers did (RFM from orders)")
    sg.start_commands("segment_command", "ACTION")
    rf = sg.add_command(
        "rfm",
        help="score customers by recency, frequency and money from an order export; one segment file per "
        "RFM class or life stage",
        exit_codes=_RFM_EXITS,
        epilog=_RFM_EPILOG,
    )
    rf.add_argument(
        "orders",
        type=FileOrAddress,
        metavar="ORDERS",
        help="the order export: a CSV or JSON Lines file (gzip ok), or a database address "
        "(postgresql://…, mysql://… or mariadb://…) with --table or --query",
    )
    rf.add_argument(
        "--out", type=Path, default=Path("rfm"), metavar="DIR", help="where the files go (default ./rfm)"
    )
    rf.add_argument(
        "--format", dest="file_format", choices=FILE_FORMATS, help="file format (default: from the name)"
    )
    rf.add_argument("--encoding", default="utf-8", help="CSV encoding (default utf-8; gbk for Excel exports)")
    rf.add_argument(
        "--delimiter", default=",", metavar="CHAR", help="CSV field separator (default , or a tab for .tsv)"
    )
    rf.add_argument("--table", metavar="NAME", help="database: read this table (schema.table ok)")
    rf.add_argument(
        "--query", metavar="SQL", help="database: run this query; its columns name the order columns"
    )
    rf.add_argument(
        "--phone-column", default="phone", metavar="NAME", help="the customer's phone (default phone)"
    )
    rf.add_argument(
        "--time-column", default="paid_at", metavar="NAME", help="when it was paid (default paid_at)"
    )
    rf.add_argument(
        "--amount-column", default="amount", metavar="NAME", help="what was paid (default amount)"
    )
    rf.add_argument(
        "--status-column", metavar="NAME", help="the order status: only --paid values count as orders"
    )
    rf.add_argument(
        "--paid",
        action="append",
        default=[],
        metavar="VALUE",
        help="a status that means paid (repeat for several: --paid 交易成功 --paid 已发货)",
    )
    rf.add_argument(
        "--as-of", type=_day, metavar="DATE", help="count recency from this day (default: the latest order's)"
    )
    rf.add_argument(
        "--timezone",
        default="Asia/Shanghai",
        metavar="TZ",
        help="the shop's time zone (default Asia/Shanghai)",
    )
    rf.add_argument(
        "--scores", type=int, default=5, metavar="N", help="quantile scores per dimension (default 5)"
    )
    rf.add_argument(
        "--r-days",
        type=_cuts,
        metavar="DAYS",
        help="R by thresholds: best score within the first, … (30,90,180,365)",
    )
    rf.add_argument(
        "--f-orders",
        type=_cuts,
        metavar="N",
        help="F by thresholds: score 2 from the first count, … (2,3,5,10)",
    )
    rf.add_argument(
        "--m-amount", type=_yuan_cuts, metavar="YUAN", help="M by thresholds, in yuan (100,300,1000,3000)"
    )
    rf.add_argument(
        "--stages-r",
        type=_cuts,
        default=(90, 180, 365),
        metavar="DAYS",
        help="last day of active, using, dormant (default 90,180,365)",
    )
    rf.add_argument(
        "--stages-f", type=_cuts, default=(2, 5), metavar="N", help="first count of old, fan (default 2,5)"
    )
    rf.add_argument(
        "--group-by",
        choices=GROUP_BY,
        default="class",
        help="one file per RFM class (default), life stage F×R (stage), or one stage alone",
    )
    rf.add_argument(
        "--max-size",
        type=int,
        default=30_000,
        metavar="N",
        help="split groups over N customers into alike sub-groups (default 30000; 0: never)",
    )
    rf.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    shared_options(sg, [rf], engine_help="engine file: only its disabled plugins are read (optional here)")


def _host(explicit: Path | None) -> PluginHost:
    """The plugins, as the engine file (if one is given or found) disables them."""
    chosen = from_flags(explicit)
    path = chosen.path if chosen is not None else default_engine()
    disabled = load_engine(path).config.plugins.disabled if path is not None else ()
    return PluginHost(disabled=disabled)


def _request(args: argparse.Namespace) -> RfmRequest:
    columns = OrderColumns(
        phone=args.phone_column,
        time=args.time_column,
        amount=args.amount_column,
        status=args.status_column,
        paid=frozenset(args.paid),
    )
    if args.paid and not args.status_column:
        raise ConfigError("command line", "--paid", "--paid needs --status-column")
    stages_r, stages_f = tuple(args.stages_r), tuple(args.stages_f)
    if len(stages_r) != 3 or len(stages_f) != 2:
        raise ConfigError("command line", "--stages-r/--stages-f", "three R bounds (days) and two F bounds")
    if args.max_size < 0:
        raise ConfigError("command line", "--max-size", "0 (never split) or more")
    scoring = Scoring(
        scores=args.scores,
        r_days=args.r_days,
        f_orders=args.f_orders,
        m_cents=args.m_amount,
        stages_r=(stages_r[0], stages_r[1], stages_r[2]),
        stages_f=(stages_f[0], stages_f[1]),
    )
    return RfmRequest(
        orders=str(args.orders),
        out_dir=args.out,
        columns=columns,
        fmt=args.file_format,
        encoding=args.encoding,
        delimiter=args.delimiter,
        table=args.table,
        query=args.query,
        scoring=scoring,
        as_of=args.as_of,
        timezone=args.timezone,
        group_by=args.group_by,
        max_size=args.max_size,
    )


class _Progress:
    """Rows read so far on standard error: rewritten in place on a terminal, a line every 10 s otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.started = self.last = time.monotonic()

    def __call__(self, rows: int, fraction: float | None, final: bool) -> None:
        now = time.monotonic()
        if not final and now - self.last < (0.5 if self.tty else 10.0):
            return
        self.last = now
        share = f" ({fraction:.0%})" if fraction is not None and not final else ""
        rate = rows / (now - self.started) if now > self.started else 0.0
        line = f"read {rows:,} rows{share}, {rate:,.0f} rows/s"
        if self.tty:
            self.out.write("\r" + line + ("\n" if final else ""))
        elif not final:
            self.out.write(line + "\n")
        self.out.flush()


def segment_command(args: argparse.Namespace, console: Console) -> int:
    """Run one ``pigeon segment`` action; returns the exit code."""
    request = _request(args)
    host = _host(args.engine)
    progress = None if args.quiet else _Progress(sys.stderr)
    summary = build_rfm(request, host=host, progress=progress)
    if args.json:
        emit_json(summary)
    else:
        _print(console, summary)
    return EXIT_OK


def _print(console: Console, s: RfmSummary) -> None:
    console.print(
        f"[bold]{escape(s.source)}[/bold]: {s.rows:,} rows, {s.orders:,} paid orders of "
        f"{s.customers:,} customers ({s.buyers:,} buyers), revenue {s.revenue:,.2f}; "
        f"recency counted from {s.as_of} ({s.timezone})"
    )
    if s.unpaid:
        console.print(f"{s.unpaid:,} rows not paid (their customers without a paid order are potential)")
    if s.rejected:
        why = ", ".join(f"{r} {n:,}" for r, n in s.reasons.items())
        where = escape(str(Path(s.out_dir) / s.files["rejects"]))
        console.print(f"[yellow]{s.rejected:,} rows not counted ({why}): {where}[/yellow]")
        for r in s.reject_samples:
            console.print(f"  row {r.row}: {r.reason}: {escape(r.detail)} {escape(r.phone)}")
    for name, d in s.scoring.items():
        console.print(f"{name}: {escape(d.rule)}; high above a mean score of {d.mean:.2f}")
    t = Table(title=f"Groups by {s.group_by} → {s.out_dir}", box=box.SIMPLE_HEAD)
    for col in ("group", "", "customers", "files", "revenue", "AOV"):
        numeric = col not in ("group", "")
        t.add_column(col, justify="right" if numeric else "left", no_wrap=True)
    for g in s.groups:
        t.add_row(
            g.name,
            g.zh,
            f"{g.customers:,}",
            str(len(g.files)),
            f"{g.revenue:,.0f}",
            f"{g.avg_order_value:,.2f}",
        )
    console.print(t)
    console.print(
        f"{s.orders_per_second:,.0f} rows/s; each file is a segment: one campaign per group, "
        f'\\[segment] path = "{escape(s.out_dir)}/<group>.csv" (docs/segments.md)'
    )
