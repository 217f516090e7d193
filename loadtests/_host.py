"""What the load tests ask of this machine: a free loopback port, this process's CPU seconds."""

from __future__ import annotations

import resource
import socket

__all__ = ["cpu_seconds", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds() -> float:
    """User + system CPU seconds this process has used so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
