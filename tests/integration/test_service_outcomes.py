"""``GET /v1/campaigns/{id}/outcomes`` on a running service, on both loops: the report as JSON, CSV, HTML."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest

from engine.core.holdout import held_out
from engine.sending.webhooks import sign
from engine.service.apikeys import KeyRing
from loadtests.simulator import Simulator
from tests.integration.service_harness import SECRET, serving, write_campaign, write_engine

pytestmark = pytest.mark.anyio
ROWS = 400


async def test_outcomes_of_a_campaign_the_service_ran(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, key = write_engine(tmp_path, simulator.port)
    write_campaign(tmp_path, ROWS, "spring")
    campaign = tmp_path / "campaigns" / "spring.toml"
    campaign.write_text(campaign.read_text("utf-8") + "[outcomes]\nholdout = 0.1\n", encoding="utf-8")
    sender = KeyRing(tmp_path / "api-keys.json").create("sender", scopes=["send"])
    held = int(held_out(np.arange(13800000000, 13800000000 + ROWS), "spring", 0.1).sum())
    async with (
        serving(engine) as (url, _),
        httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=60) as c,
    ):
        assert (await c.post("/v1/campaigns", json={"file": "spring.toml"})).status_code == 202
        with anyio.fail_after(60):
            while True:  # polling the service over HTTP, as a client would
                if (await c.get("/v1/campaigns/spring")).json()["state"] == "finished":
                    break
                await anyio.sleep(0.05)
        # two recipients answer: one asks to stop, one just replies; a held-out one replies too
        mask = held_out(np.arange(13800000000, 13800000000 + ROWS), "spring", 0.1)
        sent_numbers = [str(13800000000 + i) for i in np.flatnonzero(~mask)[:2].tolist()]
        held_number = str(13800000000 + int(np.flatnonzero(mask)[0]))
        raw = json.dumps(
            {
                "replies": [
                    {"from": sent_numbers[0], "text": "退订", "at": time.time()},
                    {"from": sent_numbers[1], "text": "好的，明天去店里", "at": time.time()},
                    {"from": held_number, "text": "？", "at": time.time()},
                ]
            },
            ensure_ascii=False,
        )
        headers = {
            "content-type": "application/json",
            "x-pigeon-signature": sign(SECRET.encode(), raw.encode(), int(time.time())),
        }
        assert (await c.post("/v1/webhooks/sim/replies", content=raw, headers=headers)).status_code == 200
        r = await c.get("/v1/campaigns/spring/outcomes")
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
        report: dict[str, Any] = r.json()
        total = report["total"]
        assert total["holdout"] == held and total["sent"] == ROWS - held and total["targets"] == ROWS
        assert total["cost"] == pytest.approx(total["parts"] * 0.05)  # all China Mobile
        assert total["opt_outs"] == 1 and total["replies"] == 1  # sent recipients only; 退订 is an opt-out
        assert [g["group"] for g in report["groups"]] == ["all"]  # the segment has no group column
        csv_text = (await c.get("/v1/campaigns/spring/outcomes", params={"format": "csv"})).text
        assert csv_text.splitlines()[0].startswith("group,variant,carrier,targets,sent")
        page = await c.get("/v1/campaigns/spring/outcomes", params={"format": "html"})
        assert page.headers["content-type"].startswith("text/html") and "<svg" in page.text
        assert (await c.get("/v1/campaigns/nope/outcomes")).status_code == 404
        assert (await c.get("/v1/campaigns/..%2F..%2Fetc/outcomes")).status_code == 404
        assert (await c.get("/v1/campaigns/spring/outcomes", params={"format": "pdf"})).status_code == 422
        assert (await c.get("/v1/campaigns/spring/outcomes", params={"x": "1"})).status_code == 422
        denied = await c.get("/v1/campaigns/spring/outcomes", headers={"authorization": f"Bearer {sender}"})
        assert denied.status_code == 403
        # the campaign file gone: the report cannot read the segment again, and says so
        campaign.unlink()
        gone = await c.get("/v1/campaigns/spring/outcomes")
        assert gone.status_code == 409 and "campaign file" in gone.json()["detail"]
