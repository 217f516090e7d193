"""The ``redis`` coordinator's options (importable without the ``redis`` package)."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["RedisConfig"]


class RedisConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[coordinator] plugin = "redis"`` options."""

    url: str = "redis://127.0.0.1:6379/0"
    """Where Redis 7 (or Valkey) listens: ``redis://[user:password@]host:port/db``, ``rediss://`` for TLS."""
    cluster: bool = False
    """``url`` names one node of a Redis Cluster: the client follows the slots (every script's keys
    share one hash tag, so each runs on one node)."""
    cap_shards: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 4
    """With ``cluster = true``: the kind's frequency-cap and same-content counters are spread over
    this many hash tags (``{<kind>:<n>}``, a CRC-32 of the number modulo it), so they do not all
    load one Cluster node; a request's recipients are checked in one script call per tag it
    touches. Every worker of a deployment must use the same value (another value reads other
    keys: the counts start again)."""
    optout_shards: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 4
    """With ``cluster = true``: the shared opt-outs' buckets are spread over this many hash tags
    (``{optouts:<n>}``, the bucket modulo it); a marketing request's recipients are checked in one
    script call per tag it touches, before its claim. Every worker must use the same value."""
    prefix: str = "pigeon"
    """Every key starts ``<prefix>:``: several deployments can share one Redis."""
    claim_ttl: Annotated[float, msgspec.Meta(gt=0)] = 14 * 86400.0
    """Seconds a campaign's claims outlive its last claim (longer than any campaign runs)."""
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    """Seconds to wait for an answer before :class:`~pigeon.CoordinatorUnavailable`."""
    replicas: Annotated[int, msgspec.Meta(ge=0, le=16)] = 0
    """Writes a failover cannot lose: every call that authorizes a send (a claim, a Cluster's cap
    reservation, the API's opt-out and cap check) is followed by ``WAIT <replicas> <ms>`` on the
    same connection (on a Cluster: on the node that owns the key's slot), and is answered only once
    that many replicas have it; fewer within ``replica_timeout``: the call fails with
    :class:`~pigeon.CoordinatorUnavailable` (the lane pauses and asks again; nothing is sent
    without a replicated claim). 0: no wait (a failover may lose the last acknowledged claims)."""
    replica_timeout: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    """Seconds ``WAIT`` gives the replicas to acknowledge (keep it below ``timeout``)."""
