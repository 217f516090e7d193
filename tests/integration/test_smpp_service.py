"""``pigeon serve`` with an ``smpp`` gateway against the SMSC simulator, on both event loops: receipts
read on the bind settle the API's messages in the ledger, and an MO "R" records an opt-out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from engine.service.apikeys import KeyRing
from engine.state.store.sqlite import SqliteStore
from loadtests.smsc_sim import Smsc, SmscConfig, SmscThread
from tests.integration.service_harness import serving

pytestmark = pytest.mark.anyio

ENGINE = """\
batch_size = 256
runs_dir = "runs"
[store]
path = "pigeon.db"
[carriers.cm]
price_per_part = 0.05
[gateways.smsc]
plugin = "smpp"
carriers = ["cm", "cu", "ct", "cbn", "intl"]
in_flight = 2
[gateways.smsc.options]
host = "127.0.0.1"
port = {port}
system_id = "pigeon"
password_env = "TEST_SMPP_PASSWORD"
[service]
signature = "小鹅优选"
campaigns_dir = "campaigns"
drain_timeout = 10
"""


@pytest.fixture
def smsc() -> Iterator[Smsc]:
    with SmscThread(SmscConfig(receipt_delay_ms=20, receipt_id="decimal", receipt_tlvs=False)) as sim:
        yield sim


async def _until(check: Any, seconds: float = 20.0) -> Any:
    """Poll ``check`` over HTTP as a client would, until it answers something (bounded)."""
    with anyio.fail_after(seconds):
        while True:
            got = await check()
            if got:
                return got
            await anyio.sleep(0.02)


async def test_receipts_and_an_opt_out_reply_arrive_over_the_bind(
    anyio_backend: object, tmp_path: Path, smsc: Smsc, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_SMPP_PASSWORD", "secret")
    engine = tmp_path / "engine.toml"
    engine.write_text(ENGINE.format(port=smsc.port), encoding="utf-8")
    key = KeyRing(tmp_path / "api-keys.json").create("tests")
    numbers = ["13800138001", "13800138666", "13800138002"]  # the middle one: an undeliverable receipt
    async with (
        serving(engine) as (url, _svc),
        httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}) as c,
    ):
        r = await c.post(
            "/v1/messages",
            json={
                "priority": "transactional",
                "messages": [{"to": n, "text": "您的验证码是 4321"} for n in numbers],
            },
        )
        assert r.status_code == 202, r.text
        ids = [m["id"] for m in r.json()["messages"]]

        async def settled() -> list[dict[str, Any]] | None:
            views = [(await c.get(f"/v1/messages/{i}")).json() for i in ids]
            return views if all(v["state"] in ("delivered", "failed") for v in views) else None

        views = await _until(settled)
        assert [v["state"] for v in views] == ["delivered", "failed", "delivered"]
        assert views[1]["delivery"]["code"].startswith("UNDELIV")
        # the receipts wrote the ids in decimal; the API shows the canonical form the bind answered
        assert all(v["provider_id"] and v["gateway"] == "smsc" for v in views)
        smsc.inject_mo("8613800138001", "R")
        store = SqliteStore(tmp_path / "pigeon.db")
        try:

            async def opted_out() -> dict[str, Any] | None:
                found = store.optout_records(["+8613800138001"])
                return found or None

            found = await _until(opted_out)
        finally:
            store.close()
        assert {r.source for r in found.values()} == {"mo"}
        metrics = (await c.get("/metrics")).text
        assert 'pigeon_delivery_reports_total{gateway="smsc",status="failed"} 1.0' in metrics
        # the bind's own series (plugins/session_core/metrics.py)
        assert 'pigeon_bind_receipts_total{bind="0",gateway="smsc",status="delivered"} 2.0' in metrics
        assert 'pigeon_bind_receipts_total{bind="0",gateway="smsc",status="failed"} 1.0' in metrics
        assert 'pigeon_bind_window_size{bind="0",gateway="smsc"} 10.0' in metrics
        assert 'pigeon_bind_response_seconds_count{bind="0",gateway="smsc"} 3.0' in metrics
        assert 'pigeon_bind_throttled_total{bind="0",gateway="smsc"} 0.0' in metrics
    assert smsc.stats["unbind"] >= 1  # the service unbound on its way out
