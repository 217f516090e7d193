"""The Redis coordinator: one campaign's lease, the shared GCRA budgets and the recipient claims.

Keys (``prefix`` is ``pigeon`` unless configured; ``{…}`` is a Redis Cluster hash tag, so every
script touches one slot):

========================================  ===========  ==============================================
key                                       type         holds
========================================  ===========  ==============================================
``<prefix>:lease:{<campaign>}``           hash         token, owner, host, pid, started, ttl, fence;
                                                       expires ``ttl`` after the last renewal
``<prefix>:fence:{<campaign>}``           string       the fencing counter, grown at every take
                                                       (never expires: fences only grow)
``<prefix>:claims:{<campaign>}``          hash         recipient → the worker that claimed it;
                                                       expires ``claim_ttl`` after the last claim
``<prefix>:budget:{<gw>:<carrier>:<lane>}``  string    GCRA's theoretical arrival time (µs, the
                                                       server's clock); expires when drained
``<prefix>:slow:{<gw>:<carrier>:<lane>}``    hash      the budget's share of its rate after a
                                                       receiver's "too fast" (f, at, climb);
                                                       expires once climbed back to 1
``<prefix>:ranges:{<campaign>}``          stream       the segment's byte ranges (group ``workers``)
``<prefix>:progress:{<campaign>}``        hash         range index → ``row|byte`` where it resumes
                                                       (its rows before settled in a ledger)
``<prefix>:caps:{<kind>}:<n>:day:<tz>:<date>``  string  a number's sends of the kind claimed that
                                                       local day; expires at the next midnight
``<prefix>:caps:{<kind>}:<n>:roll:<secs>``  sorted set  its send times (ms) in the rolling period;
                                                       trimmed at each check, expires after it
``<prefix>:caps:{<kind>}:<n>:text:<hash>``  string     a text sent to the number; expires after
                                                       the same-content window
``<prefix>:caps:{<kind>:<s>}:<n>:day:…``  hash         on a Cluster (``cap_shards``, ``s`` = CRC-32 of
                                                       the number mod it): the claims counted that
                                                       day, one field each (their count ``HLEN``)
``<prefix>:caps:{<kind>:<s>}:<n>:roll:…``  sorted set  on a Cluster: as without, in the shard's tag
``<prefix>:caps:{<kind>:<s>}:<n>:text:…``  string     on a Cluster: the claim that sent the text
``<prefix>:optouts:{<campaign>}``         set          recipients opted out while the campaign runs
``<prefix>:optouts-set:<b>``              set          the shared opt-outs (every store's, uploaded at
                                                       start, and those heard anywhere): number key
                                                       ``k`` is member ``k // 100000`` of bucket
                                                       ``b = k % 100000`` (5 digits; an intset); every
                                                       marketing claim and check refuses them
``<prefix>:optouts-set:{optouts:<s>}:<b>``  set        on a Cluster: bucket ``b`` in shard
                                                       ``s = b % optout_shards`` (its hash tag)
``<prefix>:optouts-uploaded``             hash         store (host, path, id) → the sequence number up
                                                       to which its opt-outs were uploaded
``<prefix>:optouts-feed``                 stream       each sharing of opt-outs (``w`` who, ``n`` the
                                                       recipients): ``pigeon serve`` reads it into its
                                                       store; trimmed to ~10,000 entries
``<prefix>:{flows}:…``                    (several)    the flows' shared timer store
                                                       (:mod:`plugins.store_redis.timers`)
========================================  ===========  ==============================================

On a Cluster a claim with caps is three steps (the kind's counters and the campaign's claims are
in different slots, which one script cannot touch): :data:`~plugins.store_redis.scripts.CAP_RESERVE`
on each cap shard the request touches (concurrently) checks and counts its recipients, each count
named by the claim it is for; :data:`~plugins.store_redis.scripts.CLAIM` on the campaign's slot is
given the verdicts; :data:`~plugins.store_redis.scripts.CAP_REFUND` gives back the counts of the
recipients the claim refused. Between the steps the counts are ahead of the claims, never behind:
a crash there holds a number back early, it never lets one through over its cap.

With ``replicas = N`` every call that authorizes a send — the claim script, a Cluster's cap
reservations, the API's check — is sent in one pipeline with ``WAIT N <ms>`` on the same connection
(on a Cluster: a client of the node that owns the key's slot, as redis-py's cluster client has no
``WAIT``): fewer replicas acknowledging in time is :class:`~pigeon.CoordinatorUnavailable`, so
nothing goes on a claim or a cap count a failover could lose.

A name's ``{`` and ``}`` are written ``%7B`` / ``%7D`` so they cannot break the hash tag.
redis-py's client is asyncio-only: run the engine on the asyncio backend with this coordinator.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import math
import os
import secrets
import socket
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import msgspec
import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from engine.state.flowstore import FlowStore
from pigeon import (
    BudgetKey,
    BudgetSpec,
    CampaignBusy,
    CapCheck,
    Claim,
    CoordinatorContext,
    CoordinatorUnavailable,
    LeaseGrant,
    LeaseHolder,
    LeaseLost,
    SegmentRange,
    SlowDown,
    TakenRange,
)
from plugins.store_redis import scripts
from plugins.store_redis.config import RedisConfig

__all__ = ["RedisConfig", "RedisCoordinator", "SharedLeaseBusy", "tag"]

log = logging.getLogger("pigeon.coordination")
T = TypeVar("T")
Arg = str | int


def tag(name: str) -> str:
    """``name`` as a Cluster hash tag's content: its braces escaped."""
    return name.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


