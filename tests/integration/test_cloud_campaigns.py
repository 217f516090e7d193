"""Whole campaigns through ``pigeon``'s send path into the Aliyun and Tencent simulators, both event
loops: per-recipient parameters arrive as the exact texts ``pigeon preview`` renders, throttling
slows the lane and loses nothing, a template error stops the campaign after one request."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.core.clock import SystemClock
from engine.run.blast import _send
from engine.run.plan import new_run_dir, prepare
from engine.run.preview import preview
from loadtests.sim_aliyun import AliyunSim, AliyunSimConfig
from loadtests.sim_cloud import SimThread
from loadtests.sim_tencent import TencentSim, TencentSimConfig

pytestmark = pytest.mark.anyio

ROWS = 5_000  # the suite stays fast; a 100,000-recipient load test is not written yet
ALIYUN_TEXT = "亲爱的${name}，您的${coupon}元券已到账，拒收请回复R"
TENCENT_TEXT = "{1}，您的{2}元券已到账，拒收请回复R"


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAIsimKeyId")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "simSecret")
    monkeypatch.setenv("TENCENTCLOUD_SECRET_ID", "AKIDsim")
    monkeypatch.setenv("TENCENTCLOUD_SECRET_KEY", "simKey")


def _files(tmp_path: Path, provider: str, port: int, *, code: str, rows: int = ROWS) -> Path:
    # Names repeat every 7 rows, coupons every 3: many distinct parameter sets, some shared.
    seg = "phone,name,coupon\n" + "".join(
        f"13{8 + i % 2}{i:08d},客{i % 7},{5 + i % 3}\n" for i in range(rows)
    )
    (tmp_path / "seg.csv").write_text(seg, encoding="utf-8")
    if provider == "aliyun":
        gw = f'plugin = "aliyun"\n[gateways.cloud.options]\nurl = "http://127.0.0.1:{port}"\n'
        tpl = f'provider = "aliyun"\ncode = "{code}"\ntext = "{ALIYUN_TEXT}"\nparams = {{ name = "name", coupon = "coupon" }}'
    else:
        gw = f'plugin = "tencent"\n[gateways.cloud.options]\nurl = "http://127.0.0.1:{port}"\nsdk_app_id = "1400000001"\n'
        tpl = f'provider = "tencent"\ncode = "{code}"\ntext = "{TENCENT_TEXT}"\nparams = {{ 1 = "name", 2 = "coupon" }}'
    (tmp_path / "engine.toml").write_text(
        f"batch_size = 1024\n[retry]\nmax_attempts = 50\nbase = 0.05\ncap = 0.2\n[gateways.cloud]\nbreaker_threshold = 1000\n{gw}",
        encoding="utf-8",
    )
    campaign = tmp_path / "campaign.toml"
    campaign.write_text(
        f'id = "cloud"\nengine = "engine.toml"\n[segment]\nsource = "csv"\npath = "seg.csv"\n'
        f'[template]\nsignature = "小鹅优选"\n[template.provider]\n{tpl}\n[policy]\nsend_window = ""\n',
        encoding="utf-8",
    )
    return campaign


@pytest.fixture(params=["aliyun", "tencent"])
def provider(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sim(provider: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    limited = getattr(request, "param", False)
    if provider == "aliyun":  # too many requests a second: Throttling.User
        s: Any = AliyunSim(AliyunSimConfig(templates={"SMS_1": ALIYUN_TEXT}, qps=5 if limited else 0))
    else:  # too many numbers a second: LimitExceeded.DeliveryFrequencyLimit per number
        s = TencentSim(TencentSimConfig(templates={"1234567": TENCENT_TEXT}, rate=500 if limited else 0))
    with SimThread(s) as running:
        yield running


def _code(provider: str) -> str:
    return "SMS_1" if provider == "aliyun" else "1234567"


def _expected(campaign: Path) -> dict[str, str]:
    """Number → text, as the pipeline renders them for ``pigeon preview``."""
    plan = prepare(campaign)
    out: dict[str, str] = {}
    segment = plan.open_segment()
    try:
        for b in segment.batches(1024):
            out.update(zip(b.numbers, b.texts, strict=True))
    finally:
        segment.close()
    shown = preview(plan, samples=5).samples
    assert shown
    for s in shown:  # the samples preview shows (numbers masked) are among these texts, row for row
        assert s.text in out.values()
    return out


def _arrived(sim: Any) -> dict[str, str]:
    got = {n[3:] if n.startswith("+86") else n: t for n, t in sim.sent}
    assert len(got) == len(sim.sent), "a number arrived twice"
    return got


async def test_a_campaign_arrives_with_exactly_the_previewed_texts(
    tmp_path: Path, keys: None, provider: str, sim: Any
) -> None:
    campaign = _files(tmp_path, provider, sim.port, code=_code(provider))
    want = _expected(campaign)
    plan = prepare(campaign)
    summary = await _send(plan, new_run_dir(plan, tmp_path / "runs"), None, SystemClock())
    assert summary.states.get("sent") == ROWS
    assert _arrived(sim) == want


@pytest.mark.parametrize("sim", [True], indirect=True)
async def test_throttling_slows_the_lane_and_loses_nothing(
    tmp_path: Path, keys: None, provider: str, sim: Any
) -> None:
    campaign = _files(tmp_path, provider, sim.port, code=_code(provider), rows=1000)
    want = _expected(campaign)
    plan = prepare(campaign)
    summary = await _send(plan, new_run_dir(plan, tmp_path / "runs"), None, SystemClock())
    throttled = sim.stats["Throttling.User"] + sim.stats["LimitExceeded.DeliveryFrequencyLimit"]
    assert throttled > 0, "the simulator never said too fast: the test proves nothing"
    assert summary.states.get("sent") == 1000
    assert _arrived(sim) == want


async def test_a_template_error_stops_the_campaign_after_one_request(
    tmp_path: Path, keys: None, provider: str, sim: Any
) -> None:
    campaign = _files(tmp_path, provider, sim.port, code="404404")
    plan = prepare(campaign)
    # The template is refused: the gateway spends no request after the first, and the run stops
    # with everyone it read pending (the recipients did nothing wrong), saying why.
    summary = await _send(plan, new_run_dir(plan, tmp_path / "runs"), None, SystemClock())
    assert summary.halted == "gateway_refused"
    assert "404404" in summary.message or "emplate" in summary.message
    assert set(summary.states) <= {"pending", "rejected", "suppressed"} and summary.states["pending"] > 0
    assert sim.stats["requests"] == 1
    assert sim.sent == []


def test_preview_shows_the_filed_text_with_the_signature(tmp_path: Path, provider: str) -> None:
    campaign = _files(tmp_path, provider, 1, code=_code(provider), rows=3)
    summary = preview(prepare(campaign), samples=3)
    assert [s.text for s in summary.samples] == [
        "【小鹅优选】客0，您的5元券已到账，拒收请回复R"
        if provider == "tencent"
        else "【小鹅优选】亲爱的客0，您的5元券已到账，拒收请回复R",
        "【小鹅优选】客1，您的6元券已到账，拒收请回复R"
        if provider == "tencent"
        else "【小鹅优选】亲爱的客1，您的6元券已到账，拒收请回复R",
        "【小鹅优选】客2，您的7元券已到账，拒收请回复R"
        if provider == "tencent"
        else "【小鹅优选】亲爱的客2，您的7元券已到账，拒收请回复R",
    ]
    assert not [f for f in summary.findings if f.level == "error"]
