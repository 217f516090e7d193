"""The ``pigeon serve`` and ``pigeon keys`` commands."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from engine.cli.grammar import EXIT_BAD_INPUT, EXIT_OK, emit_json, engine_option, shared_options
from engine.core.config import load_engine
from engine.core.engine_file import find_engine
from engine.observability.jsonlog import setup_logging
from engine.service.apikeys import KeyRing

__all__ = ["add_service_commands", "service_command"]


def add_service_commands(sub: Any) -> None:
    """Register ``serve`` and ``keys`` (with its actions) on the ``pigeon`` parser's subcommands.

    Both took the engine file as ``--config``; that spelling still works (hidden, with a warning)."""
    sv = sub.add_command(
        "serve",
        help="run the HTTP service: transactional API, campaigns, webhooks, metrics",
        exit_codes=(
            (EXIT_OK, "stopped on SIGTERM / Ctrl-C after draining what was in flight"),
            (EXIT_BAD_INPUT, "the engine file (its [service] section) or an argument is wrong"),
        ),
    )
    engine_option(sv, config_alias=True)
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free port)")
    sv.add_argument("--backend", choices=["asyncio", "trio"], help="event loop (default: engine config)")

    ks = sub.add_command("keys", help="manage the service's API keys (stored hashed in service.keys_file)")
    ks.start_commands("action", "ACTION")
    bad = (EXIT_BAD_INPUT, "no such key, or the engine file is missing or unusable")
    kc = ks.add_command(
        "create",
        help="make a key and print it (shown only this once)",
        exit_codes=((EXIT_OK, "created"), (EXIT_BAD_INPUT, "the engine file is missing or unusable")),
    )
    kc.add_argument("name", help="key name (who uses it: shop, crm…)")
    kl = ks.add_command("list", help="the names of the keys", exit_codes=((EXIT_OK, "printed"), bad))
    kr = ks.add_command(
        "revoke", help="delete a key: requests with it are refused", exit_codes=((EXIT_OK, "revoked"), bad)
    )
    kr.add_argument("name", help="key name")
    shared_options(ks, [kc, kl, kr], config_alias=True)


def service_command(args: argparse.Namespace) -> int:
    """Run ``serve`` or ``keys``; returns the exit code."""
    engine = find_engine(args.engine)
    if args.command == "serve":
        from engine.service.serve import serve

        if args.deprecations:  # said in the service's own log format (stderr is JSON lines)
            setup_logging(load_engine(engine.path).config.service.log_level)
            for note in args.deprecations:
                logging.getLogger("pigeon.cli").warning(note, extra={"event": "cli.deprecated_option"})
        return serve(engine.path, args.host, args.port, args.backend)
    loaded = load_engine(engine.path)
    p = Path(loaded.config.service.keys_file).expanduser()
    ring = KeyRing(p if p.is_absolute() else loaded.base_dir / p)
    if args.action == "list":
        if args.json:
            emit_json(ring.names())
        else:
            for name in ring.names():
                print(name)
        return EXIT_OK
    if args.action == "create":
        key = ring.create(args.name)
        if args.json:
            emit_json({"name": args.name, "key": key})
        else:
            print(key)
        print(
            f"API key {args.name!r} created; it is shown only now (stored as a SHA-256 hash in {ring.path}). "
            "Send it as: Authorization: Bearer <key>",
            file=sys.stderr,
        )
        return EXIT_OK
    if not ring.revoke(args.name):
        print(
            f"error: no key named {args.name!r}; keys: {', '.join(ring.names()) or '(none)'}", file=sys.stderr
        )
        return EXIT_BAD_INPUT
    if args.json:
        emit_json({"name": args.name, "revoked": True})
    print(f"API key {args.name!r} revoked", file=sys.stderr)
    return EXIT_OK
