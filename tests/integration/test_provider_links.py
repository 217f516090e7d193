"""Provider-managed per-phone links (``[links] mode = "provider"``) end to end, into the Aliyun simulator.

A 50-recipient campaign on the ``aliyun`` gateway: every message carries its own number's smart
short link and is billed for it; a run halted after links were made is resumed without a second
link for anyone; clicks on 7 links (one tapped twice, and a click on a link of another campaign)
come back through ``pigeon links pull`` once each and appear in the outcomes report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.cli.orders import outcomes_report
from engine.core import sms
from engine.core.config import load_engine
from engine.core.engine_file import EngineFile
from engine.core.errors import GatewayAuthError
from engine.run.plan import prepare
from engine.run.provider_links import pull_clicks
from engine.run.send import send
from engine.sending.gateway import GatewayContext
from engine.state.links import LinkStore, links_path
from loadtests.sim_aliyun import AliyunSim, AliyunSimConfig
from loadtests.sim_cloud import SimThread
from plugins.gateway_aliyun.hooks import AliyunConfig, AliyunGateway
from tests.integration.test_send import run_cli

N = 50
TARGET = "https://shop.example.cn/d11?from=sms"
TEXT = "${name}您好，双11专享：全场满200减30，会员再享95折，前100名下单送帆布袋，详情${url} 拒收请回复R"


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAIsimKeyId")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "simSecret")


@pytest.fixture
def sim() -> Iterator[AliyunSim]:
    with SimThread(AliyunSim(AliyunSimConfig())) as s:  # the template is filed by the test
        yield s


def _files(tmp_path: Path, port: int, *, engine_extra: str = "") -> Path:
    (tmp_path / "seg.csv").write_text(
        "phone,name,group\n" + "".join(f"1380013{i:04d},客{i},{'AB'[i % 2]}\n" for i in range(N)),
        encoding="utf-8",
    )
    (tmp_path / "engine.toml").write_text(
        f'batch_size = 20\n[gateways.cloud]\nplugin = "aliyun"\n'
        f'{engine_extra}[gateways.cloud.options]\nurl = "http://127.0.0.1:{port}"\nlinks_batch = 8\n',
        encoding="utf-8",
    )
    campaign = tmp_path / "plinks.toml"
    campaign.write_text(
        'id = "plinks"\nengine = "engine.toml"\n[segment]\nsource = "csv"\npath = "seg.csv"\n'
        '[template]\nsignature = "小鹅优选"\nopt_out_text = ""\n[template.provider]\nprovider = "aliyun"\n'
        f'code = "SMS_L"\ntext = "{TEXT}"\nparams = {{ name = "name", url = "link" }}\n'
        f'[policy]\nsend_window = ""\n[links]\nmode = "provider"\ntarget = "{TARGET}"\n',
        encoding="utf-8",
    )
    return campaign


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_each_message_carries_its_own_billed_link_a_resume_makes_none_again_and_clicks_count_once(
    tmp_path: Path, sim: AliyunSim, keys: None, backend: str
) -> None:
    campaign = _files(tmp_path, sim.port)
    runs = tmp_path / "runs"
    # Run 1: the template is not filed yet — the first SendSms is refused after links were made;
    # the run halts with everyone pending.
    first = send(prepare(campaign), backend=backend, runs_dir=runs)
    assert first.halted, first
    made_before = sim.stats["links_made"]
    assert 0 < made_before <= N and sim.sent == []
    # Run 2 (a resume): the template filed, everyone is sent; nobody gets a second link.
    sim.config.templates["SMS_L"] = TEXT
    second = send(prepare(campaign), backend=backend, runs_dir=runs)
    assert not second.halted and second.states == {"sent": N}, second
    assert sim.stats["links_made"] == N and set(sim._made.values()) == {1}
    # one create_links per batch of 20 (20, 20, 10 rows), in requests of links_batch = 8 numbers
    assert sim.actions.count("CreateSmartShortUrl") == 3 + 3 + 2
    link_of = {link["n"]: link["url"] for link in sim.links.values()}
    assert len(link_of) == len(set(link_of.values())) == N
    sent = dict(sim.sent)
    assert len(sent) == N
    for number, text in sent.items():
        assert link_of[number] in text, text  # its own number's link, nobody else's
    # billed: the link pushes every text past one part (70 characters) — count_parts counted it
    assert all(sms.count_parts(t) == 2 for t in sent.values())
    assert all(len(t.replace(link_of[n], "")) <= 70 for n, t in sent.items())
    assert second.total_parts == 2 * N
    # the links store has them, one per number, for the resume and the clicks
    store = LinkStore(links_path(load_engine(tmp_path / "engine.toml").store_path))
    try:
        assert set(store.provider_links("plinks")) == set(link_of.values())
    finally:
        store.close()

    # Clicks: 7 recipients, one of them twice; a link of another sender's campaign too.
    clicked = sorted(link_of)[:7]
    for n in clicked:
        assert sim.click(link_of[n]) == TARGET
    sim.click(link_of[clicked[0]])
    sim.config.templates["SMS_X"] = TEXT
    other = sim._create_links({"PhoneNumbers": clicked[1], "SourceUrl": "https://other.cn", "OutId": "x"})
    sim.click(json.loads(other[1])["Model"][0]["ShortUrl"])
    engine = load_engine(tmp_path / "engine.toml")
    counts = pull_clicks(engine, "plinks", backend=backend)
    assert (counts.links, counts.clicks_new, counts.clicked, counts.clicks_seen) == (N, 7, 7, 8)
    again = pull_clicks(engine, "plinks", backend=backend)
    assert (again.clicks_new, again.clicked) == (0, 7)  # a click pulled twice counts once
    report = outcomes_report(EngineFile(tmp_path / "engine.toml", "--engine"), "plinks")
    assert report.total.clicks == 7
    by_group = {g.group: g.clicks for g in report.groups}
    want = {"A": 0, "B": 0}
    for n in clicked:
        want["AB"[int(n[-4:]) % 2]] += 1
    assert by_group == want


def test_the_cli_pulls_and_reports(tmp_path: Path, sim: AliyunSim, keys: None) -> None:
    """``pigeon links pull`` and ``pigeon report --outcomes`` as a merchant runs them."""
    sim.config.templates["SMS_L"] = TEXT
    campaign = _files(tmp_path, sim.port)
    assert not send(prepare(campaign), backend="asyncio", runs_dir=tmp_path / "runs").halted
    url = next(iter(sim.links.values()))["url"]
    sim.click(url)
    done = run_cli("links", "pull", "plinks", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["clicks_new"] == 1
    report = run_cli("report", "plinks", "--outcomes", "--json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["total"]["clicks"] == 1


def test_a_route_to_a_gateway_without_provider_links_is_refused_before_sending(
    tmp_path: Path, sim: AliyunSim, keys: None
) -> None:
    campaign = _files(tmp_path, sim.port, engine_extra='carriers = ["cu", "ct", "cbn", "intl"]\n')
    with (tmp_path / "engine.toml").open("a", encoding="utf-8") as f:
        f.write('[gateways.plain]\nplugin = "file"\ncarriers = ["cm"]\n')
    done = run_cli("send", str(campaign), cwd=tmp_path)
    assert done.returncode == 2 and "cm → plain" in done.stderr, done.stderr
    assert sim.stats["links_made"] == 0 and sim.actions == []


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "asyncio"))


def _gateway(port: int, tmp_path: Path, **options: object) -> AliyunGateway:
    cfg = AliyunConfig(url=f"http://127.0.0.1:{port}", **options)  # type: ignore[arg-type]
    return AliyunGateway(cfg, GatewayContext(name="aliyun", base_dir=tmp_path, run_dir=tmp_path))


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"], indirect=True)
async def test_the_gateway_makes_links_by_links_batch_and_a_refused_number_goes_without(
    anyio_backend: str, tmp_path: Path, sim: AliyunSim, keys: None
) -> None:
    phones = [f"+86139001{i:05d}" for i in range(25)]
    sim.config.blacklist.add("13900100007")
    gw = _gateway(sim.port, tmp_path, links_batch=10)
    try:
        links = await gw.create_links(phones, TARGET, "camp")
    finally:
        await gw.aclose()
    assert [link.phone for link in links] == phones
    assert [i for i, link in enumerate(links) if not link.url] == [7]
    assert all(
        link.url.startswith("https://dx.test/") and link.expires_at > 1e9 for link in links if link.url
    )
    # 3 requests of ≤ 10; the one holding the refused number split down to it: 10 → 5 → 3 → 2 → 1
    assert sim.stats["isv.MOBILE_NUMBER_ILLEGAL"] == 4
    assert sim.stats["links_made"] == 24


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"], indirect=True)
async def test_the_gateway_reads_every_page_of_the_click_log_and_keeps_the_clicks(
    anyio_backend: str, tmp_path: Path, sim: AliyunSim, keys: None
) -> None:
    phones = [f"+86137001{i:05d}" for i in range(120)]  # three pages of 50
    gw = _gateway(sim.port, tmp_path, links_batch=100)
    try:
        links = await gw.create_links(phones, TARGET, "camp")
        for k in (3, 77, 119):
            sim.click(links[k].url)
        clicks = await gw.link_clicks("camp", time.time() - 60)
    finally:
        await gw.aclose()
    assert sorted((c.phone, c.url) for c in clicks) == sorted((phones[k], links[k].url) for k in (3, 77, 119))
    assert all(abs(c.clicked_at - time.time()) < 60 for c in clicks)
    assert sim.stats["link_log_pages"] == 3


@pytest.mark.anyio
async def test_a_refused_key_stops_link_making(
    tmp_path: Path, sim: AliyunSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAIsimKeyId")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "wrong")
    gw = _gateway(sim.port, tmp_path)
    try:
        with pytest.raises(GatewayAuthError, match="SignatureDoesNotMatch"):
            await gw.create_links(["+8613800138000"], TARGET, "camp")
        with pytest.raises(GatewayAuthError):  # no second request
            await gw.create_links(["+8613800138000"], TARGET, "camp")
    finally:
        await gw.aclose()
    assert sim.stats["SignatureDoesNotMatch"] == 1
