"""``pigeon serve`` with the ``aliyun`` and ``tencent`` gateways against their simulators, both event loops.

API messages name templates filed with a provider (``[service.templates.<id>.provider]``): they
arrive as filed; a parameter over the provider's limit, a link in a parameter, a template routed to
another provider's gateway, free text to a filed-templates-only gateway or a marketing template
without an opt-out is a 422 problem naming the message and field, and nothing of the request is
sent. Receipts come through each provider's callback — every Aliyun push and Tencent status twice
— and count once; an ``R`` through each provider's reply callback opts the number out.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from engine.core.config import load_engine
from engine.core.errors import ConfigError
from engine.service.apikeys import KeyRing
from engine.service.core import Service
from engine.service.serve import bind
from engine.state.store.sqlite import SqliteStore
from loadtests.sim_aliyun import AliyunSim, AliyunSimConfig
from loadtests.sim_cloud import SimThread
from loadtests.sim_tencent import TencentSim, TencentSimConfig
from tests.integration.service_harness import serving

pytestmark = pytest.mark.anyio

ALIYUN_TEXT = "亲爱的${name}，您的${coupon}元券已到账，拒收请回复R"
TENCENT_TEXT = "您的验证码{1}，{2}分钟内有效"
TOKEN = "cb-token"

ENGINE = """\
batch_size = 256
runs_dir = "runs"
[retry]
max_attempts = 3
base = 0.01
cap = 0.05
[store]
path = "pigeon.db"
[gateways.ali]
plugin = "aliyun"
carriers = ["cm"]
[gateways.ali.options]
url = "http://127.0.0.1:{ali}"
[gateways.ten]
plugin = "tencent"
carriers = ["cu", "ct", "cbn"]
[gateways.ten.options]
url = "http://127.0.0.1:{ten}"
sdk_app_id = "1400000001"
[service]
signature = "小鹅优选"
drain_timeout = 10
[service.templates.coupon.provider]
provider = "aliyun"
code = "SMS_1"
text = "{ali_text}"
params = {{ name = "name", coupon = "coupon" }}
[service.templates.verify.provider]
provider = "tencent"
code = "1234567"
text = "{ten_text}"
params = {{ 1 = "code", 2 = "minutes|5" }}
[service.templates.plain]
text = "您的订单{{order}}已发货"
[service.webhooks.ali]
parser = "aliyun"
secret_env = "PIGEON_TEST_CB_TOKEN"
[service.webhooks.ten]
parser = "tencent"
secret_env = "PIGEON_TEST_CB_TOKEN"
"""

CM = ["13800138001", "13800138002", "13800138003"]
"""China Mobile: through ``ali``."""
CU = ["13012340001", "13012340002", "13012340003"]
"""China Unicom: through ``ten``."""


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in {
        "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAIsimKeyId",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "simSecret",
        "TENCENTCLOUD_SECRET_ID": "AKIDsim",
        "TENCENTCLOUD_SECRET_KEY": "simKey",
        "PIGEON_TEST_CB_TOKEN": TOKEN,
    }.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def service_sock() -> Iterator[Any]:
    """The service's listening socket, bound first so the simulators know where to call back."""
    sock = bind("127.0.0.1", 0)
    yield sock
    sock.close()


@pytest.fixture
def sims(service_sock: Any) -> Iterator[tuple[AliyunSim, TencentSim]]:
    base = f"http://127.0.0.1:{service_sock.getsockname()[1]}/v1/webhooks"
    ali = AliyunSim(
        AliyunSimConfig(
            templates={"SMS_1": ALIYUN_TEXT},
            report_url=f"{base}/ali/reports?token={TOKEN}",
            up_url=f"{base}/ali/replies?token={TOKEN}",
            p_dup_report=1.0,  # every push twice
            p_undeliv=0.34,
        )
    )
    ten = TencentSim(
        TencentSimConfig(
            templates={"1234567": TENCENT_TEXT},
            status_url=f"{base}/ten/reports?token={TOKEN}",
            reply_url=f"{base}/ten/replies?token={TOKEN}",
            p_dup_status=1.0,
        )
    )
    with SimThread(ali) as a, SimThread(ten) as t:
        yield a, t


def _engine(tmp_path: Path, ali: int, ten: int, **replace: str) -> tuple[Path, str]:
    text = ENGINE.format(ali=ali, ten=ten, ali_text=ALIYUN_TEXT, ten_text=TENCENT_TEXT)
    for old, new in replace.items():
        text = text.replace(old, new)
    path = tmp_path / "engine.toml"
    path.write_text(text, encoding="utf-8")
    return path, KeyRing(tmp_path / "api-keys.json").create("tests")


async def _until(check: Any, seconds: float = 20.0) -> Any:
    with anyio.fail_after(seconds):
        while True:
            got = await check()
            if got:
                return got
            await anyio.sleep(0.02)


