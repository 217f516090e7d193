"""The ``tencent`` gateway against the Tencent simulator on loopback, on both event loops."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.core.errors import GatewayAuthError, GatewayTimeout, GatewayUnreachable
from engine.core.messages import DeliveryStatus, MessageBatch, Outcome
from engine.core.provider_template import ProviderTemplate, compile_provider_template
from engine.sending.gateway import GatewayContext
from engine.sending.settling import match
from loadtests._host import free_port
from loadtests.sim_cloud import SimThread
from loadtests.sim_tencent import TencentSim, TencentSimConfig
from plugins.gateway_tencent.hooks import TencentConfig, TencentGateway

pytestmark = pytest.mark.anyio

TEXT = "{1}，您的{2}元券已到账，拒收请回复R"
TEMPLATE = compile_provider_template(
    provider="tencent", code="1234567", text=TEXT, params={"1": "name", "2": "coupon"}
)


def batch(
    values: list[tuple[str, str]], template: ProviderTemplate = TEMPLATE, start: int = 0
) -> MessageBatch:
    texts = ["【小鹅优选】" + TEXT.replace("{1}", n).replace("{2}", c) for n, c in values]
    return MessageBatch(
        "cm",
        rows=list(range(1, len(values) + 1)),
        numbers=[f"1380013{start + i:04d}" for i in range(len(values))],
        texts=texts,
        parts=[1] * len(values),
        id_prefix="c-",
        params=[(template, v) for v in values],
    )


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENCENTCLOUD_SECRET_ID", "AKIDsim")
    monkeypatch.setenv("TENCENTCLOUD_SECRET_KEY", "simKey")


@pytest.fixture
def sim(request: pytest.FixtureRequest) -> Iterator[TencentSim]:
    cfg: TencentSimConfig = copy.deepcopy(getattr(request, "param", TencentSimConfig()))
    cfg.templates.setdefault("1234567", TEXT)
    with SimThread(TencentSim(cfg)) as s:
        yield s


def gateway(port: int, tmp_path: Path, **options: object) -> TencentGateway:
    cfg = TencentConfig(sdk_app_id="1400000001", url=f"http://127.0.0.1:{port}", **options)  # type: ignore[arg-type]
    return TencentGateway(cfg, GatewayContext(name="tencent", base_dir=tmp_path, run_dir=tmp_path))


async def test_equal_parameters_share_a_request_and_every_text_arrives_as_rendered(
    sim: TencentSim, tmp_path: Path, keys: None
) -> None:
    values = [("张三", "20")] * 250 + [("李四", "5"), ('😀&"\\', "8")]
    b = batch(values)
    gw = gateway(sim.port, tmp_path, max_batch=400)
    results = await gw.send(b)
    await gw.aclose()
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * len(b)
    assert sim.actions == ["SendSms"] * 4  # 200 + 50 equal, then one each
    assert sorted(sim.sent) == sorted(zip(b.tos, b.texts, strict=True))
    assert len({r.provider_id for r in results}) == len(b)


@pytest.mark.parametrize("sim", [TencentSimConfig(blacklist={"+8613800130001"}, rate=3)], indirect=True)
async def test_per_number_results_blacklist_permanent_and_over_the_rate_throttled(
    sim: TencentSim, tmp_path: Path, keys: None
) -> None:
    gw = gateway(sim.port, tmp_path)
    results = await gw.send(batch([("同", "1")] * 5))
    await gw.aclose()
    assert results[1].outcome == Outcome.REJECTED and results[1].permanent
    assert results[1].code == "FailedOperation.PhoneNumberInBlacklist"
    outcomes = [r.outcome for i, r in enumerate(results) if i != 1]
    assert outcomes.count(Outcome.ACCEPTED) == 3 and outcomes.count(Outcome.THROTTLED) == 1
    assert len(sim.sent) == 3


async def test_an_unapproved_template_stops_the_gateway_after_one_request(
    sim: TencentSim, tmp_path: Path, keys: None
) -> None:
    other = compile_provider_template(provider="tencent", code="999", text=TEXT, params={"1": "a", "2": "b"})
    gw = gateway(sim.port, tmp_path, max_batch=2000)
    with pytest.raises(GatewayAuthError, match=r"TemplateIncorrectOrUnapproved"):
        await gw.send(batch([(f"客{i}", "1") for i in range(20)], other))
    with pytest.raises(GatewayAuthError):
        await gw.send(batch([("a", "1")]))
    await gw.aclose()
    assert sim.stats["requests"] == 1


async def test_a_wrong_key_is_an_auth_error(
    sim: TencentSim, tmp_path: Path, keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENCENTCLOUD_SECRET_KEY", "nope")
    gw = gateway(sim.port, tmp_path)
    with pytest.raises(GatewayAuthError, match=r"AuthFailure\.SignatureFailure"):
        await gw.send(batch([("a", "1")]))
    await gw.aclose()


async def test_connection_refused_is_unreachable(tmp_path: Path, keys: None) -> None:
    gw = gateway(free_port(), tmp_path)
    with pytest.raises(GatewayUnreachable):
        await gw.send(batch([("a", "1")]))
    await gw.aclose()


@pytest.mark.parametrize("sim", [TencentSimConfig(p_hang=1.0, hang_s=5, p_undeliv=0.5)], indirect=True)
async def test_sent_without_an_answer_is_settled_by_pull_sms_send_status(
    sim: TencentSim, tmp_path: Path, keys: None
) -> None:
    b = batch([("同", "1")] * 6)
    gw = gateway(sim.port, tmp_path, timeout=1.0)
    with pytest.raises(GatewayTimeout):
        await gw.send(b)
    queries = gw.unsettled.queries()  # the journal: every message of the call, its number and key
    assert sorted(q.message_id for q in queries) == sorted(b.ids)
    assert {q.keys for q in queries} == {frozenset({b.ids[0]})}  # the call is named by its first id
    sim.config.p_hang = 0.0
    answer = await gw.settle(queries)
    assert answer.consumed and not answer.listed  # a pull: it cannot prove a message was never taken
    found, used = match(queries, answer.statuses)
    assert len(used) == len(b)
    truth = {n: DeliveryStatus.DELIVERED if ok else DeliveryStatus.FAILED for n, ok in sim.fates.items()}
    assert {DeliveryStatus.DELIVERED, DeliveryStatus.FAILED} <= set(truth.values())
    assert {m.query.message_id: m.status.status for m in found if m.status is not None} == {
        q.message_id: truth[q.number] for q in queries
    }
    assert (await gw.settle(queries)).statuses == []  # handed out once
    await gw.aclose()
