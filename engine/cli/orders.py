"""``pigeon orders import`` and ``pigeon report ID --outcomes``: orders into the store, outcomes out of it."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.cli.grammar import EXIT_BAD_INPUT, EXIT_OK, emit_json, shared_options
from engine.core.config import load_engine
from engine.core.engine_file import EngineFile, find_engine
from engine.core.plugin_host import PluginHost
from engine.outcomes.attribution import ALL, OutcomeReport, campaign_outcomes
from engine.outcomes.html import to_html
from engine.outcomes.order_store import ImportRequest, OrderStore, import_orders
from engine.outcomes.orders import FILE_FORMATS
from engine.outcomes.render import cells, to_csv, to_json
from engine.state.ledger.store import Ledger

__all__ = ["add_orders_commands", "orders_command", "outcomes_report"]

SALT_ENV = "PIGEON_ORDER_SALT"
"""The environment variable that gives the salt when ``--salt`` is not given."""

_EPILOG = """\
examples:
  pigeon orders import orders.csv
  pigeon orders import 订单导出.csv --encoding gbk --phone-column 收货人手机号 \\
      --time-column 订单付款时间 --amount-column 买家实际支付金额 --id-column 订单编号
  PIGEON_ORDER_SALT=s3cret pigeon orders import hashed.csv --hash-column phone_sha256

Then: pigeon report CAMPAIGN --outcomes (docs/outcomes.md)."""


def add_orders_commands(sub: Any) -> None:
    """Register ``orders`` and its action ``import``."""
    og = sub.add_command("orders", help="import orders for attribution (buyers, revenue, ROI per campaign)")
    og.start_commands("orders_command", "ACTION")
    im = og.add_command(
        "import",
        help="add an order export (phone or salted hash, paid time, amount) to the store; "
        "known orders skipped",
        exit_codes=(
            (EXIT_OK, "imported (rows that could not be read are counted with their reason)"),
            (EXIT_BAD_INPUT, "the file, a column, the salt or an option is wrong"),
        ),
        epilog=_EPILOG,
    )
    im.add_argument("file", type=Path, metavar="FILE", help="CSV or JSON Lines order export (gzip ok)")
    im.add_argument("--format", dest="file_format", choices=FILE_FORMATS, help="default: from the name")
    im.add_argument("--encoding", default="utf-8", help="CSV encoding (default utf-8)")
    im.add_argument("--delimiter", default=",", metavar="CHAR", help="CSV field separator (default ,)")
    im.add_argument(
        "--phone-column", default=None, metavar="NAME", help="the customer's phone (default phone)"
    )
    im.add_argument(
        "--hash-column",
        metavar="NAME",
        help="instead of a phone: hex SHA-256(salt + number), number as 13800138000 or +E.164",
    )
    im.add_argument("--time-column", default="paid_at", metavar="NAME", help="paid time (default paid_at)")
    im.add_argument("--amount-column", default="amount", metavar="NAME", help="amount paid (default amount)")
    im.add_argument("--id-column", metavar="NAME", help="order id: a re-import skips known ids")
    im.add_argument("--code-column", metavar="NAME", help="coupon or group code (kept with the order)")
    im.add_argument("--salt", default=None, help=f"hash salt (default: ${SALT_ENV}, else none)")
    im.add_argument("--timezone", default="Asia/Shanghai", metavar="TZ", help="the shop's time zone")
    im.add_argument(
        "--rejects", type=Path, metavar="FILE", help="write every unreadable row here (row, reason, detail)"
    )
    shared_options(og, [im])


def _store_path(engine: EngineFile) -> Path:
    return load_engine(engine.path).store_path


def orders_command(args: argparse.Namespace, console: Console) -> int:
    """Run one ``pigeon orders`` action; returns the exit code."""
    engine = find_engine(args.engine)
    phone = args.phone_column if args.phone_column or args.hash_column else "phone"
    request = ImportRequest(
        path=args.file,
        time_column=args.time_column,
        amount_column=args.amount_column,
        phone_column=phone,
        hash_column=args.hash_column,
        id_column=args.id_column,
        code_column=args.code_column,
        salt=args.salt if args.salt is not None else os.environ.get(SALT_ENV, ""),
        timezone=args.timezone,
        fmt=args.file_format,
        encoding=args.encoding,
        delimiter=args.delimiter,
        rejects_path=args.rejects,
    )
    store = OrderStore(_store_path(engine))
    try:
        summary = import_orders(
            request, store, PluginHost(disabled=load_engine(engine.path).config.plugins.disabled)
        )
    finally:
        store.close()
    if args.json:
        emit_json(
            {
                "rows": summary.rows,
                "imported": summary.imported,
                "already": summary.already,
                "rejected": summary.rejected,
                "reasons": summary.reasons,
                "stored": summary.stored,
            }
        )
        return EXIT_OK
    console.print(
        f"{escape(str(args.file))}: {summary.rows:,} rows, {summary.imported:,} orders imported, "
        f"{summary.already:,} already there; {summary.stored:,} orders in the store"
    )
    if summary.rejected:
        why = ", ".join(f"{r} {n:,}" for r, n in summary.reasons.items())
        console.print(f"[yellow]{summary.rejected:,} rows not imported ({why})[/yellow]")
        for r in summary.samples:
            console.print(f"  row {r.row}: {r.reason}: {escape(r.detail)}")
        if args.rejects is None:
            console.print("every one of them: --rejects FILE")
        else:
            console.print(f"every one of them: {escape(str(args.rejects))}")
    return EXIT_OK


def outcomes_report(engine: EngineFile, campaign_id: str, host: PluginHost | None = None) -> OutcomeReport:
    """The outcomes report of a campaign of the engine's store."""
    cfg = load_engine(engine.path).config
    prices: dict[str, float] = {str(c): v.price_per_part for c, v in cfg.carriers.items()}
    ledger = Ledger(load_engine(engine.path).store_path)
    try:
        return campaign_outcomes(
            ledger,
            campaign_id,
            prices=prices,
            currency=cfg.currency,
            host=host or PluginHost(disabled=cfg.plugins.disabled),
        )
    finally:
        ledger.close()


