"""``pigeon serve``: run the service on Hypercorn (asyncio+uvloop or trio) until SIGTERM, then drain.

Shutdown: the first SIGTERM/SIGINT marks the service draining (``/readyz`` answers 503, new
messages 503), Hypercorn stops accepting connections and waits for the requests in flight, then the
running blasts stop reading and the lanes send what they hold; the process exits 0. A second
signal abandons the drain. SIGHUP reloads the API keys file (the service also sees it change by
itself within a second) and does nothing else.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import anyio
from anyio.abc import TaskStatus
from hypercorn.config import Config as HyperConfig

from engine.core.clock import Clock
from engine.core.config import load_engine
from engine.core.errors import EngineError
from engine.core.plugin_host import PluginHost
from engine.observability.jsonlog import setup_logging
from engine.service.api import create_app
from engine.service.core import Service, open_service

__all__ = ["bind", "run", "serve"]

log = logging.getLogger("pigeon.serve")


EXIT_BAD_INPUT = 2
"""``pigeon serve``'s exit code when the engine file or an argument is wrong (the CLI's code 2)."""

SWITCH_INTERVAL = 0.0005
"""Seconds a thread holds the GIL before the event loop may take it back (CPython's default: 0.005)."""


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (``port`` 0: any free port; read it from ``getsockname()``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def run(
    engine_path: str | Path,
    sock: socket.socket,
    *,
    stop: anyio.Event | None = None,
    handle_signals: bool = True,
    host: PluginHost | None = None,
    started: Callable[[Service], None] | None = None,
    clock: Clock | None = None,
) -> None:
    """Serve on ``sock`` until ``stop`` is set (or SIGTERM/SIGINT), then drain and return.

    Runs on whichever anyio backend is running (asyncio or trio). ``sock`` is this call's: handed
    to Hypercorn once the service started, closed here if it never did (a bad config).
    """
    try:
        await _run(engine_path, sock, stop, handle_signals, host, started, clock)
    finally:
        sock.close()  # (a no-op once detached for Hypercorn)


async def _run(
    engine_path: str | Path,
    sock: socket.socket,
    stop: anyio.Event | None,
    handle_signals: bool,
    host: PluginHost | None,
    started: Callable[[Service], None] | None,
    clock: Clock | None,
) -> None:
    engine = load_engine(engine_path)
    stop = stop or anyio.Event()
    addr = sock.getsockname()
    async with open_service(engine, host=host, clock=clock) as svc:
        app = create_app(svc)
        cfg = HyperConfig()
        cfg.bind = [f"fd://{sock.detach()}"]  # Hypercorn owns (and closes) the listening socket
        cfg.graceful_timeout = svc.service.drain_timeout
        cfg.accesslog = None
        cfg.errorlog = logging.getLogger("pigeon.http")
        cfg.keep_alive_timeout = 75

        async def trigger() -> None:
            await stop.wait()
            svc.ctx.draining = True
            log.info("draining", extra={"event": "service.draining"})

        async with anyio.create_task_group() as tg:
            if handle_signals:
                await tg.start(_signals, stop, tg.cancel_scope, svc)
            log.info(
                "listening",
                extra={"event": "service.listening", "host": addr[0], "port": addr[1], "backend": _backend()},
            )
            if started is not None:
                started(svc)
            if _backend() == "trio":
                from hypercorn.trio import serve as hyper_serve
            else:
                from hypercorn.asyncio import serve as hyper_serve  # type: ignore[assignment]
            # In a task of its own: Hypercorn's asyncio TaskGroup cancels and un-cancels the task it
            # runs in, which must not be the host of the cancel scope below.
            async with anyio.create_task_group() as server:
                server.start_soon(partial(hyper_serve, app, cfg, shutdown_trigger=trigger))  # type: ignore[arg-type]
            tg.cancel_scope.cancel()  # the signal watcher
        log.info("stopped accepting; draining the lanes", extra={"event": "service.drain"})
    log.info("stopped", extra={"event": "service.stopped"})


def _backend() -> str:
    import sniffio

    return sniffio.current_async_library()


async def _signals(
    stop: anyio.Event,
    scope: anyio.CancelScope,
    svc: Service,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGHUP:  # reload the keys file (it does not stop the service)
                log.info("SIGHUP: reloading the keys", extra={"event": "service.sighup"})
                svc.reload_keys()
                continue
            if stop.is_set():
                log.warning("second signal: abandoning the drain", extra={"event": "service.abandon"})
                scope.cancel()
                return
            stop.set()


def serve(
    engine_path: str | Path, host: str = "127.0.0.1", port: int = 8080, backend: str | None = None
) -> int:
    """The ``pigeon serve`` command: returns the exit code (0 after a clean drain)."""
    engine = load_engine(engine_path)
    setup_logging(engine.config.service.log_level)
    backend = backend or engine.config.backend
    try:
        sock = bind(host, port)
    except OSError as exc:  # a taken port, an address not on this host: said, not a traceback
        log.error(
            "cannot listen on %s:%s: %s",
            host,
            port,
            exc.strerror or exc,
            extra={"event": "service.failed", "host": host, "port": port},
        )
        return EXIT_BAD_INPUT
    from engine.run.send import _backend_options

    # The event loop shares the GIL with the service's threads (a /metrics render, WAL checkpoints).
    # CPython hands the GIL over every "switch interval" (default 5 ms): a transactional message
    # arriving while a scrape renders would wait that long at each of its several hand-backs. A
    # tenth of it keeps that wait under a millisecond; the cost is a few more switches while a
    # thread runs (measured: loadtests/service_load.py, docs/performance.md).
    sys.setswitchinterval(SWITCH_INTERVAL)

    try:
        anyio.run(lambda: run(engine_path, sock), backend=backend, backend_options=_backend_options(backend))
    except Exception as exc:
        error = _engine_error(exc)
        if error is None:
            raise
        # the [service] section (a secret's variable not set, a gateway's options): what to change
        log.error(str(error), extra={"event": "service.failed"})
        return EXIT_BAD_INPUT
    return 0


def _engine_error(exc: BaseException) -> EngineError | None:
    """The :class:`EngineError` that stopped the service, out of the task groups' exception groups."""
    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _engine_error(inner)
            if found is not None:
                return found
    return None
