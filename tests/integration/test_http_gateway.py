"""The ``http`` gateway against the simulator on loopback, on both event loops: every fault ends recorded."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.core.clock import SystemClock
from engine.run.blast import _send
from engine.run.plan import new_run_dir, prepare
from loadtests.simulator import SimConfig, Simulator, SimulatorThread

pytestmark = pytest.mark.anyio

ROWS = 30


@pytest.fixture
def segment(write: Callable[[str, str | bytes], Path]) -> Path:
    return write(
        "seg.csv", "phone,name,coupon\n" + "".join(f"1380013{i:04d},客{i},20\n" for i in range(ROWS))
    )


def _engine(
    tmp_path: Path,
    port: int,
    *,
    options: str = "",
    carriers: str = "",
    backup: int | None = None,
    gateway: str = "",
    max_batch: int = 7,
    top: str = "",
    max_attempts: int = 3,
) -> None:
    backup_section = (
        f"""
[gateways.backup]
plugin = "http"
breaker_cooldown = 0.05
[gateways.backup.options]
url = "http://127.0.0.1:{backup}/send"
max_batch = 7
"""
        if backup
        else ""
    )
    (tmp_path / "engine.toml").write_text(
        f"""{top}
[retry]
max_attempts = {max_attempts}
base = 0.01
cap = 0.05
[gateways.sim]
plugin = "http"
breaker_cooldown = 0.05
{gateway}
[gateways.sim.options]
url = "http://127.0.0.1:{port}/send"
max_batch = {max_batch}
{options}
{backup_section}
{carriers}
""",
        encoding="utf-8",
    )


@pytest.fixture
def simulator(request: pytest.FixtureRequest) -> Iterator[Simulator]:
    config: SimConfig = getattr(request, "param", SimConfig())
    with SimulatorThread(config) as sim:
        yield sim


async def _run(tmp_path: Path, campaign: Path) -> object:
    plan = prepare(campaign)
    return await _send(plan, new_run_dir(plan, tmp_path / "runs"), None, SystemClock())


async def test_every_message_arrives_once(
    anyio_backend: object,
    tmp_path: Path,
    segment: Path,
    campaign_file: Callable[..., Path],
    simulator: Simulator,
) -> None:
    campaign = campaign_file("seg.csv")
    _engine(tmp_path, simulator.port)
    summary = await _run(tmp_path, campaign)
    assert summary.states == {"sent": ROWS}  # type: ignore[attr-defined]
    ids = [entry[1] for entry in simulator.log]
    assert sorted(ids) == sorted(f"t-{i + 2}" for i in range(ROWS))
    assert summary.gateways["sim"].requests == -(-ROWS // 7)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("simulator", "state", "reason"),
    [
        (SimConfig(p_reject=1.0), "failed", "rejected:INVALID_NUMBER"),
        (SimConfig(p_429=1.0, retry_after=0.01), "failed", "retries_exhausted:throttled:429"),
        (SimConfig(p_5xx=1.0), "failed", "retries_exhausted:GatewayUnavailable"),
        (SimConfig(p_drop=1.0), "unknown", "ambiguous:GatewayTimeout"),
        (SimConfig(p_hang=1.0, hang_s=5), "unknown", "ambiguous:GatewayTimeout"),
        (SimConfig(token="right"), "pending", "gateway_refused"),
    ],
    indirect=["simulator"],
    ids=["rejects", "429", "5xx", "dropped", "timeout", "auth"],
)
async def test_each_fault_is_recorded_never_swallowed(
    anyio_backend: object,
    tmp_path: Path,
    segment: Path,
    campaign_file: Callable[..., Path],
    simulator: Simulator,
    state: str,
    reason: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Persistent faults end as they must: rejects and exhausted retries ``failed``, answers that
    never came ``unknown`` (never resent to a gateway that is not idempotent), and refused
    credentials stop the run with everyone ``pending`` (the config is wrong, not the recipients)."""
    monkeypatch.setenv("SIM_TOKEN", "wrong")
    campaign = campaign_file("seg.csv")
    _engine(tmp_path, simulator.port, options='timeout = 0.3\ntoken_env = "SIM_TOKEN"')
    summary = await _run(tmp_path, campaign)
    assert summary.states == {state: ROWS}  # type: ignore[attr-defined]
    assert summary.reasons[state] == {reason: ROWS}  # type: ignore[attr-defined]


@pytest.mark.parametrize("max_batch", [7, 1000])
async def test_the_carrier_rate_holds_at_the_receiver_in_every_second(
    anyio_backend: object,
    tmp_path: Path,
    write: Callable[[str, str | bytes], Path],
    campaign_file: Callable[..., Path],
    max_batch: int,
) -> None:
    """Measured where a provider meters: the arrival of each request at the simulator, which
    accepts everything (it does not enforce the rate, so this check can fail). With requests
    larger than the rate (``max_batch`` 1000 against 100 parts a second) they are split."""
    rows, rate = 250, 100
    write("seg.csv", "phone,name,coupon\n" + "".join(f"1380013{i:04d},客{i},20\n" for i in range(rows)))
    campaign = campaign_file("seg.csv")  # (writes a default engine file: replaced below)
    with SimulatorThread(SimConfig(latency_ms=1, jitter_ms=10)) as simulator:
        _engine(
            tmp_path, simulator.port, carriers=f"[carriers.cm]\nrate_per_second = {rate}", max_batch=max_batch
        )
        summary = await _run(tmp_path, campaign)
    assert summary.states == {"sent": rows}  # type: ignore[attr-defined]
    peak = simulator.max_arrived_parts_per_second()["cm"]
    assert peak <= rate  # in any 1 s window of arrivals
    assert peak > rate * 0.8  # and it did use the budget