async def test_filed_templates_arrive_as_filed_receipts_count_once_and_replies_opt_out(
    anyio_backend: object,
    tmp_path: Path,
    env: None,
    sims: tuple[AliyunSim, TencentSim],
    service_sock: Any,
) -> None:
    ali, ten = sims
    engine, key = _engine(tmp_path, ali.port, ten.port)
    coupons = [("张三", "20"), ("李四", "5"), ("王五", "8")]
    messages = [
        {"to": n, "template": "coupon", "fields": {"name": a, "coupon": c}}
        for n, (a, c) in zip(CM, coupons, strict=True)
    ] + [{"to": n, "template": "verify", "fields": {"code": f"{i}234"}} for i, n in enumerate(CU)]
    async with (
        serving(engine, service_sock) as (url, svc),
        httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}) as c,
    ):
        r = await c.post("/v1/messages", json={"priority": "transactional", "messages": messages})
        assert r.status_code == 202, r.text
        ids = [m["id"] for m in r.json()["messages"]]

        async def settled() -> list[dict[str, Any]] | None:
            views = [(await c.get(f"/v1/messages/{i}")).json() for i in ids]
            return views if all(v["state"] in ("delivered", "failed") for v in views) else None

        views = await _until(settled)
        # exactly the filed texts, parameters in place, nothing appended
        assert sorted(ali.sent) == sorted(
            (n, f"【小鹅优选】亲爱的{a}，您的{c}元券已到账，拒收请回复R")
            for n, (a, c) in zip(CM, coupons, strict=True)
        )
        assert sorted(ten.sent) == sorted(
            ("+86" + n, f"【小鹅优选】您的验证码{i}234，5分钟内有效") for i, n in enumerate(CU)
        )
        truth = {r["n"]: "delivered" if r["ok"] else "failed" for r in ali.records}
        assert {"delivered", "failed"} <= set(truth.values())
        assert [v["state"] for v in views[:3]] == [truth[n] for n in CM]
        assert [v["state"] for v in views[3:]] == ["delivered"] * 3
        # every receipt came twice (Aliyun: one push of the request's 3, twice; Tencent: each
        # status twice); each counted once
        await _until(lambda: _posted(ali, "report", 2), 10)
        await _until(lambda: _posted(ten, "status", 6), 10)
        assert ali.stats["report_duplicated"] == 1 and ten.stats["status_duplicated"] == 3
        assert svc.inbound.parsers["ali"].duplicates == 3 and svc.inbound.parsers["ten"].duplicates == 3

        async def recorded() -> dict[tuple[str, int], int] | None:
            # (a message's view settles when its report is read; the ledger records it with the
            # next commit of reports, a moment later)
            db = sqlite3.connect(tmp_path / "pigeon.db")
            try:
                rows = db.execute("SELECT campaign, row, count(*) FROM ledger_reports GROUP BY campaign, row")
                counts = {(c, r): n for c, r, n in rows}
            finally:
                db.close()
            return counts if len(counts) >= 6 else None

        per_row = await _until(recorded, 10)
        assert len(per_row) == 6 and set(per_row.values()) == {1}
        metrics = (await c.get("/metrics")).text
        delivered = sum(1 for v in views if v["state"] == "delivered")
        assert _sample(metrics, 'pigeon_delivery_reports_total{gateway="ali",status="delivered"}') + _sample(
            metrics, 'pigeon_delivery_reports_total{gateway="ten",status="delivered"}'
        ) == float(delivered)

        # an R through each provider's reply callback opts the number out, at once
        ali.inject_reply(CM[0], "R")
        ten.inject_reply(CU[0], "退订")
        store = SqliteStore(tmp_path / "pigeon.db")
        try:

            async def opted_out() -> dict[str, Any] | None:
                found = store.optout_records(["+86" + CM[0], "+86" + CU[0]])
                return found if len(found) == 2 else None

            found = await _until(opted_out)
        finally:
            store.close()
        assert {r.source for r in found.values()} == {"mo"}
        r = await c.post(
            "/v1/messages",
            json={
                "priority": "marketing",
                "messages": [{"to": CM[0], "template": "coupon", "fields": {"name": "张三", "coupon": "9"}}],
            },
        )
        assert r.status_code == 202, r.text
        assert r.json()["messages"][0]["state"] == "suppressed"
        assert r.json()["messages"][0]["reason"] == "opted_out"


