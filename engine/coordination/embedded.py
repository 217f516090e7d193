"""The embedded coordinator: one host's lease (the ledger's SQLite row), in-process budgets and claims.

The default when no ``[coordinator]`` is configured. Its lease is the very row ``pigeon send``
takes in the store's ``ledger_leases`` table, so a run and a coordinator holder exclude each other;
the fence is a counter in ``coordination_fences`` of the same file, grown in the transaction that
takes the lease. Budgets are :class:`~engine.sending.ratelimit.SlidingWindowLimiter`\\ s and claims
a set per campaign, both in this process only: right for one process, meaningless across hosts.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from engine.coordination.contract import (
    BudgetKey,
    BudgetSpec,
    CapCheck,
    Claim,
    CoordinatorContext,
    LeaseGrant,
    LeaseLost,
)
from engine.sending.ratelimit import SlidingWindowLimiter
from engine.state.ledger.lease import _take_lease
from engine.state.ledger.store import Ledger

__all__ = ["EmbeddedCoordinator"]

_FENCES: Final = (
    "CREATE TABLE IF NOT EXISTS coordination_fences (campaign TEXT PRIMARY KEY, fence INTEGER NOT NULL)"
)


class EmbeddedCoordinator:
    """One host's coordinator (see the module docstring)."""

    name = "embedded"

    def __init__(self, ctx: CoordinatorContext) -> None:
        if ctx.store_path is None:
            raise ValueError("the embedded coordinator keeps its lease in the store: give store_path")
        self.path = Path(ctx.store_path)
        self.worker = ctx.worker
        self.clock = ctx.clock
        Ledger(self.path).close()  # the ledger's tables, ledger_leases among them
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self.db.execute(_FENCES)
        self._limiters: dict[BudgetKey, tuple[BudgetSpec, SlidingWindowLimiter]] = {}
        self._claims: dict[str, dict[str, str]] = {}

    # -- the lease -----------------------------------------------------------------------------

    async def take_lease(self, campaign: str, owner: str, ttl: float) -> LeaseGrant:
        """Take the ledger's lease row and grow the fence, in one transaction."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            token = _take_lease(db, campaign, owner, ttl, "", time.time())
            (fence,) = db.execute(
                "INSERT INTO coordination_fences VALUES (?, 1) "
                "ON CONFLICT (campaign) DO UPDATE SET fence = fence + 1 RETURNING fence",
                (campaign,),
            ).fetchone()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return LeaseGrant(campaign=campaign, owner=owner, token=token, fence=int(fence), ttl=ttl)

    async def renew_lease(self, grant: LeaseGrant) -> None:
        """Beat the heartbeat, if the lease is still this grant's and has not expired."""
        now = time.time()
        cur = self.db.execute(
            "UPDATE ledger_leases SET heartbeat = ? WHERE campaign = ? AND token = ? AND heartbeat > ?",
            (now, grant.campaign, grant.token, now - grant.ttl),
        )
        if cur.rowcount == 0:
            raise LeaseLost(f"the lease on campaign {grant.campaign!r} (fence {grant.fence}) is lost")

    async def release_lease(self, grant: LeaseGrant) -> bool:
        """Delete the lease row if it is still this grant's."""
        cur = self.db.execute(
            "DELETE FROM ledger_leases WHERE campaign = ? AND token = ?", (grant.campaign, grant.token)
        )
        return cur.rowcount > 0

    async def holds(self, grant: LeaseGrant) -> bool:
        """This grant's token and fence are current and its heartbeat younger than its ttl."""
        row = self.db.execute(
            "SELECT l.token, l.heartbeat, f.fence FROM ledger_leases l "
            "JOIN coordination_fences f USING (campaign) WHERE campaign = ?",
            (grant.campaign,),
        ).fetchone()
        if row is None:
            return False
        token, heartbeat, fence = row
        return bool(token == grant.token and fence == grant.fence and time.time() - heartbeat < grant.ttl)

    # -- budgets ---------------------------------------------------------------------------------

    async def charge(self, key: BudgetKey, spec: BudgetSpec, parts: int) -> float:
        """Book ``parts`` on this process's limiter for ``key``, or say how long to wait."""
        spec.check(parts)
        held = self._limiters.get(key)
        if held is None or held[0] != spec:
            held = (spec, SlidingWindowLimiter(spec.rate, spec.window, spec.margin))
            self._limiters[key] = held
        limiter = held[1]
        now = self.clock()
        at = limiter.earliest(now, parts)
        if at <= now:
            limiter.done(limiter.take(now, parts), now)  # charged from now for one window
            return 0.0
        return at - now if math.isfinite(at) else spec.window

    # -- claims ------------------------------------------------------------------------------------

    async def claim(
        self,
        campaign: str,
        recipients: Sequence[str],
        *,
        tags: Sequence[str] | None = None,
        adopt: str = "",
        caps: CapCheck | None = None,
    ) -> list[Claim]:
        """Every recipient is this process's: NEW the first time, MINE after (TAKEN under another tag).
        ``caps`` is ignored: one process counts its caps itself (the ``cap`` stage)."""
        held = self._claims.setdefault(campaign, {})
        out: list[Claim] = []
        for i, r in enumerate(recipients):
            tag = tags[i] if tags is not None else ""
            cur = held.get(r)
            if cur is None:
                held[r] = tag
                out.append(Claim.NEW)
            else:
                out.append(Claim.MINE if cur == tag else Claim.TAKEN)
        return out

    async def release_claims(self, campaign: str, recipients: Sequence[str]) -> int:
        """Forget the claims."""
        held = self._claims.get(campaign, {})
        return sum(held.pop(r, None) is not None for r in recipients)

    async def aclose(self) -> None:
        """Close the store connection."""
        self.db.close()
