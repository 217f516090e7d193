"""Keeps a coordinator lease alive: renews it every third of its ttl and says when it is lost."""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

from engine.coordination.contract import Coordinator, CoordinatorUnavailable, LeaseGrant, LeaseLost

__all__ = ["LeaseKeeper"]


class LeaseKeeper:
    """Renews ``grant`` on ``coordinator`` every ``ttl / 3`` seconds while :meth:`run` runs.

    The lease counts as lost — :attr:`lost` set, :attr:`lost_event` fired, ``on_lost`` called once —
    when a renewal says so (:class:`LeaseLost`), or when the store has not confirmed a renewal for a
    whole ttl (:class:`CoordinatorUnavailable` meanwhile): by then another worker may hold it, so a
    worker that cannot prove it still holds the lease stops as if it had lost it.
    """

    def __init__(
        self,
        coordinator: Coordinator,
        grant: LeaseGrant,
        *,
        on_lost: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.coordinator = coordinator
        self.grant = grant
        self.on_lost = on_lost
        self.clock = clock
        self.lost = ""
        """Why the lease is lost ("" while held)."""
        self.lost_event = anyio.Event()
        self.renewals = 0

    def _lose(self, why: str) -> None:
        if not self.lost:
            self.lost = why
            self.lost_event.set()
            if self.on_lost is not None:
                self.on_lost(why)

    async def run(self) -> None:
        """Renew until cancelled or lost (then return)."""
        ttl = self.grant.ttl
        confirmed = self.clock()  # the take confirmed it
        while True:
            await anyio.sleep(ttl / 3)
            try:
                await self.coordinator.renew_lease(self.grant)
            except LeaseLost as exc:
                self._lose(str(exc))
                return
            except CoordinatorUnavailable as exc:
                if self.clock() - confirmed >= ttl:
                    self._lose(f"no renewal confirmed for {ttl:g} s: {exc}")
                    return
                continue
            confirmed = self.clock()
            self.renewals += 1
