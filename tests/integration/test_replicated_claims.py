"""``replicas = 1``: a claim (and a Cluster's cap count) is answered only once a replica has it.

Real redis-server processes of the test's own on loopback: a primary and its replica (no
persistence), and a Cluster of 3 primaries + 3 replicas (loadtests/_cluster.py). A replica is
SIGSTOPped to hold its acknowledgements back; a failover is forced with ``REPLICAOF NO ONE`` (the
primary SIGKILLed) or ``CLUSTER FAILOVER FORCE``. asyncio only: redis-py's client is asyncio-only.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("redis")

import redis
from redis.crc import key_slot

from engine.coordination.contract import CapCheck, Claim, CoordinatorContext, CoordinatorUnavailable
from engine.state.caps import CapWindow
from loadtests.simulator import SimConfig, SimulatorThread
from plugins.store_redis.config import RedisConfig
from plugins.store_redis.coordinator import RedisCoordinator
from tests.integration.crash_harness import check_ledger_against_log, files, segment, start
from tests.integration.redis_cluster import LocalCluster, free_port_pair, local_cluster

asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])
"""The async tests: asyncio only (redis-py)."""

WAIT_S = 0.3
"""``replica_timeout`` in these tests."""


class Pair:
    """A primary and its replica, redis-server processes of the test's own."""

    def __init__(self, root: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed")
        self.exe, self.root = exe, root
        self.primary_port, self.replica_port = free_port_pair(), free_port_pair()
        while self.replica_port == self.primary_port:
            self.replica_port = free_port_pair()
        self.primary = self._start(self.primary_port)
        self.replica = self._start(self.replica_port, "--replicaof", "127.0.0.1", str(self.primary_port))
        self.wait_in_sync()

    def _start(self, port: int, *extra: str) -> subprocess.Popen[bytes]:
        d = self.root / str(port)
        d.mkdir()
        proc = subprocess.Popen(
            [self.exe, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(d), "--save", "",
             "--appendonly", "no", "--repl-diskless-sync-delay", "0", *extra],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=port, socket_connect_timeout=0.2)
        try:
            for _ in range(100):
                try:
                    client.ping()
                    break
                except redis.RedisError:
                    time.sleep(0.05)
        finally:
            client.close()
        return proc

    def wait_in_sync(self) -> None:
        """Until the replica's link to the primary is up."""
        with redis.Redis(port=self.replica_port) as r:
            for _ in range(200):
                if r.info("replication").get("master_link_status") == "up":
                    return
                time.sleep(0.05)
        raise AssertionError("the replica never synced")

    @property
    def url(self) -> str:
        """The primary's URL."""
        return f"redis://127.0.0.1:{self.primary_port}/0"

    def on_replica(self, key: str) -> set[str]:
        """The fields of the hash ``key`` as the replica holds it."""
        with redis.Redis(port=self.replica_port) as r:
            return {k.decode() for k in r.hkeys(key)}

    def stop(self) -> None:
        """Stop every process left."""
        for proc in (self.primary, self.replica):
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait(10)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    """A primary and a replica on loopback."""
    p = Pair(tmp_path)
    try:
        yield p
    finally:
        p.stop()


def _numbers(start: int, n: int) -> list[str]:
    return [f"86139{i:08d}" for i in range(start, start + n)]


@pytest.mark.anyio
@asyncio_only
async def test_with_one_replica_a_claim_is_on_the_replica_when_the_call_returns(pair: Pair) -> None:
    c = RedisCoordinator(
        RedisConfig(url=pair.url, replicas=1, replica_timeout=2.0, timeout=3.0), CoordinatorContext()
    )
    try:
        day = CapCheck("marketing", (CapWindow(1, "calendar_day"),), time.time())
        claimed: set[str] = set()
        for i in range(20):
            numbers = _numbers(i * 100, 100)
            assert await c.claim("spring", numbers, caps=day) == [Claim.NEW] * 100
            claimed |= set(numbers)
            assert pair.on_replica(c.claims_key("spring")) == claimed  # read right after the answer
        # A replica paused for 0.15 s (< replica_timeout): the answer waits for it, then it is there.
        pair.replica.send_signal(signal.SIGSTOP)
        resume = threading.Timer(0.15, pair.replica.send_signal, (signal.SIGCONT,))
        t0 = time.monotonic()
        resume.start()
        numbers = _numbers(5000, 100)
        assert await c.claim("spring", numbers, caps=day) == [Claim.NEW] * 100
        assert time.monotonic() - t0 >= 0.15, "answered before the replica had the claim"
        resume.join()
        assert set(numbers) <= pair.on_replica(c.claims_key("spring"))
        # The API's check (no claim kept) counts its cap the same way: on the replica when it returns.
        assert await c.check("api", ["8613000000001"], tags=["m1"], caps=day) == [Claim.NEW]
        with redis.Redis(port=pair.replica_port) as r:
            assert r.exists(c.cap_key("marketing", "8613000000001", day.windows[0].bucket(day.now)[0]))
    finally:
        await c.aclose()


@pytest.mark.anyio
@asyncio_only
async def test_a_stopped_replica_makes_the_claim_unavailable_and_it_is_confirmed_once_back(
    pair: Pair,
) -> None:
    on = RedisCoordinator(
        RedisConfig(url=pair.url, replicas=1, replica_timeout=WAIT_S, timeout=2.0), CoordinatorContext("w1")
    )
    off = RedisCoordinator(RedisConfig(url=pair.url, timeout=2.0), CoordinatorContext("w2"))
    try:
        pair.replica.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(CoordinatorUnavailable, match="0 of 1 replicas"):
            await on.claim("c", _numbers(0, 50))
        assert WAIT_S * 0.9 <= time.monotonic() - t0 < 1.5, "WAIT gave the replica replica_timeout"
        with pytest.raises(CoordinatorUnavailable):
            await on.check("c", ["8613000000001"], tags=["m1"])
        # Without replicas the same claim is answered at once (from the primary alone).
        assert await off.claim("c", _numbers(100, 50)) == [Claim.NEW] * 50
        pair.replica.send_signal(signal.SIGCONT)
        # Asked again, the unconfirmed claim is this worker's (MINE) and now on the replica.
        assert await on.claim("c", _numbers(0, 50)) == [Claim.MINE] * 50
        assert set(_numbers(0, 50)) <= pair.on_replica(on.claims_key("c"))
    finally:
        pair.replica.send_signal(signal.SIGCONT)
        await on.aclose()
        await off.aclose()


async def _claims_then_failover(pair: Pair, replicas: int) -> tuple[set[str], int, set[str]]:
    """20 claim calls of 50 numbers; after the 10th the replica is SIGSTOPped and cut off (the
    primary drops its link: what follows is not sent to it); after the 20th the primary is
    SIGKILLed, the replica resumed and promoted (REPLICAOF NO ONE). The numbers acknowledged, the
    calls refused, and the claims the promoted node holds."""
    c = RedisCoordinator(
        # 1 s, not WAIT_S: beside the suite on 2 cores a healthy replica's acknowledgement took
        # over 300 ms in one CI run (2 of the 10 calls before the cut refused)
        RedisConfig(url=pair.url, replicas=replicas, replica_timeout=1.0, timeout=3.0),
        CoordinatorContext(),
    )
    acked: set[str] = set()
    refused = 0
    try:
        for i in range(20):
            if i == 10:
                pair.replica.send_signal(signal.SIGSTOP)
                with redis.Redis(port=pair.primary_port) as r:
                    assert r.client_kill_filter(_type="replica") == 1
            numbers = _numbers(i * 50, 50)
            try:
                assert await c.claim("fo", numbers) == [Claim.NEW] * 50
                acked |= set(numbers)
            except CoordinatorUnavailable:
                refused += 1
        key = c.claims_key("fo")
    finally:
        await c.aclose()
    pair.primary.kill()
    pair.primary.wait(10)
    pair.replica.send_signal(signal.SIGCONT)
    with redis.Redis(port=pair.replica_port) as r:
        r.replicaof("NO", "ONE")
    return acked, refused, pair.on_replica(key)


@pytest.mark.anyio
@asyncio_only
async def test_a_forced_failover_loses_no_acknowledged_claim_with_one_replica(pair: Pair) -> None:
    acked, refused, promoted = await _claims_then_failover(pair, 1)
    assert len(acked) == 500 and refused == 10, "the calls after the cut were refused, not answered"
    assert acked - promoted == set(), "the promoted replica has every acknowledged claim"


@pytest.mark.anyio
@asyncio_only
async def test_a_forced_failover_loses_acknowledged_claims_without_replicas(pair: Pair) -> None:
    acked, refused, promoted = await _claims_then_failover(pair, 0)
    assert len(acked) == 1000 and refused == 0
    assert len(acked - promoted) == 500, "the claims acknowledged after the cut are lost"


def test_a_stopped_replica_pauses_pigeon_send_and_nobody_goes_twice_or_missing(
    pair: Pair, tmp_path: Path
) -> None:
    rows = 8000
    eligible, dups = segment(tmp_path / "seg.csv", rows)
    with SimulatorThread(SimConfig()) as sim:
        d = tmp_path / "w"
        d.mkdir()
        shutil.copy(tmp_path / "seg.csv", d / "seg.csv")
        files(
            d,
            sim.port,
            store=d / "pigeon.db",
            gateway="in_flight = 4",
            max_batch=100,
            cm="rate_per_second = 2000",
            extra=(
                f'[coordinator]\nplugin = "redis"\nmargin = 0.05\n[coordinator.options]\nurl = "{pair.url}"\n'
                f'prefix = "p"\ntimeout = 1.0\nreplicas = 1\nreplica_timeout = {WAIT_S}\n'
            ),
        )
        proc = start(["send", str(d / "campaign.toml")], d)
        try:
            deadline = time.monotonic() + 60
            while len(sim.log) < 1500 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert proc.poll() is None, "the run ended before the replica was stopped"
            pair.replica.send_signal(signal.SIGSTOP)
            time.sleep(0.5 + WAIT_S)  # requests claimed and confirmed before may still arrive
            at_stop = len(sim.log)
            time.sleep(2.0)
            assert len(sim.log) == at_stop, "messages went on claims no replica confirmed"
            assert proc.poll() is None, "the run must pause, not stop, while no replica answers"
            pair.replica.send_signal(signal.SIGCONT)
            _, err = proc.communicate(timeout=120)
        finally:
            pair.replica.send_signal(signal.SIGCONT)
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, err
        assert "replicas acknowledged" in err and "paused" in err
        assert at_stop < len(eligible)
        check_ledger_against_log(d / "pigeon.db", sim, eligible, rows, dups)
        assert Counter(to for _, _, to, _, _ in sim.log).most_common(1)[0][1] == 1
        assert len(sim.log) == len(eligible)


# -- a Cluster: script + WAIT on the node that owns the slot ------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """3 primaries + 3 replicas of our own (cluster-node-timeout 1,000 ms)."""
    with local_cluster(tmp_path_factory.mktemp("cluster"), replicas=1, node_timeout_ms=1000) as nodes:
        yield nodes


def _replica_of(cluster: LocalCluster, primary: int) -> int:
    """The port of the live replica of the primary on ``primary``."""
    lines = [ln.split() for ln in cluster.run(primary, "cluster", "nodes").splitlines()]
    pid = next(p[0] for p in lines if int(p[1].split(":")[1].split("@")[0]) == primary)
    for p in lines:
        if "slave" in p[2] and p[3] == pid and "fail" not in p[2]:
            return int(p[1].split(":")[1].split("@")[0])
    raise LookupError(f"no replica of {primary}")


def _hkeys(port: int, key: str) -> set[str]:
    with redis.Redis(port=port) as r:
        r.execute_command("READONLY")
        return {k.decode() for k in r.hkeys(key)}


@pytest.mark.anyio
@asyncio_only
async def test_on_a_cluster_claims_and_cap_counts_are_on_the_replicas_and_survive_a_forced_failover(
    cluster: LocalCluster,
) -> None:
    c = RedisCoordinator(
        RedisConfig(
            # 1 s, not WAIT_S: six redis-servers beside the suite on 2 cores can take 300 ms to answer
            url=cluster.url,
            cluster=True,
            prefix="rep",
            replicas=1,
            replica_timeout=1.0,
            timeout=3.0,
        ),
        CoordinatorContext(),
    )
    day = CapCheck("marketing", (CapWindow(1, "calendar_day"),), time.time())
    bucket = day.windows[0].bucket(day.now)[0]
    key = c.claims_key("clu")
    slot = key_slot(key.encode())
    try:
        primary = cluster.primary_of(slot)
        replica = _replica_of(cluster, primary)
        claimed: set[str] = set()
        for i in range(5):
            numbers = _numbers(i * 100, 100)
            assert await c.claim("clu", numbers, caps=day) == [Claim.NEW] * 100
            claimed |= set(numbers)
            assert _hkeys(replica, key) == claimed  # the claim, on the slot's replica at once
        for n in _numbers(0, 100):  # the cap counts (three steps: other slots), on their replicas
            ck = c.cap_key("marketing", n, bucket)
            assert _hkeys(_replica_of(cluster, cluster.primary_of(key_slot(ck.encode()))), ck), n
        # A stopped replica: the claim is refused (not confirmed), nothing answered NEW.
        cluster.procs[replica].send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(CoordinatorUnavailable, match="0 of 1 replicas"):
                await c.claim("clu", _numbers(900, 10), caps=day)
        finally:
            cluster.procs[replica].send_signal(signal.SIGCONT)
        # (the resumed replica back in step before the next claim: on a busy machine its link can
        # take longer than replica_timeout to catch up, which would refuse the claim below)
        assert cluster.run(primary, "wait", "1", "10000").strip() == "1", "the replica did not come back"
        # Claims, then at once a forced failover: the promoted node has every acknowledged claim,
        # and the same coordinator carries on on the new primary (the slots asked again).
        numbers = _numbers(500, 100)
        assert await c.claim("clu", numbers, caps=day) == [Claim.NEW] * 100
        claimed |= set(numbers)
        assert cluster.run(replica, "cluster", "failover", "force").strip() == "OK"
        for _ in range(300):  # up to 15 s
            if cluster.primary_of(slot, ask=replica) == replica:
                break
            await asyncio.sleep(0.05)
        assert cluster.primary_of(slot, ask=replica) == replica, "the replica was not promoted"
        assert claimed - _hkeys(replica, key) == set(), "the promoted node has every acknowledged claim"
        more = _numbers(600, 50)
        got: list[Claim] | None = None
        for _ in range(40):
            try:
                got = await c.claim("clu", more, caps=day)
                break
            except CoordinatorUnavailable:  # the old primary answers MOVED, or its link is resyncing
                await asyncio.sleep(0.1)
        assert got == [Claim.NEW] * 50
        assert set(more) <= _hkeys(primary, key), "confirmed by the old primary, now the replica"
    finally:
        await c.aclose()
