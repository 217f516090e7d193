"""What the load tests ask of this machine: a free loopback port, CPU seconds used (children too)."""

from __future__ import annotations

import resource
import socket

__all__ = ["cpu_seconds", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(*, children: bool = False) -> float:
    """User + system CPU seconds this process has used so far; with ``children``, also those of
    its child processes that have ended and been waited for (a sharded send's workers)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    total = r.ru_utime + r.ru_stime
    if children:
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        total += c.ru_utime + c.ru_stime
    return total
