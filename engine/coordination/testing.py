"""The contract every coordinator keeps, as one check a plugin's tests run (``pigeon.testing``)."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from engine.coordination.contract import BudgetKey, BudgetSpec, Claim, Coordinator
from engine.state.ledger.lease import CampaignBusy
from engine.state.ledger.records import LeaseLost

__all__ = ["check_coordinator"]


async def check_coordinator(make: Callable[[], Coordinator], *, shared: bool = True) -> None:
    """Check the coordinator contract on two coordinators ``make()`` builds (two workers).

    The lease excludes the second worker (:class:`CampaignBusy`), renews, releases only with its own
    grant, and its fence grows at every take; a budget books a whole request or says how long to
    wait; claims answer NEW, then MINE for the owner; with ``shared`` (the workers share a store:
    not the embedded coordinator, whose claims are per process) the other worker's claims are
    TAKEN and it cannot give them back. Uses campaign and budget names of its own; closes both.
    """
    a, b = make(), make()
    campaign = f"check-{secrets.token_hex(4)}"
    try:
        assert isinstance(a.name, str), "a coordinator's name is a str"
        assert a.name, "a coordinator needs a name"
        grant = await a.take_lease(campaign, "check", 30.0)
        assert grant.campaign == campaign, "the grant names another campaign"
        assert grant.fence >= 1, "fences start at 1"
        assert grant.ttl == 30.0, "the grant's ttl is the one asked for"
        try:
            await b.take_lease(campaign, "check", 30.0)
        except CampaignBusy:
            pass
        else:
            raise AssertionError("a second worker took a held lease")
        await a.renew_lease(grant)
        assert await a.holds(grant), "the holder does not hold its lease"
        assert await b.holds(grant), "another worker does not see the lease"
        assert await a.release_lease(grant)
        assert not await a.holds(grant)
        second = await b.take_lease(campaign, "check", 30.0)
        assert second.fence > grant.fence, "the fence must grow at every take"
        assert not await a.release_lease(grant), "an old grant released a newer lease"
        try:
            await a.renew_lease(grant)
        except LeaseLost:
            pass
        else:
            raise AssertionError("an old grant renewed a newer lease")
        assert await b.release_lease(second)

        spec = BudgetSpec(rate=1000, burst=100)
        key = BudgetKey(campaign, "cm", "bulk")
        assert await a.charge(key, spec, 100) == 0.0, "an empty budget refused a request"
        waits = [await a.charge(key, spec, 100) for _ in range(20)]
        assert any(w > 0 for w in waits), "20 requests of 100 parts at once all fit 1000 parts/s"
        assert all(0 <= w <= spec.window * 2 for w in waits)

        assert await a.claim(campaign, ["r1", "r2"]) == [Claim.NEW, Claim.NEW]
        assert await a.claim(campaign, ["r2", "r3"]) == [Claim.MINE, Claim.NEW]
        if shared:
            assert await b.claim(campaign, ["r1", "r4"]) == [Claim.TAKEN, Claim.NEW]
            assert await b.release_claims(campaign, ["r1", "r4"]) == 1, "a worker gave back another's claim"
            assert await b.claim(campaign, ["r4"]) == [Claim.NEW]
        assert await a.release_claims(campaign, ["r1"]) == 1
        assert await a.claim(campaign, ["r1"]) == [Claim.NEW]
    finally:
        await a.aclose()
        await b.aclose()
