"""``GET /v1/messages`` and ``GET /v1/campaigns``: filters, paging, masked numbers, scopes, on both loops."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from engine.sending.webhooks import sign
from engine.service.apikeys import KeyRing
from loadtests.simulator import Simulator
from tests.integration.service_harness import SECRET, serving, write_campaign, write_engine

pytestmark = pytest.mark.anyio


async def _until(check: Callable[[], Any], seconds: float = 60.0) -> Any:
    with anyio.fail_after(seconds):
        while True:  # polling the service over HTTP, as a client would
            got = await check()
            if got:
                return got
            await anyio.sleep(0.05)


async def _pages(c: httpx.AsyncClient, path: str, key: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a list, page by page."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        r = await c.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        page = r.json()
        items += page[key]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def test_messages_are_listed_newest_first_filtered_and_paged_with_numbers_masked(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, key = write_engine(tmp_path, simulator.port)
    sender = KeyRing(tmp_path / "api-keys.json").create("sender", scopes=["send"])
    numbers = ["13800138000", "13900139000", "13700137000"]
    async with (
        serving(engine) as (url, _),
        httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}) as c,
    ):
        raw = json.dumps(
            {"replies": [{"from": numbers[1], "text": "退订", "at": time.time()}]}, ensure_ascii=False
        )
        headers = {
            "content-type": "application/json",
            "x-pigeon-signature": sign(SECRET.encode(), raw.encode(), int(time.time())),
        }
        assert (await c.post("/v1/webhooks/sim/replies", content=raw, headers=headers)).status_code == 200
        ids: list[str] = []
        for priority in ("transactional", "marketing", "transactional"):
            body = {"priority": priority, "messages": [{"to": n, "text": "您好"} for n in numbers]}
            r = await c.post("/v1/messages", json=body)
            assert r.status_code == 202, r.text
            ids += [m["id"] for m in r.json()["messages"]]
        everything = await _pages(c, "/v1/messages", "messages", limit=4)
        assert [m["id"] for m in everything] == ids[::-1]  # newest first, each once, across pages
        assert {m["to"] for m in everything} == {"138****8000", "139****9000", "137****7000"}
        mine = (await c.get("/v1/messages", params={"to": "+86 138-0013-8000"})).json()
        assert [m["id"] for m in mine["messages"]] == [ids[6], ids[3], ids[0]] and mine["next_cursor"] is None
        marketing = await _pages(c, "/v1/messages", "messages", campaign="api-marketing", limit=1)
        assert [m["id"] for m in marketing] == ids[3:6][::-1]
        suppressed = (await c.get("/v1/messages", params={"state": "suppressed"})).json()["messages"]
        assert [(m["id"], m["reason"]) for m in suppressed] == [(ids[4], "opted_out")]
        both = (
            await c.get("/v1/messages", params={"to": numbers[1], "campaign": "api-transactional"})
        ).json()
        assert [m["id"] for m in both["messages"]] == [ids[7], ids[1]]
        for params, words in (
            ({"limit": "0"}, "limit"),
            ({"limit": "1001"}, "limit"),
            ({"limit": "²"}, "limit"),
            ({"cursor": "!!"}, "cursor"),
            ({"cursor": "bm90IGpzb24"}, "cursor"),
            ({"to": "12345"}, "to"),
            ({"state": "lost"}, "state"),
            ({"campaign": "spring"}, "GET /v1/campaigns/{id}"),
            ({"sort": "asc"}, "unknown query parameter 'sort'"),
        ):
            r = await c.get("/v1/messages", params=params)
            assert r.status_code == 422 and words in r.json()["detail"], (params, r.text)
        r = await c.get("/v1/messages", params=[("state", "queued"), ("state", "failed")])
        assert r.status_code == 422
        r = await c.get("/v1/messages", headers={"authorization": f"Bearer {sender}"})
        assert r.status_code == 403 and "`read` scope" in r.json()["detail"]
        assert "13800138000" not in (await c.get("/v1/messages")).text


async def test_campaigns_are_listed_newest_first_filtered_and_paged(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, key = write_engine(tmp_path, simulator.port)
    for cid in ("first", "second", "third"):
        write_campaign(tmp_path, 20, cid)
    async with (
        serving(engine) as (url, _),
        httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}) as c,
    ):
        r = await c.post(
            "/v1/messages",
            json={"priority": "transactional", "messages": [{"to": "13800138000", "text": "您好"}]},
        )
        assert r.status_code == 202
        for cid in ("first", "second", "third"):
            assert (await c.post("/v1/campaigns", json={"file": f"{cid}.toml"})).status_code == 202
        assert (await c.post("/v1/campaigns/third/cancel")).status_code == 200

        async def settled() -> list[dict[str, Any]] | None:
            listed = await _pages(c, "/v1/campaigns", "campaigns", limit=1)
            return listed if {x["state"] for x in listed} <= {"finished", "cancelled"} else None

        listed = await _until(settled)
        assert [x["id"] for x in listed] == ["third", "second", "first"]  # newest first; no api-* streams
        assert [x["state"] for x in listed] == ["cancelled", "finished", "finished"]
        assert all(
            x["kind"] == "marketing" and x["file"] == f"{x['id']}.toml" and x["runs"] >= 1 for x in listed
        )
        done = (await c.get("/v1/campaigns", params={"state": "finished"})).json()
        assert [x["id"] for x in done["campaigns"]] == ["second", "first"] and done["next_cursor"] is None
        assert (await c.get("/v1/campaigns", params={"kind": "transactional"})).json()["campaigns"] == []
        for params in ({"state": "lost"}, {"cursor": "WyJ4Il0"}, {"limit": "-1"}, {"id": "first"}):
            assert (await c.get("/v1/campaigns", params=params)).status_code == 422, params
    # a new process knows them from the ledger (the file is known only to the one that started them)
    async with (
        serving(engine) as (url, _),
        httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}) as c,
    ):
        again = (await c.get("/v1/campaigns")).json()["campaigns"]
        assert [(x["id"], x["state"], x["file"]) for x in again] == [
            ("third", "cancelled", ""),
            ("second", "finished", ""),
            ("first", "finished", ""),
        ]