_SHOWN = (
    ("group", "group"),
    ("carrier", "carrier"),
    ("targets", "targets"),
    ("sent", "sent"),
    ("parts", "parts"),
    ("cost", "cost"),
    ("delivered", "deliv."),
    ("clicks", "clicks"),
    ("opt_outs", "opt-outs"),
    ("buyers", "buyers"),
    ("revenue", "revenue"),
    ("aov", "AOV"),
    ("roi", "ROI"),
    ("holdout", "holdout"),
    ("lift", "lift"),
)


def print_outcomes(report: OutcomeReport, fmt: str, out: Path | None, console: Console) -> int:
    """Write the report as ``table``, ``csv``, ``json`` or ``html`` to ``out`` (else standard output)."""
    if fmt in ("csv", "json", "html"):
        text = {"csv": to_csv, "json": to_json, "html": to_html}[fmt](report)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
            sys.stderr.write(f"wrote {out}\n")
        else:
            sys.stdout.write(text)
        return EXIT_OK
    if not console.is_terminal:  # piped or in a file: every column whole, however wide
        console.width = max(console.width, 200)
    t = Table(
        title=f"{report.campaign}: outcomes (window {report.window_seconds / 86400:g} d, "
        f"holdout {report.holdout_share:.0%}, {report.currency})",
        box=box.SIMPLE_HEAD,
    )
    for _, head in _SHOWN:
        t.add_column(head, justify="left" if head in ("group", "carrier") else "right", no_wrap=True)
    for line in [*report.lines, report.total]:
        c = cells(line)
        row = [escape(c[k]) for k, _ in _SHOWN]
        if line.lift is not None:
            row[-1] = f"{c['lift']} [{c['lift_low']}, {c['lift_high']}]"
        t.add_row(*row, style="bold" if line.carrier == ALL else None)
    console.print(t)
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}")
    console.print(escape(f"method: {report.method}; ROI = revenue : cost"))
    if out is not None:
        sys.stderr.write("-o is for --format csv, json or html\n")
        return EXIT_BAD_INPUT
    return EXIT_OK
