"""The ``http`` gateway against the simulator on loopback, on both event loops: every fault ends recorded."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.clock import SystemClock
from engine.runtime import _send, new_run_dir, prepare
from loadtests.simulator import SimConfig, Simulator, SimulatorThread

pytestmark = pytest.mark.anyio

ROWS = 30


@pytest.fixture
def segment(write: Callable[[str, str | bytes], Path]) -> Path:
    return write(
        "seg.csv", "phone,name,coupon\n" + "".join(f"1380013{i:04d},客{i},20\n" for i in range(ROWS))
    )


def _engine(tmp_path: Path, port: int, *, options: str = "", carriers: str = "") -> None:
    (tmp_path / "engine.toml").write_text(
        f"""
[gateways.sim]
plugin = "http"
[gateways.sim.options]
url = "http://127.0.0.1:{port}/send"
max_batch = 7
{options}
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
    ("simulator", "reason"),
    [
        (SimConfig(p_reject=1.0), "rejected:INVALID_NUMBER"),
        (SimConfig(p_429=1.0, retry_after=2), "throttled:429"),
        (SimConfig(p_5xx=1.0), "gateway_error:GatewayUnavailable"),
        (SimConfig(p_drop=1.0), "gateway_error:GatewayUnavailable"),
        (SimConfig(p_hang=1.0, hang_s=5), "gateway_error:GatewayTimeout"),
        (SimConfig(token="right"), "gateway_error:GatewayAuthError"),
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
    reason: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIM_TOKEN", "wrong")
    campaign = campaign_file("seg.csv")
    _engine(tmp_path, simulator.port, options='timeout = 0.3\ntoken_env = "SIM_TOKEN"')
    summary = await _run(tmp_path, campaign)
    assert summary.states == {"failed": ROWS}  # type: ignore[attr-defined]
    assert summary.reasons["failed"] == {reason: ROWS}  # type: ignore[attr-defined]


@pytest.mark.parametrize("simulator", [SimConfig(limits={"cm": 10})], indirect=True)
async def test_the_carrier_rate_is_never_exceeded_in_any_second(
    anyio_backend: object,
    tmp_path: Path,
    segment: Path,
    campaign_file: Callable[..., Path],
    simulator: Simulator,
) -> None:
    campaign = campaign_file("seg.csv")
    _engine(tmp_path, simulator.port, carriers="[carriers.cm]\nrate_per_second = 10")
    summary = await _run(tmp_path, campaign)
    assert summary.states == {"sent": ROWS}  # type: ignore[attr-defined]
    assert simulator.max_parts_per_second()["cm"] <= 10  # over any 1 s window, from the simulator's log
    assert simulator.stats["throttled"] == 0
