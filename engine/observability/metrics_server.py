"""Serving ``/metrics`` on a port of its own for ``pigeon send`` (the service serves it on its API)."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

__all__ = ["MetricsServer"]


class MetricsServer:
    """``/metrics`` served over HTTP from a daemon thread (prometheus_client's server)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def address(self) -> tuple[str, int]:
        """The host and port it listens on (the port is the real one when 0 was asked)."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """Where to scrape it."""
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port; waits for the thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
