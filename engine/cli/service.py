"""The ``pigeon serve`` and ``pigeon keys`` commands."""

from __future__ import annotations

import argparse
import logging
import sqlite3
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.cli.grammar import EXIT_BAD_INPUT, EXIT_OK, emit_json, engine_option, shared_options
from engine.core.config import load_engine
from engine.core.engine_file import find_engine
from engine.core.periods import parse_period
from engine.core.timestamps import iso_utc
from engine.observability.jsonlog import setup_logging
from engine.service.apikeys import IMPLIED, SCOPES, KeyRing, KeyUsage

__all__ = ["add_service_commands", "service_command"]


def _expiry(text: str) -> float:
    """``--expires``: a period from now (``90d``) or a UTC date or time (``2027-01-31``)."""
    try:
        seconds = parse_period(text)
    except ValueError:
        seconds = None
    if seconds is not None:
        return time.time() + seconds
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a period (90d, 12h) nor a date (2027-01-31)") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _last_used(store_path: Path) -> dict[str, float]:
    """Key name → when the service last saw it (the store's ``api_key_usage``; empty if none)."""
    if not store_path.is_file():
        return {}
    try:
        db = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return {}
    try:
        return KeyUsage.read(db)
    finally:
        db.close()


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
    kc.add_argument(
        "--scope",
        action="append",
        choices=SCOPES,
        help="what the key may do (repeat for several): send, campaigns, read, metrics, numbers "
        "(see numbers unmasked); default: all but numbers",
    )
    kc.add_argument(
        "--callback-url",
        action="append",
        metavar="URL",
        help="allow status callbacks to URLs under this prefix (repeat for several; default: none)",
    )
    kc.add_argument(
        "--require-consent",
        action="store_true",
        help="send this key's marketing messages only to numbers with a consent record",
    )
    kc.add_argument(
        "--expires",
        metavar="WHEN",
        help="refuse the key after this: a period from now (90d, 12h) or a UTC date (2027-01-31)",
    )
    kl = ks.add_command(
        "list",
        help="the keys: name, scopes, expiry, created and last used",
        exit_codes=((EXIT_OK, "printed"), bad),
    )
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
        used = _last_used(loaded.store_path)
        rows: list[dict[str, Any]] = [
            {
                "name": k.name,
                "scopes": k.scopes if k.scopes is not None else list(IMPLIED),
                "callback_urls": k.callback_urls or [],
                "require_consent": k.require_consent,
                "created_at": iso_utc(k.created_at),
                "expires_at": iso_utc(k.expires_at) if k.expires_at is not None else None,
                "last_used_at": iso_utc(used[k.name]) if k.name in used else None,
            }
            for k in ring.records()
        ]
        if args.json:
            emit_json(rows)
        else:
            for r in rows:
                print(
                    f"{r['name']}\tscopes: {','.join(r['scopes'])}\texpires: {r['expires_at'] or 'never'}"
                    f"\tlast used: {r['last_used_at'] or 'never'}"
                )
        return EXIT_OK
    if args.action == "create":
        try:
            expires = _expiry(args.expires) if args.expires else None
        except ValueError as exc:
            print(f"error: --expires: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        key = ring.create(
            args.name,
            scopes=args.scope,
            expires_at=expires,
            callback_urls=args.callback_url,
            require_consent=args.require_consent,
        )
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