async def test_receipts_that_come_before_the_answer_are_kept_until_it_does(
    anyio_backend: object,
    tmp_path: Path,
    env: None,
    sims: tuple[AliyunSim, TencentSim],
    service_sock: Any,
) -> None:
    ali, ten = sims
    ten.config.answer_delay = 0.4  # each status (and its repeat) is posted before SendSms answers
    engine, key = _engine(tmp_path, ali.port, ten.port)
    async with (
        serving(engine, service_sock) as (url, svc),
        httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}) as c,
    ):
        r = await c.post(
            "/v1/messages",
            json={
                "priority": "transactional",
                "messages": [{"to": CU[0], "template": "verify", "fields": {"code": "42"}}],
            },
        )
        assert r.status_code == 202, r.text
        mid = r.json()["messages"][0]["id"]

        async def delivered() -> bool:
            return bool((await c.get(f"/v1/messages/{mid}")).json()["state"] == "delivered")

        await _until(delivered)
        assert ten.stats["status_posts"] == 2 and svc.inbound.parsers["ten"].duplicates == 1
        assert svc.ctx.counters["reports"] == 1  # the repeat was dropped; the first was kept, then matched
        assert len(svc.inbound.early) == 0 and svc.inbound.early.expired == 0
    db = sqlite3.connect(tmp_path / "pigeon.db")
    try:
        assert db.execute("SELECT status FROM ledger_reports").fetchall() == [("delivered",)]
    finally:
        db.close()


async def _posted(sim: Any, kind: str, n: int) -> bool:
    return bool(sim.stats[f"{kind}_posts"] >= n and sim.pending_posts() == 0)


def _sample(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def test_a_message_the_provider_would_refuse_is_a_422_and_nothing_is_sent(
    anyio_backend: object,
    tmp_path: Path,
    env: None,
    sims: tuple[AliyunSim, TencentSim],
    service_sock: Any,
) -> None:
    ali, ten = sims
    engine, key = _engine(tmp_path, ali.port, ten.port)
    ok = {"to": CM[0], "template": "coupon", "fields": {"name": "张三", "coupon": "20"}}
    cases: list[tuple[dict[str, Any], str, str, str]] = [
        # (message, priority, field, what the detail says)
        (
            {"to": CU[0], "template": "verify", "fields": {"code": "1234567"}},
            "transactional",
            "fields.code",
            "param_too_long",
        ),
        (
            {"to": CM[1], "template": "coupon", "fields": {"name": "看 https://x.cn/a", "coupon": "5"}},
            "transactional",
            "fields.name",
            "url_in_field",
        ),
        (
            {"to": CM[1], "template": "coupon", "fields": {"name": "见 t.cn/abc", "coupon": "5"}},
            "transactional",
            "fields.name",
            "links in variables",
        ),
        (
            {"to": CU[1], "template": "coupon", "fields": {"name": "李四", "coupon": "5"}},
            "transactional",
            "template",
            "filed with aliyun, but this number goes through gateway 'ten'",
        ),
        (
            {"to": CM[1], "template": "plain", "fields": {"order": "A1"}},
            "transactional",
            "template",
            "gateway 'ali' sends only templates filed with aliyun",
        ),
        (
            {"to": CU[1], "text": "您好"},
            "transactional",
            "template",
            "gateway 'ten' sends only templates filed with tencent",
        ),
        (
            {"to": CU[1], "template": "verify", "fields": {"code": "1234"}},
            "marketing",
            "template",
            "no opt-out text",
        ),
    ]
    async with (
        serving(engine, service_sock) as (url, _svc),
        httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}) as c,
    ):
        for bad, priority, field, says in cases:
            # the bad message beside a good one: the request is refused whole
            r = await c.post("/v1/messages", json={"priority": priority, "messages": [ok, bad]})
            assert r.status_code == 422, (bad, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            doc = r.json()
            assert doc["status"] == 422 and doc["title"] == "Invalid messages"
            assert [(e["index"], e["field"]) for e in doc["errors"]] == [(1, field)], doc
            assert says in doc["errors"][0]["detail"], doc
            assert "nothing was sent" in doc["detail"]
        assert ali.stats["requests"] == 0 and ten.stats["requests"] == 0
        r = await c.post("/v1/messages", json={"priority": "transactional", "messages": [ok]})
        assert r.status_code == 202, r.text

        async def sent() -> bool:
            return len(ali.sent) == 1

        await _until(sent)
    assert ali.sent == [(CM[0], "【小鹅优选】亲爱的张三，您的20元券已到账，拒收请回复R")]


def test_a_filed_template_with_an_unmapped_placeholder_stops_the_service_at_start(
    tmp_path: Path, env: None
) -> None:
    engine, _ = _engine(
        _dir(tmp_path, "unmapped"),
        1,
        2,
        **{'params = { name = "name", coupon = "coupon" }': 'params = { name = "name" }'},
    )
    with pytest.raises(ConfigError, match=r"service\.templates\.coupon\.provider.*\$\{coupon\}"):
        Service(load_engine(engine))
    engine, _ = _engine(_dir(tmp_path, "whole"), 1, 2)
    Service(load_engine(engine))  # (the file with the mapping whole loads)


def _dir(tmp_path: Path, name: str) -> Path:
    (tmp_path / name).mkdir()
    return tmp_path / name
