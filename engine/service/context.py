"""What the service's parts share: its config and clock, records, metrics, counters, store and ledger."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.core.clock import Clock
from engine.core.config import EngineConfig, LoadedEngine
from engine.core.service_config import ServiceConfig
from engine.observability.metrics import Metrics
from engine.service.records import ApiRecords
from engine.state.ledger.store import Ledger
from engine.state.optout import OptOutSet
from engine.state.store.sqlite import SqliteStore

__all__ = ["ServiceContext"]


@dataclass(eq=False)
class ServiceContext:
    """Shared by :class:`~engine.service.core.Service` and its parts; the store and the ledger are
    set when the service starts (``None`` before), the opt-out set is replaced by the stored one."""

    engine: LoadedEngine
    clock: Clock
    metrics: Metrics
    records: ApiRecords = field(default_factory=ApiRecords)
    counters: Counter[str] = field(default_factory=Counter)
    """What happened since start: messages accepted, reports, replies, opt-outs… (for logs)."""
    optouts: OptOutSet = field(default_factory=OptOutSet)
    store: SqliteStore | None = None
    ledger: Ledger | None = None
    """The loop's ledger connection (it spins on a busy database instead of sleeping)."""
    draining: bool = False
    pending_callbacks: dict[str, Any] = field(default_factory=dict)
    """Message id → where its gateway's answer is to be told (:class:`~engine.service.callbacks.Pending`),
    for the messages with a callback URL that are in the lanes."""
    callbacks_on: bool = False
    """Status callbacks are configured (``service.callbacks.secret_env`` set)."""

    @property
    def config(self) -> EngineConfig:
        """The engine file's config."""
        return self.engine.config

    @property
    def service(self) -> ServiceConfig:
        """Its ``[service]`` section."""
        return self.engine.config.service

    def path(self, p: str) -> Path:
        """``p`` from the engine file, relative to its directory unless absolute."""
        path = Path(p).expanduser()
        return path if path.is_absolute() else self.engine.base_dir / path
