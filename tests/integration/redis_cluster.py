"""A Redis Cluster of our own on loopback for a test (loadtests/_cluster.py), skipped without redis-server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from loadtests._cluster import ClusterMissing, LocalCluster, free_port_pair, local_cluster as _local_cluster

__all__ = ["LocalCluster", "free_port_pair", "local_cluster"]


@contextmanager
def local_cluster(
    root: Path, *, primaries: int = 3, replicas: int = 0, node_timeout_ms: int = 15_000
) -> Iterator[LocalCluster]:
    """:func:`loadtests._cluster.local_cluster`; skipped (failed under ``PIGEON_REQUIRE_REDIS``)
    when redis-server or redis-cli is missing."""
    try:
        cm = _local_cluster(root, primaries=primaries, replicas=replicas, node_timeout_ms=node_timeout_ms)
        cluster = cm.__enter__()
    except ClusterMissing as exc:
        if os.environ.get("PIGEON_REQUIRE_REDIS"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    try:
        yield cluster
    finally:
        cm.__exit__(None, None, None)
