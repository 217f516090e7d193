"""A key prefix of one test on the shared test Redis, its keys deleted after; skipped (failed under
``PIGEON_REQUIRE_REDIS``) when no Redis answers; and a test's own ``redis-server``."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

WORKERS_URL = os.environ.get("PIGEON_TEST_REDIS_URL", "redis://127.0.0.1:6379/12")
"""The Redis of the worker, range and coordinated-send tests (DB 12 unless ``PIGEON_TEST_REDIS_URL``)."""


def scoped_prefix(url: str) -> Iterator[str]:
    """Yield a fresh key prefix on ``url`` for one test; delete its keys afterwards."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        client.ping()
    except redis.RedisError as exc:
        hint = f"no Redis answers at {url} ({exc}): apt-get install redis-server, or run .ci/run"
        if os.environ.get("PIGEON_REQUIRE_REDIS"):
            pytest.fail(hint)
        pytest.skip(hint)
    p = f"pigeon-test-{secrets.token_hex(4)}"
    yield p
    keys = list(client.scan_iter(match=f"{p}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def own_redis(server: str, port: int, data: Path, *, fsync: str = "always") -> subprocess.Popen[bytes]:
    """A test's own ``redis-server`` on loopback ``port`` with AOF in ``data`` (``appendfsync fsync``),
    answering PING when returned (a test SIGKILLs and restarts it on the same port and files)."""
    proc = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data), "--save", "",
         "--appendonly", "yes", "--appendfsync", fsync],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    try:
        for _ in range(100):
            try:
                if client.ping():
                    break
            except redis.RedisError:
                time.sleep(0.05)
    finally:
        client.close()
    return proc