_CLAIMS = {0: Claim.TAKEN, 1: Claim.NEW, 2: Claim.MINE, 3: Claim.ADOPTED}
_SEP = "\x1f"
_DIGITS = {48 + int(c): c for c in Claim}
_STANDING = (Claim.MINE, Claim.ADOPTED)
"""Answers whose claim was counted by its first claim (a cap reservation made again is given back)."""
FEED_LENGTH = 10_000
"""About how many entries the opt-outs feed keeps (a reader further behind loses the oldest)."""
UPLOAD_BATCH = 50_000
"""About how many opt-outs one upload script adds (a few tens of ms of Redis's time: others' calls
are not held up long)."""
GROUP = "workers"
"""The consumer group every worker of a campaign reads its ranges stream with."""


def _cap_args(caps: CapCheck) -> list[Arg]:
    """The claim script's cap arguments: now (ms), the same-content window (ms; 0: none) and the
    texts' hashes, then per window its type, limit, bucket and
    expiry (a calendar day: the epoch ms of the next local midnight, plus a minute for clocks a
    little apart; a rolling period: its length in ms)."""
    same = round(caps.same_content * 1000) if caps.contents else 0
    args: list[Arg] = [round(caps.now * 1000), same, _SEP.join(map(str, caps.contents)) if same else ""]
    for w in caps.windows:
        bucket, until = w.bucket(caps.now)
        if bucket.startswith("day:"):
            args += ["d", w.limit, bucket, math.ceil(until * 1000) + 60_000]
        else:
            args += ["r", w.limit, bucket, math.ceil(until * 1000)]
    return args


class SharedLeaseBusy(CampaignBusy):
    """:class:`~pigeon.CampaignBusy` for a lease in Redis: taken over only after its ttl (Redis
    cannot tell whether a process on another host is alive)."""

    def __init__(self, campaign: str, holder: LeaseHolder) -> None:
        super().__init__(campaign, holder)
        self.args = (
            f"campaign {campaign!r} is being sent by {holder.describe()}; nothing was sent. Its lease "
            f"in Redis passes to another worker {holder.ttl:g} s after its holder's last renewal",
        )


