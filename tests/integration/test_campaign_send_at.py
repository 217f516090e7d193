"""``POST /v1/campaigns`` with ``send_at``: checked at once, ``scheduled`` until then, the first message within
a second of it (the worker starts paused a few seconds before); a cancelled schedule sends nothing. Both loops."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx
import pytest

from loadtests.simulator import Simulator
from tests.integration.service_harness import serving, write_campaign, write_engine

pytestmark = pytest.mark.anyio


async def _view(c: httpx.AsyncClient, auth: dict[str, str], cid: str) -> dict[str, object]:
    r = await c.get(f"/v1/campaigns/{cid}", headers=auth)
    assert r.status_code == 200, r.text
    got: dict[str, object] = r.json()
    return got


async def _finished(c: httpx.AsyncClient, auth: dict[str, str], cid: str) -> None:
    with anyio.fail_after(30):
        while True:  # polling the service over HTTP, as a client would
            if (await _view(c, auth, cid))["state"] == "finished":
                return
            await anyio.sleep(0.05)


async def test_a_scheduled_campaign_starts_sending_within_a_second_of_send_at(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, key = write_engine(tmp_path, simulator.port)
    write_campaign(tmp_path, 20, "later")  # (both read campaigns/seg.csv: the last one written)
    write_campaign(tmp_path, 20, "spring")
    auth = {"authorization": f"Bearer {key}"}
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, timeout=30) as c:
        bad = await c.post(
            "/v1/campaigns", json={"file": "spring.toml", "send_at": time.time() + 400 * 86400}, headers=auth
        )
        assert bad.status_code == 422 and "send_at" in bad.json()["detail"]
        send_at = time.time() + 6.0
        r = await c.post("/v1/campaigns", json={"file": "spring.toml", "send_at": send_at}, headers=auth)
        assert r.status_code == 202, r.text
        assert r.json()["state"] == "scheduled" and r.json()["send_at"] == send_at
        listed = (await c.get("/v1/campaigns?state=scheduled", headers=auth)).json()
        assert [x["id"] for x in listed["campaigns"]] == ["spring"]
        # a second one, cancelled while scheduled: nothing of it is ever sent
        r = await c.post(
            "/v1/campaigns", json={"file": "later.toml", "send_at": time.time() + 3600}, headers=auth
        )
        assert r.status_code == 202 and r.json()["state"] == "scheduled"
        r = await c.post("/v1/campaigns/later/cancel", headers=auth)
        assert r.status_code == 200 and r.json()["state"] == "cancelled" and r.json()["done"] is True
        await anyio.sleep(max(0.0, send_at - 1.0 - time.time()))
        assert simulator.log == []  # nothing before its time (the worker is up, paused)
        await _finished(c, auth, "spring")
    first = min(t for t, *_ in simulator.log)  # the simulator's monotonic clock, when the request was read
    wall_first = time.time() - (time.monotonic() - first)
    print(f"first message {wall_first - send_at:+.3f} s after send_at")
    assert len(simulator.log) == 20
    assert send_at - 0.05 <= wall_first <= send_at + 1.0, wall_first - send_at
    assert all(mid.startswith("spring-") for _, mid, *_ in simulator.log)


async def test_a_schedule_outlives_a_restart_of_the_service(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, key = write_engine(tmp_path, simulator.port)
    write_campaign(tmp_path, 10, "autumn")
    auth = {"authorization": f"Bearer {key}"}
    send_at = time.time() + 12.0
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, timeout=30) as c:
        r = await c.post("/v1/campaigns", json={"file": "autumn.toml", "send_at": send_at}, headers=auth)
        assert r.status_code == 202 and r.json()["state"] == "scheduled"
    # stopped (SIGTERM-like drain) well before its time; started again
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, timeout=30) as c:
        with anyio.fail_after(10):
            while True:  # restored in the background as the service starts
                r = await c.get("/v1/campaigns/autumn", headers=auth)
                if r.status_code == 200:
                    break
                await anyio.sleep(0.05)
        assert r.json()["state"] == "scheduled" and r.json()["send_at"] == send_at
        assert simulator.log == []
        await _finished(c, auth, "autumn")
    first = min(t for t, *_ in simulator.log)
    wall_first = time.time() - (time.monotonic() - first)
    assert len(simulator.log) == 10
    assert send_at - 0.05 <= wall_first <= send_at + 1.0, wall_first - send_at
