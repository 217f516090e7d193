"""What every gateway on the session core shares: the engine's Gateway contract over a BindPool."""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from pigeon import MessageBatch, SubmitResult
from plugins.session_core.backoff import Backoff
from plugins.session_core.metrics import BindCollector
from plugins.session_core.pool import BindPool, Sink
from plugins.session_core.stats import LinkStats

__all__ = ["BinaryGateway"]


class BinaryGateway:
    """A :class:`~engine.sending.gateway.Gateway` whose messages go over the binds of a :class:`BindPool`.

    Besides ``send``/``aclose`` it offers what a host that keeps it alive uses (the service):
    :meth:`attach` (where receipts and MO replies go) and :meth:`serve` (keep the binds up and
    read them between sends); :attr:`bind_stats` feeds the per-bind metrics.
    """

    def __init__(
        self, name: str, pool: BindPool, *, max_batch: int, idempotent: bool, receipt_wait: float = 0.0
    ) -> None:
        self.name = name
        self.pool = pool
        self.max_batch = max_batch
        self.idempotent = idempotent
        self.receipt_wait = receipt_wait
        """Seconds a run waits at its end for the receipts still due (0: none asked for, or none)."""

    @staticmethod
    def backoff(base: float, cap: float) -> Backoff:
        """The reconnect backoff of the binds."""
        return Backoff(base, max(base, cap))

    async def send(self, batch: MessageBatch) -> Sequence[SubmitResult]:
        """Submit ``batch`` over the binds; one result per message."""
        return await self.pool.send(batch)

    def attach(self, sink: Sink) -> None:
        """Hand delivery reports and MO replies to ``sink`` (``reports``/``replies`` coroutines)."""
        self.pool.attach(sink)

    async def serve(self) -> None:
        """Keep every bind up and read it until cancelled."""
        await self.pool.serve()

    @property
    def receipts_awaited(self) -> int:
        """Messages accepted whose final delivery receipt has not come yet."""
        return self.pool.correlator.awaiting

    async def wait_receipts(self, seconds: float | None = None) -> int:
        """After a run's last submit: keep the binds read until every message accepted has its final
        receipt, or ``seconds`` (default: the ``receipt_wait`` option) have passed. Returns how many
        are still without one (their recipients stay ``submitted``).

        Binds lost meanwhile are opened again (an SMSC hands pending receipts to any bind of the
        account); the receipts read are handed to the attached sink as they come.
        """
        wait = self.receipt_wait if seconds is None else seconds
        pool = self.pool
        if wait > 0 and pool.correlator.awaiting:
            with anyio.move_on_after(wait):
                async with anyio.create_task_group() as tg:
                    for link in pool.links:
                        tg.start_soon(link.serve)
                    while pool.correlator.awaiting:
                        await pool.reported()
                    tg.cancel_scope.cancel()
        await pool.flush_inbound()
        return pool.correlator.awaiting

    @property
    def bind_stats(self) -> dict[str, LinkStats]:
        """Each bind's counters, by bind name (``<gateway>#<n>``)."""
        return {link.name: link.stats for link in self.pool.links}

    def window_occupancy(self) -> dict[str, tuple[int, int]]:
        """Each bind's requests in flight and window size."""
        return {link.name: (link.in_flight, link.settings.window) for link in self.pool.links}

    def metrics_collector(self) -> BindCollector:
        """A Prometheus collector of the per-bind metrics (:mod:`plugins.session_core.metrics`)."""

        def binds() -> dict[str, tuple[LinkStats, int, int]]:
            return {
                str(i): (link.stats, link.in_flight, link.settings.window)
                for i, link in enumerate(self.pool.links)
            }

        return BindCollector(self.name, binds)

    async def aclose(self) -> None:
        """Unbind every bind; hand over receipts still parked."""
        await self.pool.aclose()
