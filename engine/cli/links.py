"""``pigeon links pull``: clicks on a campaign's provider-made links, pulled into the store for the report."""

from __future__ import annotations

import argparse
from typing import Any

import msgspec
from rich.console import Console
from rich.markup import escape

from engine.cli.grammar import EXIT_BAD_INPUT, EXIT_HALTED, EXIT_OK, emit_json, shared_options
from engine.core.config import load_engine
from engine.core.engine_file import with_engine
from engine.core.errors import GatewayError
from engine.run.provider_links import pull_clicks

__all__ = ["add_links_commands", "links_command"]

_EPILOG = """\
A campaign with [links] mode = "provider" carries per-phone links its gateway's provider made
(aliyun: CreateSmartShortUrl). The provider sees their clicks; this asks it (aliyun:
QueryPageSmartShortUrlLog) and records each clicked link once, against its recipient and group,
so `pigeon report ID --outcomes` counts it. Pulling again is safe: a click is never counted twice."""


def add_links_commands(sub: Any) -> None:
    """Register ``links`` and its action ``pull``."""
    lg = sub.add_command("links", help="provider-made per-phone links: pull their clicks for the report")
    lg.start_commands("links_command", "ACTION")
    pu = lg.add_command(
        "pull",
        help="ask the providers which of a campaign's links were clicked, and record the clicks once",
        exit_codes=(
            (EXIT_OK, "pulled and recorded"),
            (EXIT_BAD_INPUT, "no such campaign, or the engine file or its store is missing or unusable"),
            (
                EXIT_HALTED,
                "a provider could not be asked (unreachable, credentials refused): nothing changed",
            ),
        ),
        epilog=_EPILOG,
    )
    pu.add_argument("campaign", metavar="ID", help="campaign id")
    pu.add_argument("--backend", choices=["asyncio", "trio"], help="event loop (default: engine config)")
    shared_options(
        lg,
        [pu],
        engine_help="engine file (default: $PIGEON_ENGINE, else the one the campaign was sent with as the "
        "ledger of ./engine.toml or ./config/engine.toml recorded it, else that file)",
    )


def links_command(args: argparse.Namespace, console: Console) -> int:
    """Run one ``pigeon links`` action; returns the exit code."""
    from engine.cli.ledger import campaign_engine

    engine, _ = campaign_engine(args.engine, args.campaign)
    loaded = load_engine(engine.path)
    try:
        counts = pull_clicks(loaded, args.campaign, backend=args.backend or loaded.config.backend)
    except GatewayError as exc:
        Console(stderr=True).print(escape(f"error: {with_engine(str(exc), engine)}"))
        return EXIT_HALTED
    if args.json:
        emit_json(msgspec.to_builtins(counts))
    elif not counts.links:
        console.print(
            escape(f'{counts.campaign}: no provider-made links (only [links] mode = "provider" has them)')
        )
    else:
        console.print(
            escape(
                f"{counts.campaign}: {counts.links:,} provider links ({', '.join(counts.gateways)}); "
                f"{counts.clicks_new:,} new click(s) recorded, {counts.clicked:,} clicked in all "
                f"({counts.clicks_seen:,} clicks listed by the provider)"
            )
        )
    return EXIT_OK
