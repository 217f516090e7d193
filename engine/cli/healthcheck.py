"""The container's health check: ask a running ``pigeon serve`` for ``/healthz`` (stdlib only).

``python -m engine.cli.healthcheck`` is the image's ``HEALTHCHECK``. It finds the ``pigeon serve``
process among the container's processes and reads its ``--host`` and ``--port`` (the defaults of
``pigeon serve`` otherwise), so ``docker run … serve --port 9000`` needs no second setting. A
container that runs anything else (``pigeon send``, ``pigeon --help``) has no service to check and
is reported healthy: a one-shot blast must not be restarted by an orchestrator for lacking a port.
``--url`` (or ``$PIGEON_HEALTHCHECK_URL``) checks a given address instead.

Exit 0: healthy (or nothing to check); 1: the service did not answer ``200 {"status": "ok"}``.
Only the standard library: it runs every 30 s and starts in a few milliseconds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["DEFAULT_PORT", "check", "find_serve", "main", "serve_url"]

DEFAULT_PORT = 8080
"""``pigeon serve``'s port when ``--port`` is not given."""
_WILDCARDS = {"", "0.0.0.0", "::", "[::]", "*"}
_GLOBAL_WITH_VALUE = {"--engine", "--config", "-e", "-c"}
"""Options that may come before the command and take a value (``pigeon --engine e.toml serve``)."""


def _is_pigeon(arg: str) -> bool:
    """Whether one argv element is Pigeon's command (``…/pigeon``, or ``engine`` in ``python -m engine``)."""
    return Path(arg).name == "pigeon" or arg in ("engine", "engine.cli.main")


def serve_url(argv: Sequence[str]) -> str | None:
    """The health URL of the service a command line starts, or None if it starts no service.

    ``argv`` is a process's full command line (``python /usr/local/bin/pigeon serve --port 9000``).
    A wildcard ``--host`` (``0.0.0.0``, ``::``) is checked on the loopback address of its family.
    """
    args = list(argv)
    start = next((i for i, a in enumerate(args) if _is_pigeon(a)), None)
    if start is None:
        return None
    # The command is the first argument that is neither an option nor a global option's value.
    i = start + 1
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i] in _GLOBAL_WITH_VALUE else 1
    if i >= len(args) or args[i] != "serve":
        return None
    rest = args[i + 1 :]
    host, port = "127.0.0.1", str(DEFAULT_PORT)
    for i, a in enumerate(rest):
        for name in ("--host", "--port"):
            value: str | None = None
            if a == name and i + 1 < len(rest):
                value = rest[i + 1]
            elif a.startswith(name + "="):
                value = a.partition("=")[2]
            if value is not None:
                if name == "--host":
                    host = value
                else:
                    port = value
    if host in _WILDCARDS:
        host = "::1" if ":" in host else "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def _command_lines(proc: Path) -> Iterator[list[str]]:
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if raw:
            yield [a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")]


def find_serve(proc: Path = Path("/proc"), pid: int | None = None) -> str | None:
    """The health URL of a ``pigeon serve`` running here (``pid``'s, if given), or None."""
    if pid is not None:
        raw = (proc / str(pid) / "cmdline").read_bytes()
        return serve_url([a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")])
    if not proc.is_dir():
        return None
    return next((url for argv in _command_lines(proc) if (url := serve_url(argv))), None)


def check(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    """GET ``url``: (healthy, what was seen). Healthy means ``200`` with ``{"status": "ok"}``."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return False, f"not an http:// URL: {url}"
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/", headers={"Accept": "application/json"})
        resp = conn.getresponse()
        body = resp.read(4096)
    except (OSError, http.client.HTTPException) as exc:
        return False, f"{url}: {exc.__class__.__name__}: {exc}"
    finally:
        conn.close()
    try:
        status = json.loads(body).get("status") if resp.status == 200 else None
    except (ValueError, AttributeError):
        status = None
    if resp.status == 200 and status == "ok":
        return True, f"{url}: ok"
    return False, f"{url}: HTTP {resp.status} {body[:200].decode(errors='replace')}"


def main(argv: Sequence[str] | None = None) -> int:
    """The command: exit 0 when healthy or when no service runs here, 1 otherwise."""
    ap = argparse.ArgumentParser(prog="python -m engine.cli.healthcheck", description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=os.environ.get("PIGEON_HEALTHCHECK_URL"), help="check this URL")
    ap.add_argument("--pid", type=int, help="check the service this process runs (default: find it)")
    ap.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    args = ap.parse_args(argv)
    url = args.url or find_serve(pid=args.pid)
    if url is None:
        sys.stdout.write("no `pigeon serve` runs here: nothing to check\n")
        return 0
    healthy, seen = check(url, args.timeout)
    sys.stdout.write(seen + "\n")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
