"""Fixtures the service's integration tests share: the webhook secret, a gateway simulator, the JSON log."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from engine.observability.jsonlog import JsonFormatter
from loadtests.simulator import SimConfig, Simulator, SimulatorThread
from tests.integration.service_harness import SECRET


@pytest.fixture(autouse=True)
def _webhook_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The env var the harness's engine file names for its webhook secret (``secret_env``)."""
    monkeypatch.setenv("PIGEON_TEST_WEBHOOK_SECRET", SECRET)


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    """An HTTP gateway simulator on loopback with the default config."""
    with SimulatorThread(SimConfig()) as sim:
        yield sim


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    """What the service logs, as the JSON lines ``pigeon serve`` writes."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("pigeon")
    root.addHandler(handler)
    old = root.level
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
