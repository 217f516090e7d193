"""``pigeon settle``: the providers' query APIs asked about a campaign's ``unknown`` messages."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.markup import escape

from engine.cli.grammar import EXIT_BAD_INPUT, EXIT_HALTED, EXIT_OK, emit_json, engine_option, json_option
from engine.core.config import load_engine
from engine.core.engine_file import EngineFile, with_engine
from engine.run.settle import SettleCounts, describe, settle_campaign

__all__ = ["SETTLE_EXITS", "add_settle_command", "print_counts", "settle_command", "settle_now"]

SETTLE_EXITS = (
    (EXIT_OK, "asked and recorded (what is still unknown is said: ask again later)"),
    (EXIT_BAD_INPUT, "no such campaign, or the engine file or its store is missing or unusable"),
    (
        EXIT_HALTED,
        "a gateway could not be asked (unreachable, credentials refused): its messages are unchanged",
    ),
)

_ENGINE_HELP = (
    "engine file (default: $PIGEON_ENGINE, else the one the campaign was sent with as the ledger "
    "of ./engine.toml or ./config/engine.toml recorded it, else that file)"
)


def add_settle_command(sub: Any) -> None:
    """Register ``settle`` on the ``pigeon`` parser's subcommands."""
    st = sub.add_command(
        "settle",
        help="ask the providers' query APIs what became of a campaign's unknown messages, and record it",
        exit_codes=SETTLE_EXITS,
        epilog=(
            "A message is unknown when its request may have reached the provider but no answer came\n"
            "(a timeout, a dropped connection, a crash). Gateways with a query API (aliyun:\n"
            "QuerySendDetails, tencent: PullSmsSendStatus) say whether it was delivered, failed or\n"
            "never taken; the ledger records it. Asking again later is safe: only messages still\n"
            "unknown are asked about, and none changes twice."
        ),
    )
    st.add_argument(
        "campaign", metavar="ID", help="campaign id (api-transactional / api-marketing: the service's)"
    )
    engine_option(st, _ENGINE_HELP)
    st.add_argument("--backend", choices=["asyncio", "trio"], help="event loop (default: engine config)")
    st.add_argument(
        "--runs-dir",
        type=Path,
        metavar="DIR",
        help="where the campaign's run directories are, if not the engine config's runs_dir",
    )
    st.add_argument(
        "--submitted",
        action="store_true",
        help="also ask about messages accepted without a delivery report yet (aliyun: a query a number)",
    )
    json_option(st, "print the counts as JSON")


def settle_now(
    engine: EngineFile,
    campaign_id: str,
    *,
    backend: str | None = None,
    runs_dir: Path | None = None,
    submitted: bool = False,
) -> SettleCounts:
    """Settle ``campaign_id`` with ``engine`` (messages for people on standard error)."""
    loaded = load_engine(engine.path)
    return settle_campaign(
        loaded,
        campaign_id,
        backend=backend or loaded.config.backend,
        submitted=submitted,
        runs_dirs=[runs_dir] if runs_dir is not None else [],
        notify=lambda text: print(with_engine(text, engine), file=sys.stderr, flush=True),
    )


def print_counts(counts: SettleCounts, console: Console, engine: EngineFile | None = None) -> None:
    """The counts for people."""
    console.print(escape(describe(counts)))
    still = counts.waiting + counts.unknown
    if still:
        console.print(
            escape(
                with_engine(
                    f"{still:,} still unknown: receipts may still come; "
                    f"`pigeon settle {counts.campaign}` asks again",
                    engine,
                )
            )
        )


def settle_command(args: argparse.Namespace, console: Console) -> int:
    """Run ``pigeon settle``; returns the exit code."""
    from engine.cli.ledger import campaign_engine

    engine, _ = campaign_engine(args.engine, args.campaign)
    counts = settle_now(
        engine, args.campaign, backend=args.backend, runs_dir=args.runs_dir, submitted=args.submitted
    )
    if args.json:
        emit_json({**msgspec.to_builtins(counts), "settled": counts.settled})
    else:
        print_counts(counts, console, engine)
    return EXIT_HALTED if counts.errors else EXIT_OK