class RedisCoordinator:
    """The :class:`~pigeon.Coordinator` on Redis (see the module docstring for its keys)."""

    name = "redis"

    def __init__(self, config: RedisConfig, ctx: CoordinatorContext) -> None:
        self.config = config
        self.worker = ctx.worker
        self.prefix = config.prefix
        self.client: aioredis.Redis | RedisCluster
        if config.cluster:
            self.client = RedisCluster.from_url(
                config.url, socket_timeout=config.timeout, socket_connect_timeout=config.timeout
            )
        else:
            self.client = aioredis.Redis.from_url(
                config.url, socket_timeout=config.timeout, socket_connect_timeout=config.timeout
            )
        reg = self.client.register_script
        self._take = reg(scripts.LEASE_TAKE)
        self._renew = reg(scripts.LEASE_RENEW)
        self._release = reg(scripts.LEASE_RELEASE)
        self._gcra = reg(scripts.GCRA)
        self._slow = reg(scripts.SLOW_DOWN)
        self._claim = reg(scripts.CLAIM)
        self._check = reg(scripts.CHECK)
        self._unclaim = reg(scripts.RELEASE_CLAIMS)
        self._publish = reg(scripts.PUBLISH_RANGES)
        self._renew_range = reg(scripts.RENEW_RANGE)
        self._reserve = reg(scripts.CAP_RESERVE)
        self._refund = reg(scripts.CAP_REFUND)
        self._upload = reg(scripts.OPTOUT_UPLOAD)
        self._optout_check = reg(scripts.OPTOUT_CHECK)
        self._claim_ttl_ms = math.ceil(config.claim_ttl * 1000)
        self._wait_ms = max(1, round(config.replica_timeout * 1000))
        self._nodes: dict[str, aioredis.Redis] = {}
        """On a Cluster with ``replicas``: a client per node (name → client) for script + ``WAIT``."""
        self._stale = False
        """On a Cluster with ``replicas``: a node call failed, refresh the slots before the next."""

    # -- keys ------------------------------------------------------------------------------------

    def lease_key(self, campaign: str) -> str:
        """The campaign's lease hash."""
        return f"{self.prefix}:lease:{{{tag(campaign)}}}"

    def fence_key(self, campaign: str) -> str:
        """The campaign's fencing counter."""
        return f"{self.prefix}:fence:{{{tag(campaign)}}}"

    def claims_key(self, campaign: str) -> str:
        """The campaign's claims hash."""
        return f"{self.prefix}:claims:{{{tag(campaign)}}}"

    def caps_key(self, kind: str) -> str:
        """The base of the kind's cap counters (``<base>:<recipient>:<window bucket>``): shared by
        every campaign of the kind, as the store's send history is."""
        return f"{self.prefix}:caps:{{{tag(kind)}}}"

    def cap_shard_key(self, kind: str, shard: int) -> str:
        """On a Cluster: the base of one shard of the kind's cap counters (its own hash tag)."""
        return f"{self.prefix}:caps:{{{tag(kind)}:{shard}}}"

    def cap_shard(self, recipient: str) -> int:
        """On a Cluster: the shard of the kind's cap counters that holds ``recipient``'s."""
        return zlib.crc32(recipient.encode()) % self.config.cap_shards

    def cap_key(self, kind: str, recipient: str, bucket: str) -> str:
        """The key of ``recipient``'s count in a window's ``bucket`` (``day:<zone>:<date>``,
        ``roll:<seconds>``, ``text:<hash>``), standalone or on a Cluster."""
        if self.config.cluster:
            return f"{self.cap_shard_key(kind, self.cap_shard(recipient))}:{recipient}:{bucket}"
        return f"{self.caps_key(kind)}:{recipient}:{bucket}"

    def optouts_key(self, campaign: str) -> str:
        """Recipients opted out while the campaign runs (the claim script refuses them)."""
        return f"{self.prefix}:optouts:{{{tag(campaign)}}}"

    def shared_optouts_key(self) -> str:
        """The base of the shared opt-outs' buckets (``<base>:<bucket>``) on a standalone Redis:
        every marketing claim and check of every campaign refuses their members."""
        return f"{self.prefix}:optouts-set"

    def optout_shard_key(self, shard: int) -> str:
        """On a Cluster: the base of one shard of the shared opt-outs' buckets (its own hash tag)."""
        return f"{self.prefix}:optouts-set:{{optouts:{shard}}}"

    def legacy_optouts_key(self) -> str:
        """The plain set earlier versions kept the shared opt-outs in (folded into the buckets by
        the first upload, then deleted)."""
        return f"{self.prefix}:optouts-shared"

    def uploaded_key(self) -> str:
        """Store → the sequence number up to which its opt-outs are in the shared buckets."""
        return f"{self.prefix}:optouts-uploaded"

    def _optout_base(self, bucket: int) -> str:
        """The base of the shared opt-outs that holds ``bucket`` (standalone: the one base)."""
        if self.config.cluster:
            return self.optout_shard_key(bucket % self.config.optout_shards)
        return self.shared_optouts_key()

    def _batches(self, keys: Any, batch: int) -> Iterator[tuple[str, bytes]]:
        """Number keys as :data:`~plugins.store_redis.scripts.OPTOUT_UPLOAD` batches of ``batch``
        keys or fewer, each one base's: (base, one line per key — its bucket, then its member
        right-aligned — sorted by bucket). The text is written by numpy, digit by digit, for the
        whole batch at once (10M keys: no 10M ``str`` calls)."""
        arr = np.asarray(keys, dtype=np.int64)
        arr = arr[arr >= scripts.OPTOUT_BUCKETS]  # (a key of five digits or fewer is no number)
        if not arr.size:
            return
        buckets = arr % scripts.OPTOUT_BUCKETS
        shards = buckets % self.config.optout_shards if self.config.cluster else np.zeros_like(buckets)
        order = np.lexsort((buckets, shards))
        buckets, shards, members = buckets[order], shards[order], (arr // scripts.OPTOUT_BUCKETS)[order]
        width = len(str(int(members.max())))
        five = 10 ** np.arange(4, -1, -1, dtype=np.int64)
        powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
        cuts = [0, *(np.flatnonzero(np.diff(shards)) + 1).tolist(), int(arr.size)]
        for lo, hi in itertools.pairwise(cuts):
            base = self._optout_base(int(buckets[lo]))
            for at in range(lo, hi, batch):
                b, m = buckets[at : min(at + batch, hi)], members[at : min(at + batch, hi)]
                text = np.empty((len(b), 5 + 1 + width + 1), dtype=np.uint8)
                text[:, :5] = (b[:, None] // five) % 10 + 48
                text[:, 5] = 32
                digits = (m[:, None] // powers) % 10 + 48
                digits[m[:, None] < powers] = 32  # no leading zeros: an intset takes "138001", not "0138001"
                text[:, 6:-1] = digits
                text[:, -1] = 10
                yield base, text.tobytes()

    async def _add_shared(self, keys: Any, batch: int = UPLOAD_BATCH) -> int:
        """Add number keys to the shared buckets (a script per base and ~``batch`` keys, two in
        flight: the next batch is built while Redis adds the last): how many were new."""
        added = 0
        flying: list[asyncio.Task[Any]] = []
        try:
            for base, lines in self._batches(keys, batch):
                flying.append(asyncio.ensure_future(self._upload(keys=[base], args=[lines])))
                if len(flying) >= 2:
                    added += int(await flying.pop(0))
            while flying:
                added += int(await flying.pop(0))
        finally:
            for task in flying:
                task.cancel()
        return added

    async def _shared_opted(self, recipients: Sequence[str]) -> set[int]:
        """On a Cluster: the indices of ``recipients`` in the shared opt-outs, one
        :data:`~plugins.store_redis.scripts.OPTOUT_CHECK` call per shard the request touches."""
        groups: dict[int, list[int]] = {}
        shards = self.config.optout_shards
        for i, r in enumerate(recipients):
            if len(r) > 5:  # (the script splits the text: its last five digits are the bucket)
                groups.setdefault(int(r[-5:]) % shards if r[-5:].isdigit() else 0, []).append(i)
        if not groups:
            return set()

        async def check() -> list[bytes]:
            calls = [
                self._optout_check(
                    keys=[self.optout_shard_key(s)], args=[_SEP.join(recipients[i] for i in idx)]
                )
                for s, idx in groups.items()
            ]
            return list(await asyncio.gather(*calls))

        opted: set[int] = set()
        for idx, got in zip(groups.values(), await self._call("check shared opt-outs", check), strict=True):
            if len(got) != len(idx):
                raise CoordinatorUnavailable(f"opt-out script answered {len(got)} for {len(idx)} recipients")
            opted.update(i for i, c in zip(idx, got, strict=True) if c == 52)
        return opted

    async def optouts_uploaded(self, source: str) -> int:
        """Up to which sequence number the store ``source`` uploaded its opt-outs (0: never). The
        first call after an upgrade folds the plain set earlier versions kept (``optouts-shared``)
        into the buckets and deletes it."""
        mark, legacy = self.uploaded_key(), self.legacy_optouts_key()

        async def read() -> int:
            async with self.client.pipeline(transaction=False) as pipe:  # one round trip
                pipe.hget(mark, source)
                pipe.exists(legacy)
                got, old = await pipe.execute()
            if old:
                cursor = 0
                while True:
                    cursor, part = await self.client.sscan(legacy, cursor=cursor, count=10_000)
                    await self._add_shared([int(x) for x in part if x.isdigit()])
                    if int(cursor) == 0:
                        break
                await self.client.delete(legacy)
            return int(got) if got is not None else 0

        return await self._call("read the opt-outs uploaded", read)

    async def upload_optouts(
        self, source: str, keys: Sequence[int] | npt.NDArray[np.int64], through: int
    ) -> int:
        """Add number keys to the shared buckets in batches (one script per ~50,000 keys and base),
        then record ``through`` as ``source``'s mark (written last: a start cut off midway uploads
        the same rows again, which adds nothing twice). How many were new to the shared copy."""
        mark = self.uploaded_key()

        async def upload() -> int:
            added = await self._add_shared(keys)
            await self.client.hset(mark, source, str(through))
            return added

        return await self._call("upload opt-outs", upload)

    def optouts_feed_key(self) -> str:
        """The stream of opt-outs shared (who, which recipients): ``pigeon serve`` follows it."""
        return f"{self.prefix}:optouts-feed"

    def _optout_keys(self, campaign: str, shared: bool = True) -> list[str]:
        """The campaign's opt-out set and the shared one (the campaign's again on a Cluster, or when
        the shared one is not to be checked: a transactional campaign)."""
        own = self.optouts_key(campaign)
        return [own, own if self.config.cluster or not shared else self.shared_optouts_key()]

    async def add_optouts(self, campaign: str, recipients: Sequence[str]) -> int:
        """Add to the campaign's opt-out set (expires with its claims) and to the shared buckets
        (every marketing campaign's claims refuse them; number keys only), and tell the feed; how
        many were new to the campaign's set."""
        if not recipients:
            return 0
        key = self.optouts_key(campaign)
        entry = {"w": self.worker, "n": _SEP.join(recipients)}
        numbers = [int(r) for r in recipients if r.isascii() and r.isdigit()]

        async def add() -> int:
            # Shared first, then the campaign's set and the feed (each an add: a retry adds nothing twice).
            await self._add_shared(numbers)
            if self.config.cluster:  # two slots: one command each
                n = int(await self.client.sadd(key, *recipients))
                await self.client.pexpire(key, self._claim_ttl_ms)
                await self.client.xadd(self.optouts_feed_key(), entry, maxlen=FEED_LENGTH, approximate=True)  # type: ignore[arg-type]
                return n
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.sadd(key, *recipients)
                pipe.pexpire(key, self._claim_ttl_ms)
                pipe.xadd(self.optouts_feed_key(), entry, maxlen=FEED_LENGTH, approximate=True)  # type: ignore[arg-type]
                n, *_ = await pipe.execute()
            return int(n)

        return await self._call("add opt-outs", add)

    async def read_optouts(self, after: str, wait: float) -> tuple[str, list[str]]:
        """Opt-outs other workers shared after the feed's entry ``after`` (``$``: from now), waiting
        up to ``wait`` seconds for one: the last entry read (``after`` when none) and the recipients."""
        key = self.optouts_feed_key()
        me = self.worker

        async def read() -> tuple[str, list[str]]:
            got: Any = await self.client.xread({key: after}, count=1000, block=max(1, round(wait * 1000)))
            last, out = after, list[str]()
            for _stream, entries in got or ():
                for entry_id, fields in entries:
                    last = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                    if fields.get(b"w", b"").decode() != me:
                        out += fields.get(b"n", b"").decode().split(_SEP)
            return last, [n for n in out if n]

        return await self._call("read the opt-outs feed", read)

    async def feed_end(self) -> str:
        """The id of the feed's last entry (``0-0`` when empty): read from there to miss nothing later."""
        key = self.optouts_feed_key()

        async def last() -> str:
            info = await self.client.xrevrange(key, count=1)
            if not info:
                return "0-0"
            entry_id = info[0][0]
            return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

        return await self._call("read the opt-outs feed", last)

    def budget_key(self, key: BudgetKey) -> str:
        """The budget's GCRA timestamp."""
        return f"{self.prefix}:budget:{{{tag(key.tag())}}}"

    def slow_key(self, key: BudgetKey) -> str:
        """The budget's slow-down (its share of the rate after a receiver's "too fast"): same hash tag."""
        return f"{self.prefix}:slow:{{{tag(key.tag())}}}"

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except RedisError as exc:
            self._stale = bool(self._nodes)
            raise CoordinatorUnavailable(
                f"redis coordinator ({self.config.url.rsplit('@', 1)[-1]}) could not {what}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    # -- writes a failover cannot lose (replicas = N) ---------------------------------------------

    async def _node(self, key: str) -> aioredis.Redis:
        """The client that sends ``key``'s commands with a ``WAIT`` on the same connection: the
        standalone client, or on a Cluster a client of the primary that owns the key's slot now."""
        client = self.client
        if not isinstance(client, RedisCluster):
            return client
        if self._stale:  # a failover moves slots: ask the Cluster where they are now
            self._stale = False
            await client.nodes_manager.initialize()
        else:
            await client.initialize()
        node = client.get_node_from_key(key)
        if node is None:
            raise CoordinatorUnavailable(f"no node of the Redis Cluster serves {key!r}'s slot")
        got = self._nodes.get(node.name)
        if got is None:
            u = urlsplit(self.config.url)
            auth = u.netloc.rpartition("@")[0]
            netloc = f"{auth + '@' if auth else ''}{node.host}:{node.port}"
            got = aioredis.Redis.from_url(
                urlunsplit((u.scheme, netloc, "/0", u.query, "")),  # (TLS and other options kept)
                socket_timeout=self.config.timeout,
                socket_connect_timeout=self.config.timeout,
            )
            self._nodes[node.name] = got
        return got

    async def _then_wait(self, key: str, command: tuple[Arg, ...], script: AsyncScript | None = None) -> Any:
        """``command`` then ``WAIT replicas replica_timeout`` in one pipeline on one connection (the
        node of ``key``): its answer once that many replicas have it, else
        :class:`~pigeon.CoordinatorUnavailable` (the write stays on the primary unconfirmed: the
        caller asks again and a claim answers MINE). ``script``: loaded on a NOSCRIPT answer."""
        n = self.config.replicas
        client = await self._node(key)
        for attempt in (0, 1):
            async with client.pipeline(transaction=False) as pipe:
                pipe.execute_command(*command)
                pipe.execute_command("WAIT", n, self._wait_ms)
                res, acked = await pipe.execute(raise_on_error=False)
            if isinstance(res, NoScriptError) and script is not None and not attempt:
                await client.script_load(script.script)
                continue
            break
        for answer in (res, acked):
            if isinstance(answer, Exception):
                raise answer
        if int(acked) < n:
            raise CoordinatorUnavailable(
                f"redis coordinator ({self.config.url.rsplit('@', 1)[-1]}): {int(acked)} of {n} replicas "
                f"acknowledged within {self._wait_ms} ms; the claim is not confirmed"
            )
        return res

    async def _script(self, script: AsyncScript, keys: list[str], args: list[Arg]) -> Any:
        """Run a script that authorizes a send; with ``replicas``, answered once replicated."""
        if not self.config.replicas:
            return await script(keys=keys, args=args)
        return await self._then_wait(keys[0], ("EVALSHA", script.sha, len(keys), *keys, *args), script)

    # -- the lease -------------------------------------------------------------------------------

    async def take_lease(self, campaign: str, owner: str, ttl: float) -> LeaseGrant:
        """Take the lease with a new fence; :class:`~pigeon.CampaignBusy` while another holds it."""
        token = secrets.token_hex(16)
        ttl_ms = max(1, math.ceil(ttl * 1000))
        keys = [self.lease_key(campaign), self.fence_key(campaign)]
        args: list[Arg] = [token, owner, socket.gethostname(), os.getpid(), ttl_ms]
        res: list[Any] = await self._call("take the lease", lambda: self._take(keys=keys, args=args))
        if int(res[0]) == 1:
            return LeaseGrant(campaign=campaign, owner=owner, token=token, fence=int(res[1]), ttl=ttl)
        h_owner, host, pid, started, h_ttl, pttl = (
            (x.decode() if isinstance(x, bytes) else x) for x in res[1:]
        )
        ttl_s = int(h_ttl) / 1000
        now = time.time()
        raise SharedLeaseBusy(
            campaign,
            LeaseHolder(
                campaign=campaign,
                owner=h_owner,
                host=host,
                pid=int(pid),
                started_at=float(started),
                heartbeat=now - max(0.0, ttl_s - int(pttl) / 1000),
                ttl=ttl_s,
                alive=True,
            ),
        )

    async def renew_lease(self, grant: LeaseGrant) -> None:
        """Extend the lease by its ttl; :class:`~pigeon.LeaseLost` once it expired or was taken."""
        keys = [self.lease_key(grant.campaign)]
        args: list[Arg] = [grant.token, max(1, math.ceil(grant.ttl * 1000))]
        if not int(await self._call("renew the lease", lambda: self._renew(keys=keys, args=args))):
            raise LeaseLost(f"the lease on campaign {grant.campaign!r} (fence {grant.fence}) is lost")

    async def release_lease(self, grant: LeaseGrant) -> bool:
        """Delete the lease if it is still this grant's."""
        keys = [self.lease_key(grant.campaign)]
        return bool(
            int(await self._call("release the lease", lambda: self._release(keys=keys, args=[grant.token])))
        )

    async def holds(self, grant: LeaseGrant) -> bool:
        """Whether the lease is this grant's, with its fence."""
        key = self.lease_key(grant.campaign)
        token, fence = await self._call("read the lease", lambda: self.client.hmget(key, ["token", "fence"]))
        return token == grant.token.encode() and fence is not None and int(fence) == grant.fence

    # -- budgets ---------------------------------------------------------------------------------

    async def charge(self, key: BudgetKey, spec: BudgetSpec, parts: int) -> float:
        """Book ``parts`` on the shared GCRA, or say how long to wait (nothing booked)."""
        if not 1 <= parts <= spec.burst:
            raise ValueError(
                f"a request of {parts} parts does not fit the budget's burst ({spec.burst}): split it"
            )
        keys = [self.budget_key(key), self.slow_key(key)]
        args: list[Arg] = [f"{spec.interval * 1e6:.3f}", f"{spec.tolerance * 1e6:.3f}", parts]
        wait_us = int(await self._call("charge a budget", lambda: self._gcra(keys=keys, args=args)))
        return wait_us / 1e6

    async def slow_down(self, key: BudgetKey, spec: BudgetSpec, slow: SlowDown) -> tuple[float, bool]:
        """The receiver said "too fast": cut the shared budget's rate for every worker (at most
        once per ``slow.hold``), then let it climb back: its share of the
        rate now, and whether this call cut it."""
        keys = [self.slow_key(key)]
        args: list[Arg] = [
            f"{slow.factor:.6f}",
            f"{slow.floor:.6f}",
            f"{slow.climb / 1e6:.12f}",
            math.ceil(slow.hold * 1e6),
        ]
        answer = await self._call("slow a budget down", lambda: self._slow(keys=keys, args=args))
        share = float(answer)  # negative: held (cut by another answer less than a hold ago)
        return abs(share), share > 0

    # -- claims ----------------------------------------------------------------------------------

    async def claim(
        self,
        campaign: str,
        recipients: Sequence[str],
        *,
        tags: Sequence[str] | None = None,
        adopt: str = "",
        caps: CapCheck | None = None,
        optouts: bool = True,
    ) -> list[Claim]:
        """Claim the request's recipients in one script: NEW, MINE (this worker's, same tag),
        ADOPTED (the dead worker ``adopt``'s), TAKEN, OPTED_OUT (the campaign's opt-out set and,
        with ``optouts`` — a marketing campaign — the shared one) — or, with ``caps``, CAPPED and
        SAME_CONTENT (checked and counted in the same script; on a Cluster in three steps, see
        :meth:`_claim_on_cluster`)."""
        if not recipients:
            return []
        if tags is not None and len(tags) != len(recipients):
            raise ValueError("one tag per recipient")
        joined, tagged = _SEP.join(recipients), _SEP.join(tags) if tags is not None else ""
        for what, items, text in (("recipient", recipients, joined), ("tag", tags, tagged)):
            if items is not None and ("" in items or text.count(_SEP) != len(items) - 1):
                raise ValueError(f"a {what} is empty or holds \\x1f")
        if caps is not None and caps.contents and len(caps.contents) != len(recipients):
            raise ValueError("one text hash per recipient")
        if self.config.cluster and optouts:  # the shared opt-outs live in their own slots: first
            opted = await self._shared_opted(recipients)
            if opted:
                return await self._claim_rest(campaign, recipients, opted, tags, adopt, caps)
        keys = [self.claims_key(campaign), *self._optout_keys(campaign, optouts)]
        args: list[Arg] = [self.worker, self._claim_ttl_ms, adopt, joined, tagged]
        if caps is not None and (caps.windows or (caps.same_content > 0 and caps.contents)):
            if self.config.cluster:
                return await self._claim_on_cluster(campaign, recipients, tags, keys, args, caps)
            keys.append(self.caps_key(caps.kind))
            args += _cap_args(caps)
        res: bytes = await self._call("claim recipients", lambda: self._script(self._claim, keys, args))
        return self._answers(res, recipients)

    async def _claim_rest(
        self,
        campaign: str,
        recipients: Sequence[str],
        opted: set[int],
        tags: Sequence[str] | None,
        adopt: str,
        caps: CapCheck | None,
    ) -> list[Claim]:
        """On a Cluster: ``opted`` (in the shared opt-outs) answer OPTED_OUT, unclaimed and
        uncounted; the others are claimed as usual (the campaign's own set still checked)."""
        rest = [i for i in range(len(recipients)) if i not in opted]
        answers = [Claim.OPTED_OUT] * len(recipients)
        if not rest:
            return answers
        sub_caps = caps
        if caps is not None and caps.contents:
            sub_caps = dataclasses.replace(caps, contents=tuple(caps.contents[i] for i in rest))
        got = await self.claim(
            campaign,
            [recipients[i] for i in rest],
            tags=[tags[i] for i in rest] if tags is not None else None,
            adopt=adopt,
            caps=sub_caps,
            optouts=False,
        )
        for i, a in zip(rest, got, strict=True):
            answers[i] = a
        return answers

    @staticmethod
    def _answers(res: bytes, recipients: Sequence[str]) -> list[Claim]:
        if len(res) != len(recipients):
            raise CoordinatorUnavailable(f"claim script answered {len(res)} for {len(recipients)} recipients")
        if res.count(49) == len(res):  # every one new: no per-recipient lookup
            return [Claim.NEW] * len(res)
        return [_DIGITS[b] for b in res]

    async def _claim_on_cluster(
        self,
        campaign: str,
        recipients: Sequence[str],
        tags: Sequence[str] | None,
        keys: list[str],
        args: list[Arg],
        caps: CapCheck,
    ) -> list[Claim]:
        """A claim with caps on a Cluster, where the kind's counters and the campaign's claims live
        in different slots: (1) :data:`~plugins.store_redis.scripts.CAP_RESERVE` on every cap
        shard the request touches, concurrently (one call per shard, never per recipient), checks
        and counts the recipients — each count named by its claim (campaign, worker, row), so a
        retry counts nothing twice; (2) the claim script, given the verdicts; (3)
        :data:`~plugins.store_redis.scripts.CAP_REFUND` gives back the counts of recipients the
        claim refused (TAKEN, OPTED_OUT) and what (1) newly counted for a claim that was already
        this worker's or is adopted (its first claim counted it). The counts lead the claims:
        a crash (or Redis) between the steps leaves a number counted without a claim — held back
        early — never claimed without its count."""
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(recipients):
            groups.setdefault(self.cap_shard(r), []).append(i)
        window_args = _cap_args(caps)
        now, same, windows = window_args[0], window_args[1], window_args[3:]
        head: list[Arg] = [self.claims_key(campaign), self.worker]

        def shard_args(idx: list[int], extra: str) -> list[Arg]:
            texts = _SEP.join(str(caps.contents[i]) for i in idx) if same else ""
            joined_tags = _SEP.join(tags[i] for i in idx) if tags is not None else ""
            return [
                *head,
                _SEP.join(recipients[i] for i in idx),
                joined_tags,
                now,
                same,
                texts,
                extra,
                *windows,
            ]

        async def reserve() -> list[list[int]]:
            calls = [
                self._script(self._reserve, [self.cap_shard_key(caps.kind, s)], shard_args(idx, ""))
                for s, idx in groups.items()
            ]
            return list(await asyncio.gather(*calls))

        masks = [0] * len(recipients)
        for idx, got in zip(groups.values(), await self._call("check caps", reserve), strict=True):
            if len(got) != len(idx):
                raise CoordinatorUnavailable(f"cap script answered {len(got)} for {len(idx)} recipients")
            for i, m in zip(idx, got, strict=True):
                masks[i] = int(m)
        verdicts = "".join("5" if m == -5 else "6" if m == -6 else "1" for m in masks)
        args += ["v", verdicts]
        res: bytes = await self._call("claim recipients", lambda: self._script(self._claim, keys, args))
        answers = self._answers(res, recipients)
        full = (1 << (len(caps.windows) + 1)) - 1
        back: dict[int, list[tuple[int, int]]] = {}
        for i, (a, m) in enumerate(zip(answers, masks, strict=True)):
            give = (
                full
                if a in (Claim.TAKEN, Claim.OPTED_OUT) and m >= 0
                else m
                if a in _STANDING and m > 0
                else 0
            )
            if give:
                back.setdefault(self.cap_shard(recipients[i]), []).append((i, give))
        if back:

            async def refund() -> None:
                await asyncio.gather(
                    *(
                        self._refund(
                            keys=[self.cap_shard_key(caps.kind, s)],
                            args=shard_args([i for i, _ in gives], _SEP.join(str(g) for _, g in gives)),
                        )
                        for s, gives in back.items()
                    )
                )

            try:
                await self._call("give back cap counts", refund)
            except CoordinatorUnavailable as exc:  # counted a little early: never over the cap
                log.warning(
                    "cap counts of %d refused claims not given back (held back early): %s",
                    sum(map(len, back.values())),
                    exc,
                    extra={"event": "coordinator.caps_not_refunded"},
                )
        return answers

    async def check(
        self,
        campaign: str,
        recipients: Sequence[str],
        *,
        tags: Sequence[str],
        caps: CapCheck | None = None,
        optouts: bool = True,
    ) -> list[Claim]:
        """Check one request of messages that keep no claim (API messages): OPTED_OUT (with
        ``optouts``: the campaign's or the shared opt-out set), CAPPED, SAME_CONTENT or NEW — each
        NEW counted in the caps' windows, in the same script (on a Cluster: the campaign's opt-out
        set first, then :data:`~plugins.store_redis.scripts.CAP_RESERVE` on the cap shards for the
        others — nothing to give back, as no claim follows)."""
        if not recipients:
            return []
        if len(tags) != len(recipients):
            raise ValueError("one tag per recipient")
        joined, tagged = _SEP.join(recipients), _SEP.join(tags)
        for what, items, text in (("recipient", recipients, joined), ("tag", tags, tagged)):
            if "" in items or text.count(_SEP) != len(items) - 1:
                raise ValueError(f"a {what} is empty or holds \\x1f")
        if caps is not None and caps.contents and len(caps.contents) != len(recipients):
            raise ValueError("one text hash per recipient")
        counted = caps is not None and (caps.windows or (caps.same_content > 0 and caps.contents))
        if self.config.cluster:
            return await self._check_on_cluster(
                campaign, recipients, tags, caps if counted else None, optouts
            )
        keys = self._optout_keys(campaign, optouts)
        args: list[Arg] = [self.worker, "1" if optouts else "0", "", joined, tagged]
        if caps is not None and counted:
            keys.append(self.caps_key(caps.kind))
            args += _cap_args(caps)
        res: bytes = await self._call("check recipients", lambda: self._script(self._check, keys, args))
        return self._answers(res, recipients)

    async def _check_on_cluster(
        self,
        campaign: str,
        recipients: Sequence[str],
        tags: Sequence[str],
        caps: CapCheck | None,
        optouts: bool,
    ) -> list[Claim]:
        """:meth:`check` on a Cluster: the campaign's opt-out set (one slot) and the shared opt-outs
        (one call per shard touched), then the caps of the others, one reservation call per cap
        shard touched."""
        answers = [Claim.NEW] * len(recipients)
        if optouts:
            key = self.optouts_key(campaign)
            if self.config.replicas:  # answered once a replica is there and has this connection's writes
                command: tuple[Arg, ...] = ("SMISMEMBER", key, *recipients)
                found = await self._call("check opt-outs", lambda: self._then_wait(key, command))
            else:
                found = await self._call(
                    "check opt-outs", lambda: self.client.smismember(key, list(recipients))
                )
            for i, hit in enumerate(found):
                if int(hit):
                    answers[i] = Claim.OPTED_OUT
            for i in await self._shared_opted(recipients):
                answers[i] = Claim.OPTED_OUT
        if caps is None:
            return answers
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(recipients):
            if answers[i] is Claim.NEW:
                groups.setdefault(self.cap_shard(r), []).append(i)
        if not groups:
            return answers
        window_args = _cap_args(caps)
        now, same, windows = window_args[0], window_args[1], window_args[3:]

        def shard_args(idx: list[int]) -> list[Arg]:
            return [
                self.claims_key(campaign),
                self.worker,
                _SEP.join(recipients[i] for i in idx),
                _SEP.join(tags[i] for i in idx),
                now,
                same,
                _SEP.join(str(caps.contents[i]) for i in idx) if same else "",
                "",
                *windows,
            ]

        async def reserve() -> list[list[int]]:
            calls = [
                self._script(self._reserve, [self.cap_shard_key(caps.kind, s)], shard_args(idx))
                for s, idx in groups.items()
            ]
            return list(await asyncio.gather(*calls))

        for idx, got in zip(groups.values(), await self._call("check caps", reserve), strict=True):
            if len(got) != len(idx):
                raise CoordinatorUnavailable(f"cap script answered {len(got)} for {len(idx)} recipients")
            for i, m in zip(idx, got, strict=True):
                if int(m) == -5:
                    answers[i] = Claim.CAPPED
                elif int(m) == -6:
                    answers[i] = Claim.SAME_CONTENT
        return answers

    async def release_claims(self, campaign: str, recipients: Sequence[str]) -> int:
        """Give back this worker's claims on ``recipients``."""
        if not recipients:
            return 0
        keys = [self.claims_key(campaign)]
        args: list[Arg] = [self.worker, *recipients]
        return int(await self._call("release claims", lambda: self._unclaim(keys=keys, args=args)))

    # -- the ranges of a campaign's segment (pigeon worker) -----------------------------------------

    def ranges_key(self, campaign: str) -> str:
        """The campaign's ranges stream (consumer group ``workers``)."""
        return f"{self.prefix}:ranges:{{{tag(campaign)}}}"

    def published_key(self, campaign: str) -> str:
        """Set once the ranges are published: the campaign's meta (JSON)."""
        return f"{self.prefix}:published:{{{tag(campaign)}}}"

    def done_key(self, campaign: str) -> str:
        """Range index → the worker that finished it and its rows (``worker|rows``)."""
        return f"{self.prefix}:done:{{{tag(campaign)}}}"

    def progress_key(self, campaign: str) -> str:
        """Range index → where it resumes (``row|byte``): its rows before are settled in the ledger
        of the worker that held it."""
        return f"{self.prefix}:progress:{{{tag(campaign)}}}"

    def workers_key(self, campaign: str) -> str:
        """Worker → its last heartbeat (JSON figures)."""
        return f"{self.prefix}:workers:{{{tag(campaign)}}}"

    async def publish_ranges(self, campaign: str, parts: Sequence[SegmentRange], meta: bytes) -> int:
        """Publish the ranges once, atomically: how many, 0 when published before."""
        keys = [self.ranges_key(campaign), self.published_key(campaign)]
        args: list[Arg] = [GROUP, meta.decode(), *(msgspec.json.encode(p).decode() for p in parts)]
        return int(await self._call("publish ranges", lambda: self._publish(keys=keys, args=args)))

    async def _taken(self, campaign: str, entry: Any, previous: str) -> TakenRange:
        eid, fields = entry
        raw = fields.get(b"r") or fields.get("r")
        part = msgspec.json.decode(raw, type=SegmentRange)
        row = at = 0
        mark = await self.client.hget(self.progress_key(campaign), str(part.index))
        if mark:
            row_s, at_s = (mark.decode() if isinstance(mark, bytes) else str(mark)).split("|")
            row, at = int(row_s), int(at_s)
        return TakenRange(
            entry=eid.decode() if isinstance(eid, bytes) else str(eid),
            part=part,
            previous=previous,
            resume_row=row,
            resume_at=at,
        )

    async def take_range(self, campaign: str, *, idle: float) -> TakenRange | None:
        """A range held before a restart, a fresh one, or one idle for ``idle`` s (reclaimed)."""
        key, me = self.ranges_key(campaign), self.worker

        async def take() -> TakenRange | None:
            client = self.client
            for start, previous in (("0", me), (">", "")):  # own pending first, then new ones
                got: Any = await client.xreadgroup(GROUP, me, {key: start}, count=1)
                for _stream, entries in got or ():
                    for entry in entries:
                        if entry[1]:  # (a pending entry deleted meanwhile has no fields)
                            return await self._taken(campaign, entry, previous)
            pending = await client.xpending_range(
                key, GROUP, min="-", max="+", count=20, idle=int(idle * 1000)
            )
            for p in pending:
                owner = p["consumer"].decode() if isinstance(p["consumer"], bytes) else str(p["consumer"])
                if owner == me:
                    continue
                claimed = await client.xclaim(key, GROUP, me, int(idle * 1000), [p["message_id"]])
                if claimed and claimed[0][1]:
                    return await self._taken(campaign, claimed[0], owner)
            return None

        return await self._call("take a range", take)

    async def renew_range(
        self, campaign: str, entry: str, *, progress: tuple[int, int, int] | None = None
    ) -> bool:
        """Reset the range's idle time while this worker holds it; False once another reclaimed it.
        ``progress`` (range index, next row, its first byte): record where the range resumes, in
        the same script (only forward; only while this worker holds it)."""
        keys = [self.ranges_key(campaign), self.progress_key(campaign)]
        args: list[Arg] = [GROUP, self.worker, entry, *(progress or ())]
        return bool(int(await self._call("renew a range", lambda: self._renew_range(keys=keys, args=args))))

    async def range_done(self, campaign: str, taken: TakenRange, rows: int) -> None:
        """Ack the range and record who finished it."""
        key, done = self.ranges_key(campaign), self.done_key(campaign)

        async def ack() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.xack(key, GROUP, taken.entry)
                pipe.hset(done, str(taken.part.index), f"{self.worker}|{rows}")
                pipe.hdel(self.progress_key(campaign), str(taken.part.index))
                await pipe.execute()

        await self._call("ack a range", ack)

    async def heartbeat(self, campaign: str, stats: dict[str, float]) -> None:
        """Record this worker's figures (and when) for ``pigeon status``."""
        body = msgspec.json.encode({**stats, "at": time.time()}).decode()
        key = self.workers_key(campaign)
        await self._call("beat", lambda: self.client.hset(key, self.worker, body))

    async def queue_state(self, campaign: str) -> dict[str, Any]:
        """Ranges published, done (by worker) and held now (by worker), and each worker's figures."""
        c = self.client

        async def read() -> dict[str, Any]:
            meta = await c.get(self.published_key(campaign))
            if meta is None:
                return {"published": False}
            done: dict[Any, Any] = await c.hgetall(self.done_key(campaign))
            workers: dict[Any, Any] = await c.hgetall(self.workers_key(campaign))
            held: dict[str, int] = {}
            summary = await c.xpending(self.ranges_key(campaign), GROUP)
            for row in summary.get("consumers") or ():
                name = row["name"].decode() if isinstance(row["name"], bytes) else str(row["name"])
                held[name] = int(row["pending"])
            by_worker: dict[str, dict[str, int]] = {}
            for value in done.values():
                who, rows = value.decode().rsplit("|", 1)
                entry = by_worker.setdefault(who, {"ranges": 0, "rows": 0})
                entry["ranges"] += 1
                entry["rows"] += int(rows)
            return {
                "published": True,
                "meta": msgspec.json.decode(meta),
                "ranges_done": len(done),
                "done_by": by_worker,
                "held_by": held,
                "workers": {k.decode(): msgspec.json.decode(v) for k, v in workers.items()},
            }

        return await self._call("read the queue", read)

    def flow_store(self, host: str, lease: float) -> FlowStore:
        """The flows' shared timer store (``[service.flows] store = "redis"``) on this client, as
        ``host`` (:mod:`plugins.store_redis.timers`)."""
        from plugins.store_redis.timers import RedisFlowStore

        return RedisFlowStore(self.client, self.prefix, host, lease, self._call)

    async def aclose(self) -> None:
        """Close the connection pools."""
        for node in self._nodes.values():
            await node.aclose()
        await self.client.aclose()
