"""``pigeon send --coordinator redis://…``: worker processes sharing claims and rate budgets in a real Redis.

Each worker is a ``pigeon send`` subprocess with a store of its own (as on its own host) over the
same campaign and segment, sending to one HTTP simulator; the simulator's log is the judge.
asyncio only: redis-py's client is asyncio-only (docs/scale-out.md says how trio users run it).
``PIGEON_TEST_REDIS_URL`` picks the shared Redis (default DB 12 on 127.0.0.1:6379); each test uses a
key prefix of its own and deletes its keys. The Redis-down test starts a redis-server of its own
on a free loopback port.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("redis")

import redis

from engine.state.ledger.records import LedgerState
from engine.state.ledger.store import Ledger
from loadtests.simulator import SimConfig, SimulatorThread
from tests.integration.crash_harness import check_ledger_against_log, files, segment, start
from tests.integration.redis_cluster import local_cluster
from tests.integration.redis_prefix import WORKERS_URL, scoped_prefix

URL = WORKERS_URL
RATE = 2000
"""China Mobile's budget, parts per second, for all workers together."""


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix on the test Redis; skipped (failed under PIGEON_REQUIRE_REDIS) when none answers."""
    yield from scoped_prefix(URL)


def _worker_dir(root: Path, name: str, port: int, seg: Path, coordinator: str) -> Path:
    """A worker's directory: its own store, the shared campaign over a copy of the segment."""
    d = root / name
    d.mkdir()
    shutil.copy(seg, d / "seg.csv")
    files(
        d,
        port,
        store=d / "pigeon.db",
        gateway="in_flight = 4",
        max_batch=100,
        cm=f"rate_per_second = {RATE}",
        extra=coordinator,
    )
    return d


def _coordinator(url: str, prefix: str, timeout: float = 5.0) -> str:
    return f"""[coordinator]
plugin = "redis"
margin = 0.05
[coordinator.options]
url = "{url}"
prefix = "{prefix}"
timeout = {timeout}
"""


