"""The ``aliyun`` gateway against the Aliyun simulator on loopback, on both event loops.

Each test drives the real gateway (our signing, our pooled client) into a real HTTP server that
checks signatures on its own, renders the filed template and enforces Aliyun's rules.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from engine.core.errors import GatewayAuthError, GatewayTimeout, GatewayUnreachable
from engine.core.messages import DeliveryStatus, MessageBatch, Outcome
from engine.core.provider_template import ProviderTemplate, compile_provider_template
from engine.sending.gateway import GatewayContext
from engine.sending.settling import ProviderStatus, Settled, SettleQuery, match
from loadtests._host import free_port
from loadtests.sim_aliyun import AliyunSim, AliyunSimConfig
from loadtests.sim_cloud import SimThread
from plugins.gateway_aliyun.hooks import AliyunConfig, AliyunGateway

pytestmark = pytest.mark.anyio

TEXT = "亲爱的${name}，您的${coupon}元券已到账，拒收请回复R"
TEMPLATE = compile_provider_template(
    provider="aliyun", code="SMS_1", text=TEXT, params={"name": "name", "coupon": "coupon"}
)


def batch(
    values: list[tuple[str, str]], template: ProviderTemplate = TEMPLATE, start: int = 0
) -> MessageBatch:
    numbers = [f"1380013{start + i:04d}" for i in range(len(values))]
    texts = ["【小鹅优选】" + TEXT.replace("${name}", n).replace("${coupon}", c) for n, c in values]
    return MessageBatch(
        "cm",
        rows=list(range(1, len(values) + 1)),
        numbers=numbers,
        texts=texts,
        parts=[1] * len(values),
        id_prefix="c-",
        params=[(template, v) for v in values],
    )


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAIsimKeyId")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "simSecret")


@pytest.fixture
def sim(request: pytest.FixtureRequest) -> Iterator[AliyunSim]:
    cfg: AliyunSimConfig = copy.deepcopy(getattr(request, "param", AliyunSimConfig()))
    cfg.templates.setdefault("SMS_1", TEXT)
    with SimThread(AliyunSim(cfg)) as s:
        yield s


def gateway(sim_port: int, tmp_path: Path, **options: object) -> AliyunGateway:
    cfg = AliyunConfig(url=f"http://127.0.0.1:{sim_port}", timeout=options.pop("timeout", 5.0), **options)  # type: ignore[arg-type]
    return AliyunGateway(cfg, GatewayContext(name="aliyun", base_dir=tmp_path, run_dir=tmp_path))


@pytest.mark.parametrize("signature", ["acs3", "rpc"])
async def test_equal_parameters_go_by_sendsms_the_rest_by_sendbatchsms_and_texts_match(
    sim: AliyunSim, tmp_path: Path, keys: None, signature: str
) -> None:
    values = [("张三", "20")] * 5 + [("李四", "5"), ("王五", "8"), ("😀&=+ %", "9")]
    b = batch(values)
    gw = gateway(sim.port, tmp_path, signature=signature)
    results = await gw.send(b)
    await gw.aclose()
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * len(b)
    assert sorted(sim.actions) == ["SendBatchSms", "SendSms"]
    assert sorted(sim.sent) == sorted(zip([t[3:] for t in b.tos], b.texts, strict=True))
    assert len({r.provider_id for r in results}) == len(b)  # <BizId>-<number>: one per message
    assert all(r.provider_id.endswith(t[3:]) for r, t in zip(results, b.tos, strict=True))


async def test_a_bad_secret_or_an_unfiled_template_stops_the_gateway_after_one_request(
    sim: AliyunSim, tmp_path: Path, keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "wrong")
    gw = gateway(sim.port, tmp_path)
    with pytest.raises(GatewayAuthError, match="SignatureDoesNotMatch"):
        await gw.send(batch([(f"客{i}", str(i)) for i in range(250)]))  # three SendBatchSms calls' worth
    assert sim.stats["SignatureDoesNotMatch"] == 1
    with pytest.raises(GatewayAuthError):  # and it keeps refusing without asking again
        await gw.send(batch([("a", "1")]))
    assert sim.stats["requests"] == 1
    await gw.aclose()
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "simSecret")
    unfiled = compile_provider_template(
        provider="aliyun", code="SMS_404", text=TEXT, params={"name": "n", "coupon": "c"}
    )
    gw = gateway(sim.port, tmp_path)
    with pytest.raises(GatewayAuthError, match=r"isv\.SMS_TEMPLATE_ILLEGAL"):
        await gw.send(batch([(f"客{i}", "1") for i in range(300)], unfiled))
    assert sim.stats["isv.SMS_TEMPLATE_ILLEGAL"] == 1
    await gw.aclose()


async def test_free_text_to_aliyun_is_a_config_error_not_a_failed_message(
    sim: AliyunSim, tmp_path: Path, keys: None
) -> None:
    b = batch([("a", "1")])
    b.params = None
    gw = gateway(sim.port, tmp_path)
    with pytest.raises(GatewayAuthError, match=r"\[template.provider\]"):
        await gw.send(b)
    await gw.aclose()
    assert sim.stats["requests"] == 0


@pytest.mark.parametrize("sim", [AliyunSimConfig(blacklist={"13800130003"})], indirect=True)
async def test_a_blacklisted_number_is_refused_alone_the_rest_go(
    sim: AliyunSim, tmp_path: Path, keys: None
) -> None:
    b = batch([("同", "1")] * 8)  # one SendSms of 8: Aliyun refuses it whole for one number
    gw = gateway(sim.port, tmp_path)
    results = await gw.send(b)
    await gw.aclose()
    bad = [i for i, r in enumerate(results) if r.outcome != Outcome.ACCEPTED]
    assert bad == [3]
    assert results[3].code == "isv.BLACK_KEY_CONTROL_LIMIT" and results[3].permanent
    assert sorted(n for n, _ in sim.sent) == sorted(t[3:] for i, t in enumerate(b.tos) if i != 3)


@pytest.mark.parametrize("sim", [AliyunSimConfig(rate=10)], indirect=True)
async def test_over_the_rate_the_messages_come_back_throttled_and_none_is_sent(
    sim: AliyunSim, tmp_path: Path, keys: None
) -> None:
    gw = gateway(sim.port, tmp_path)
    first = await gw.send(batch([("同", "1")] * 10))
    again = await gw.send(batch([("同", "1")] * 5, start=10))
    await gw.aclose()
    assert {r.outcome for r in first} == {Outcome.ACCEPTED}
    assert {r.outcome for r in again} == {Outcome.THROTTLED}
    assert again[0].code == "isv.BUSINESS_LIMIT_CONTROL" and again[0].retry_after == 60.0
    assert len(sim.sent) == 10


@pytest.mark.parametrize("sim", [AliyunSimConfig(p_system_error=1.0)], indirect=True)
async def test_a_system_error_is_retried(sim: AliyunSim, tmp_path: Path, keys: None) -> None:
    gw = gateway(sim.port, tmp_path)
    results = await gw.send(batch([("同", "1")] * 3))
    await gw.aclose()
    assert {(r.outcome, r.code) for r in results} == {(Outcome.RETRY, "isp.SYSTEM_ERROR")}


async def test_connection_refused_is_unreachable(tmp_path: Path, keys: None) -> None:
    gw = gateway(free_port(), tmp_path)
    with pytest.raises(GatewayUnreachable):
        await gw.send(batch([("同", "1")] * 3))
    await gw.aclose()


@pytest.mark.parametrize("sim", [AliyunSimConfig(p_hang=1.0, hang_s=5, p_undeliv=0.5)], indirect=True)
async def test_a_request_taken_without_an_answer_is_settled_by_query_send_details(
    sim: AliyunSim, tmp_path: Path, keys: None
) -> None:
    b = batch([("同", "1")] * 6)
    gw = gateway(sim.port, tmp_path, timeout=1.0, query_lag=0.0)
    with pytest.raises(GatewayTimeout):
        await gw.send(b)
    assert (tmp_path / "unsettled-aliyun.jsonl").exists()
    queries = gw.unsettled.queries()  # the journal: every message of the call, its number and key
    assert sorted(q.message_id for q in queries) == sorted(b.ids)
    assert {q.number for q in queries} == set(b.tos)
    sim.config.p_hang = 0.0
    answer = await gw.settle(queries)
    found, _ = match(queries, answer.statuses, answer.listed)
    truth = {
        "+86" + r["n"]: DeliveryStatus.DELIVERED if r["ok"] else DeliveryStatus.FAILED for r in sim.records
    }
    assert {DeliveryStatus.DELIVERED, DeliveryStatus.FAILED} <= set(truth.values())
    assert {m.query.message_id: m.status.status for m in found if m.status is not None} == {
        q.message_id: truth[q.number] for q in queries
    }
    # a message the provider never took: not listed, so never taken — once query_lag has passed
    lost = batch([("x", "1")], start=50)
    q = SettleQuery(message_id=lost.ids[0], number=lost.tos[0], sent_at=time.time(), keys=frozenset(lost.ids))
    (m,), _ = match([q], *_answer(await gw.settle([q])))
    assert m.absent and m.final
    await gw.aclose()
    patient = gateway(sim.port, tmp_path, query_lag=600.0)
    (m,), _ = match([q], *_answer(await patient.settle([q])))
    assert m.status is None and not m.absent and not m.final  # too soon to say: it stays unknown
    # another campaign's send to the same number (another OutId) is not this message's
    other = msgspec.structs.replace(queries[0], keys=frozenset({"other-1"}))
    (m,), _ = match([other], *_answer(await patient.settle([other])))
    await patient.aclose()
    assert m.status is None and not m.absent


def _answer(s: Settled) -> tuple[list[ProviderStatus], frozenset[str]]:
    return s.statuses, s.listed
