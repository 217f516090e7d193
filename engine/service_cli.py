"""The ``pigeon serve`` and ``pigeon keys`` commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.apikeys import KeyRing
from engine.config import load_engine

__all__ = ["service_command"]


def service_command(args: argparse.Namespace) -> int:
    """Run ``serve`` or ``keys``; returns the exit code."""
    if args.command == "serve":
        from engine.serve import serve

        return serve(args.config, args.host, args.port, args.backend)
    engine = load_engine(args.config)
    path = engine.config.service.keys_file
    p = Path(path).expanduser()
    ring = KeyRing(p if p.is_absolute() else engine.base_dir / p)
    if args.action == "list":
        for name in ring.names():
            print(name)
        return 0
    if not args.name:
        print(f"error: `pigeon keys {args.action}` needs a NAME", file=sys.stderr)
        return 2
    if args.action == "create":
        key = ring.create(args.name)
        print(key)
        print(
            f"API key {args.name!r} created; it is shown only now (stored as a SHA-256 hash in {ring.path}). "
            "Send it as: Authorization: Bearer <key>",
            file=sys.stderr,
        )
        return 0
    if not ring.revoke(args.name):
        print(
            f"error: no key named {args.name!r}; keys: {', '.join(ring.names()) or '(none)'}", file=sys.stderr
        )
        return 2
    print(f"API key {args.name!r} revoked", file=sys.stderr)
    return 0
