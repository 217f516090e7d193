"""Start a Redis Cluster of our own on loopback: redis-server processes joined by redis-cli."""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ClusterMissing", "LocalCluster", "free_port_pair", "local_cluster"]


class ClusterMissing(RuntimeError):
    """redis-server or redis-cli is not installed."""


def free_port_pair() -> int:
    """A loopback port free for a node and for its cluster bus (port + 10000)."""
    rng = random.Random()
    while True:
        port = rng.randrange(20_000, 30_000)
        try:
            for p in (port, port + 10_000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port


@dataclass
class LocalCluster:
    """The nodes of a cluster started by :func:`local_cluster` (port → process)."""

    cli: str
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def live(self) -> list[int]:
        """The ports of the nodes still running."""
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    @property
    def url(self) -> str:
        """A URL naming one live node (the client finds the others)."""
        return f"redis://127.0.0.1:{self.live()[0]}/0"

    def run(self, port: int, *args: str) -> str:
        """``redis-cli -p PORT ARGS``: its output ('' when the node does not answer)."""
        try:
            done = subprocess.run([self.cli, "-p", str(port), *args], capture_output=True, timeout=10)
        except subprocess.TimeoutExpired:
            return ""
        return done.stdout.decode()

    def primary_of(self, slot: int, *, ask: int | None = None) -> int:
        """The port of the primary that serves ``slot`` now, as node ``ask`` (a live one) sees it."""
        port = ask if ask is not None else self.live()[0]
        for line in self.run(port, "cluster", "nodes").splitlines():
            parts = line.split()
            if "master" not in parts[2] or "fail" in parts[2]:
                continue
            for r in parts[8:]:
                lo, _, hi = r.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return int(parts[1].split(":")[1].split("@")[0])
        raise LookupError(f"no live primary serves slot {slot}")

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port``."""
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def state_ok(self) -> bool:
        """Whether every live node says ``cluster_state:ok``."""
        return all("cluster_state:ok" in self.run(p, "cluster", "info") for p in self.live())


@contextmanager
def local_cluster(
    root: Path, *, primaries: int = 3, replicas: int = 0, node_timeout_ms: int = 15_000
) -> Iterator[LocalCluster]:
    """Start ``primaries`` × (1 + ``replicas``) nodes (no persistence) under ``root`` and join
    them; stop them afterwards. :class:`ClusterMissing` without redis-server and redis-cli."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if not (server and cli):
        raise ClusterMissing("redis-server / redis-cli are not installed: apt-get install redis-server")
    cluster = LocalCluster(cli)
    try:
        for _ in range(primaries * (1 + replicas)):
            port = free_port_pair()
            while port in cluster.procs:
                port = free_port_pair()
            d = root / str(port)
            d.mkdir(parents=True)
            cluster.procs[port] = subprocess.Popen(
                [server, "--bind", "127.0.0.1", "--port", str(port), "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(node_timeout_ms),
                 "--dir", str(d), "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
        for port in cluster.procs:
            for _ in range(50):
                if cluster.run(port, "ping").strip() == "PONG":
                    break
                time.sleep(0.1)
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in cluster.procs), "--cluster-replicas",
             str(replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
            "cluster_state:ok" in cluster.run(p, "cluster", "info") for p in cluster.procs
        ):
            time.sleep(0.1)
        while replicas and time.monotonic() < deadline:  # every replica attached and in sync
            roles = [cluster.run(p, "role").split() for p in cluster.procs]
            if sum(r[:1] == ["slave"] and "connected" in r for r in roles) == primaries * replicas:
                break
            time.sleep(0.1)
        yield cluster
    finally:
        for proc in cluster.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in cluster.procs.values():
            proc.wait(10)