def test_three_workers_share_claims_and_the_carrier_rate(tmp_path: Path, prefix: str) -> None:
    rows = 6000
    eligible, dups = segment(tmp_path / "seg.csv", rows)
    with SimulatorThread(SimConfig()) as sim:
        dirs = [
            _worker_dir(tmp_path, f"w{i}", sim.port, tmp_path / "seg.csv", _coordinator(URL, prefix))
            for i in range(3)
        ]
        procs = [start(["send", str(d / "campaign.toml")], d) for d in dirs]
        outs = [p.communicate(timeout=120) for p in procs]
        for p, (_, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err
        peak = sim.max_arrived_parts_per_second()
        log = list(sim.log)
    received = Counter(to for _, _, to, _, _ in log)
    twice = [n for n, c in received.items() if c > 1]
    assert not twice, f"{len(twice)} recipients received more than once"
    assert len(received) == len(eligible), "every eligible recipient received"
    assert peak["cm"] <= RATE, f"the workers together sent {peak['cm']} parts in one second"
    # Every eligible row: sent by exactly one worker, recorded claimed_elsewhere by the others.
    sent_by: list[set[int]] = []
    for d in dirs:
        ledger = Ledger(d / "pigeon.db")
        try:
            sent = set(ledger.rows_in("crash", LedgerState.SUBMITTED).tolist())
            suppressed = set(ledger.rows_in("crash", LedgerState.SUPPRESSED).tolist())
            counts = ledger.counts("crash")
            open_rows = ledger.rows_in(
                "crash", LedgerState.PENDING, LedgerState.SUBMITTING, LedgerState.UNKNOWN
            )
        finally:
            ledger.close()
        assert not set(open_rows.tolist()) & set(range(2, rows + 2)), "every row ends in a final state"
        assert counts.total == rows
        assert suppressed == dups | (eligible - sent)
        assert counts.reasons["suppressed"] == {
            "duplicate": len(dups),
            **({"claimed_elsewhere": len(eligible - sent)} if eligible - sent else {}),
        }
        sent_by.append(sent)
    assert sum(map(len, sent_by)) == len(eligible) == len(set().union(*sent_by))
    assert sum(1 for s in sent_by if s) >= 2, "the workers sent side by side"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_server(port: int, data: Path) -> subprocess.Popen[bytes]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--dir",
            str(data),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.RedisError:
            time.sleep(0.05)
    client.close()
    return proc


def test_a_redis_restart_pauses_sending_and_nobody_goes_twice_or_missing(tmp_path: Path) -> None:
    pytest.importorskip("redis")
    rows = 8000
    eligible, dups = segment(tmp_path / "seg.csv", rows)
    port = _free_port()
    data = tmp_path / "redis"
    data.mkdir()
    server = _redis_server(port, data)
    try:
        with SimulatorThread(SimConfig()) as sim:
            d = _worker_dir(
                tmp_path,
                "w",
                sim.port,
                tmp_path / "seg.csv",
                _coordinator(f"redis://127.0.0.1:{port}/0", "p", 1.0),
            )
            proc = start(["send", str(d / "campaign.toml")], d)
            deadline = time.monotonic() + 60
            while len(sim.log) < 1500 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert proc.poll() is None, "the run ended before Redis was stopped"
            server.send_signal(signal.SIGKILL)
            server.wait()
            time.sleep(0.5)  # requests claimed and booked before the kill may still arrive
            at_kill = len(sim.log)
            time.sleep(2.0)
            assert len(sim.log) == at_kill, "messages went while Redis was down"
            assert proc.poll() is None, "the run must pause, not stop, while Redis is down"
            server = _redis_server(port, data)  # the same files: AOF brings the claims back
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        assert "unreachable" in err and "paused" in err
        assert "sending resumed" in err
        assert at_kill < len(eligible)
        check_ledger_against_log(d / "pigeon.db", sim, eligible, rows, dups)
        assert Counter(to for _, _, to, _, _ in sim.log).most_common(1)[0][1] == 1
        assert len(sim.log) == len(eligible)
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize(("key", "value"), [("daily_limit", "100"), ("spend_cap", "10.0")])
def test_limits_counted_by_one_hosts_ledger_are_refused_with_a_shared_coordinator(
    tmp_path: Path, key: str, value: str
) -> None:
    """A daily limit or a spend cap would be counted by each host's own ledger: with a coordinator
    that shares the campaign among hosts, the campaign is refused before anything starts."""
    from engine.core.errors import ConfigError
    from engine.run.plan import prepare
    from engine.run.send import check_coordinator

    campaign = files(tmp_path, 9, store=tmp_path / "pigeon.db", extra=_coordinator(URL, "p17:refused"))
    campaign.write_text(campaign.read_text(encoding="utf-8") + f"{key} = {value}\n", encoding="utf-8")
    (tmp_path / "seg.csv").write_text("phone,name,coupon\n13800138000,客,5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"policy\.{key}: .*one host's ledger.*leave {key} out"):
        check_coordinator(prepare(campaign), "asyncio", 1)


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A 3-primary Redis Cluster of this module's own on loopback."""
    with local_cluster(tmp_path_factory.mktemp("cluster")) as nodes:
        yield nodes.url


@pytest.mark.parametrize("where", ["redis", "cluster"])
@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ('windows = [{ limit = 1, period = "calendar_day" }]', "capped"),
        ('same_content = "1h"', "same_content"),
    ],
)
def test_two_campaigns_on_two_workers_share_a_cap(
    tmp_path: Path, prefix: str, rule: str, reason: str, where: str, request: pytest.FixtureRequest
) -> None:
    """Two ``pigeon send --coordinator`` processes (each its own store, as on two hosts) send two
    marketing campaigns (the same texts) over overlapping segments at once under ``limit = 1,
    calendar_day`` — or a same-content window of an hour: every number reaches the simulator at
    most once; each overlapping row is sent by one worker and recorded ``suppressed`` with the
    rule's reason by the other. On one Redis and on a Redis Cluster (``cluster = true``: the caps
    in three steps there)."""
    coordinator = _coordinator(URL, prefix)
    if where == "cluster":
        coordinator = _coordinator(request.getfixturevalue("cluster_url"), prefix) + "cluster = true\n"
    spans = {"a": range(1500), "b": range(500, 2000)}  # 1,000 numbers in both
    with SimulatorThread(SimConfig()) as sim:
        dirs = []
        for name, span in spans.items():
            d = tmp_path / name
            d.mkdir()
            (d / "seg.csv").write_text(
                "phone,name,coupon\n" + "".join(f"138{i:08d},客,20\n" for i in span), encoding="utf-8"
            )
            files(d, sim.port, store=d / "pigeon.db", max_batch=100, extra=coordinator)
            engine = d / "engine.toml"
            engine.write_text(
                engine.read_text("utf-8").replace('windows = [{ limit = 1, period = "calendar_day" }]', rule)
            )
            campaign = d / "campaign.toml"
            campaign.write_text(campaign.read_text("utf-8").replace('id = "crash"', f'id = "cap-{name}"'))
            dirs.append(d)
        procs = [start(["send", str(d / "campaign.toml")], d) for d in dirs]
        outs = [p.communicate(timeout=60) for p in procs]
        for p, (_, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err
        log = list(sim.log)
    received = Counter(to for _, _, to, _, _ in log)
    assert not [n for n, c in received.items() if c > 1], "a number received twice"
    assert len(received) == 2000, "every number received once"
    capped_total = 0
    for d, (name, span) in zip(dirs, spans.items(), strict=True):
        ledger = Ledger(d / "pigeon.db")
        try:
            counts = ledger.counts(f"cap-{name}")
            sent = set(ledger.rows_in(f"cap-{name}", LedgerState.SUBMITTED).tolist())
            capped = set(ledger.rows_in(f"cap-{name}", LedgerState.SUPPRESSED).tolist())
        finally:
            ledger.close()
        assert counts.total == len(span)
        assert sent | capped == set(range(2, len(span) + 2)) and not sent & capped
        assert counts.reasons.get("suppressed", {}) == ({reason: len(capped)} if capped else {})
        capped_total += len(capped)
    assert capped_total == 1000, "each overlapping number sent by one worker, held back at the other"


@pytest.mark.parametrize("share", [True, False])
def test_an_opt_out_in_one_workers_store_before_start_stops_another_workers_sends(
    tmp_path: Path, prefix: str, share: bool
) -> None:
    """Worker A's store holds 300 opt-outs nobody shared (imported, say); A starts (a one-row run
    of the campaign), which uploads them; then worker B, whose store has none, sends the segment:
    none of the 300 arrive, B records them ``suppressed``, ``opted_out``. With
    ``share_store_optouts = false`` on A (the control) they arrive."""
    from engine.state.store import OptOutRecord
    from engine.state.store.sqlite import SqliteStore

    rows = 3000
    eligible, dups = segment(tmp_path / "seg.csv", rows)
    opted_rows = sorted(r for r in eligible if r >= 50 and r + 3 not in dups)[:300]
    opted = {f"138{r - 2:08d}" for r in opted_rows}
    coordinator = _coordinator(URL, prefix)
    if not share:
        coordinator = coordinator.replace("[coordinator]\n", "[coordinator]\nshare_store_optouts = false\n")
    with SimulatorThread(SimConfig()) as sim:
        a = tmp_path / "a"
        a.mkdir()
        (a / "seg.csv").write_text("phone,name,coupon\n13999999999,甲,1\n", encoding="utf-8")
        files(a, sim.port, store=a / "pigeon.db", extra=coordinator)
        store = SqliteStore(a / "pigeon.db")
        store.add_optouts([OptOutRecord(f"+86{n}", "import") for n in sorted(opted)])
        store.close()
        done = start(["send", str(a / "campaign.toml")], a, quiet=False)
        out, err = done.communicate(timeout=120)
        assert done.returncode == 0, err
        assert ("300 of this store's uploaded" in out + err) is share
        b = _worker_dir(tmp_path, "b", sim.port, tmp_path / "seg.csv", coordinator)
        proc = start(["send", str(b / "campaign.toml")], b)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        log = list(sim.log)
    received = Counter(to for _, _, to, _, _ in log)
    assert max(received.values()) == 1
    arrived = {n for n in opted if any(n in str(to) for to in received)}
    ledger = Ledger(b / "pigeon.db")
    try:
        reasons = ledger.counts("crash").reasons["suppressed"]
    finally:
        ledger.close()
    if share:
        assert not arrived, f"{len(arrived)} opted-out numbers of A's store were sent by B"
        assert reasons.get("opted_out") == 300
        assert len(received) == len(eligible) - 300 + 1
    else:
        assert arrived == opted, "the control: without the upload B sends them"
        assert "opted_out" not in reasons