@pytest.mark.parametrize(
    "simulator", [SimConfig(p_5xx=0.3, p_429=0.2, retry_after=0.01, seed=3)], indirect=True
)
async def test_transient_faults_are_retried_until_everyone_is_sent_once(
    anyio_backend: object,
    tmp_path: Path,
    segment: Path,
    campaign_file: Callable[..., Path],
    simulator: Simulator,
) -> None:
    campaign = campaign_file("seg.csv")
    _engine(tmp_path, simulator.port, max_attempts=20)
    summary = await _run(tmp_path, campaign)
    assert summary.states == {"sent": ROWS}  # type: ignore[attr-defined]
    ids = [entry[1] for entry in simulator.log]
    assert len(ids) == len(set(ids)) == ROWS  # nobody twice, nobody skipped
    assert simulator.stats["5xx"] + simulator.stats["429"] > 0
    gw = summary.gateways["sim"]  # type: ignore[attr-defined]
    assert gw.retries > 0
    assert 0 < gw.latency_ms["p50"] <= gw.latency_ms["p99"] <= gw.latency_ms["p99.9"]


async def test_a_gateway_down_mid_blast_fails_over_with_nothing_lost_or_doubled(
    anyio_backend: object, tmp_path: Path, segment: Path, campaign_file: Callable[..., Path]
) -> None:
    with SimulatorThread(SimConfig(p_5xx=1.0)) as down, SimulatorThread(SimConfig()) as up:
        campaign = campaign_file("seg.csv")
        _engine(tmp_path, down.port, backup=up.port)
        summary = await _run(tmp_path, campaign)
    assert summary.states == {"sent": ROWS}  # type: ignore[attr-defined]
    assert down.log == []
    ids = [entry[1] for entry in up.log]
    assert len(ids) == len(set(ids)) == ROWS
    assert summary.gateways["backup"].accepted == ROWS  # type: ignore[attr-defined]


@pytest.mark.parametrize("simulator", [SimConfig(p_hang=0.3, hang_s=5, seed=5)], indirect=True)
async def test_an_idempotent_gateway_gets_timed_out_requests_again(
    anyio_backend: object,
    tmp_path: Path,
    segment: Path,
    campaign_file: Callable[..., Path],
    simulator: Simulator,
) -> None:
    campaign = campaign_file("seg.csv")
    _engine(tmp_path, simulator.port, options="timeout = 0.2\nidempotent = true", max_attempts=20)
    summary = await _run(tmp_path, campaign)
    assert summary.states == {"sent": ROWS}  # type: ignore[attr-defined]
    assert simulator.stats["hung"] > 0


def test_ctrl_c_drains_what_is_in_flight_and_stops_with_a_summary(
    tmp_path: Path, write: Callable[[str, str | bytes], Path], campaign_file: Callable[..., Path]
) -> None:
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    write("big.csv", "phone,name,coupon\n" + "".join(f"1390013{i:04d},客{i},20\n" for i in range(3000)))
    with SimulatorThread(SimConfig(latency_ms=20)) as sim:
        campaign = campaign_file("big.csv")
        _engine(tmp_path, sim.port, max_batch=1, gateway="in_flight = 1", top="batch_size = 1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "send", str(campaign), "--json", "-q"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUTF8": "1"},
        )
        deadline = time.monotonic() + 20
        while len(sim.log) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        logged = len(sim.log)
    assert proc.returncode == 5, err
    assert "stopping: no new rows" in err
    summary = json.loads(out)
    assert summary["stopped"] is True
    assert 10 <= summary["rows"] < 3000  # it stopped reading
    assert sum(summary["states"].values()) == summary["rows"]  # every row read is accounted for
    assert summary["states"]["sent"] == logged == summary["rows"]  # what was in flight was delivered


@pytest.mark.parametrize("simulator", [SimConfig()], indirect=True)
async def test_an_account_budget_holds_over_all_carriers(
    anyio_backend: object,
    tmp_path: Path,
    write: Callable[[str, str | bytes], Path],
    campaign_file: Callable[..., Path],
    simulator: Simulator,
) -> None:
    write(
        "mixed.csv",
        "phone,name,coupon\n"
        + "".join(f"{'138' if i % 2 else '130'}0013{i:04d},客{i},20\n" for i in range(24)),
    )  # China Mobile and Unicom
    campaign = campaign_file("mixed.csv")
    _engine(tmp_path, simulator.port, gateway="rate_per_second = 8", max_batch=4)
    summary = await _run(tmp_path, campaign)
    assert summary.states == {"sent": 24}  # type: ignore[attr-defined]
    assert sum(simulator.max_arrived_parts_per_second(window=1.0).values()) >= 8
    times = sorted(t for t, _, _ in simulator.arrivals)  # both carriers together, as they arrived
    busiest = max(sum(1 for u in times if t - 1.0 < u <= t) for t in times)
    assert busiest <= 8
