"""Tracked links: codes billed before sending, the redirector of ``pigeon serve``, clicks once, in the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from engine.core.config import load_engine
from engine.state.links import LinkStore, links_path
from loadtests.simulator import Simulator
from tests.integration.service_harness import serving, write_engine

pytestmark = pytest.mark.anyio
ROWS = 300
BROWSER = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 MicroMessenger/8.0"
TARGET = "https://shop.example.com/d11?from=sms"


def _campaign(tmp_path: Path, cid: str, mode: str, holdout: float = 0.1) -> None:
    d = tmp_path / "campaigns"
    d.mkdir(exist_ok=True)
    (d / f"{cid}.csv").write_text(
        "phone,group,name\n" + "".join(f"1380{i:07d},{'A' if i % 2 else 'B'},客{i}\n" for i in range(ROWS)),
        encoding="utf-8",
    )
    (d / f"{cid}.toml").write_text(
        f"""id = "{cid}"
kind = "marketing"
[segment]
source = "csv"
path = "{cid}.csv"
[template]
signature = "小鹅优选"
text = "{{name}}，双11专享：全场满200减30，会员再享95折，前100名下单送定制帆布袋一个，{{link}}"
[policy]
send_window = ""
[outcomes]
holdout = {holdout}
[links]
mode = "{mode}"
target = "{TARGET}"
domain = "https://s.shop.cn/l"
""",
        encoding="utf-8",
    )


async def _run(c: httpx.AsyncClient, cid: str) -> None:
    assert (await c.post("/v1/campaigns", json={"file": f"{cid}.toml"})).status_code == 202
    with anyio.fail_after(60):
        while True:  # polling the service over HTTP, as a client would
            if (await c.get(f"/v1/campaigns/{cid}")).json()["state"] == "finished":
                return
            await anyio.sleep(0.05)


def _sent_links(simulator: Simulator, engine: Path, cid: str) -> dict[int, str]:
    """The code of each row the gateway accepted (its parts checked: the link pushes the text past
    one part — 70 characters — so every message is billed 2)."""
    rows = {int(mid.rsplit("-", 1)[1]) for _, mid, _, _, _ in simulator.log}
    assert {parts for *_, parts in simulator.log} == {2}
    store = LinkStore(links_path(load_engine(engine).store_path))
    try:
        codes = store.codes(cid)
    finally:
        store.close()
    return {r: codes.get(r, codes.get(0, "")) for r in rows}


async def test_recipient_links_are_billed_redirected_and_counted_once(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, key = write_engine(tmp_path, simulator.port)
    _campaign(tmp_path, "d11", "recipient")
    async with (
        serving(engine) as (url, _),
        httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=60) as c,
    ):
        await _run(c, "d11")
        links = _sent_links(simulator, engine, "d11")
        # every sent recipient has its own code (the held-out tenth: none sent)
        assert len(set(links.values())) == len(links) > 250
        assert all(len(code) == 7 for code in links.values())
        codes = list(links.values())
        first, second, third = codes[:3]
        anon = httpx.AsyncClient(base_url=url, timeout=30)  # no API key: the redirector is public
        async with anon:
            r = await anon.get(f"/l/{first}", headers={"user-agent": BROWSER})
            assert r.status_code == 302 and r.headers["location"] == TARGET
            assert (await anon.get(f"/l/{first}", headers={"user-agent": BROWSER})).status_code == 302
            # not a person: redirected, not counted
            assert (await anon.head(f"/l/{second}", headers={"user-agent": BROWSER})).status_code == 302
            for ua in ("WhatsApp/2.23.20", "Mozilla/5.0 (compatible; Googlebot/2.1)", "curl/8.1", ""):
                assert (await anon.get(f"/l/{second}", headers={"user-agent": ua})).status_code == 302
            prefetch = {"user-agent": BROWSER, "sec-purpose": "prefetch"}
            assert (await anon.get(f"/l/{second}", headers=prefetch)).status_code == 302
            assert (await anon.get(f"/l/{third}", headers={"user-agent": BROWSER})).status_code == 302
            for bad in ("zzzzzzz", "..%2F..%2Fetc%2Fpasswd", "a" * 40, "%00"):
                assert (await anon.get(f"/l/{bad}", headers={"user-agent": BROWSER})).status_code == 404
        report: dict[str, Any] = (await c.get("/v1/campaigns/d11/outcomes")).json()
        scraped = (await c.get("/metrics")).text
        # 3 taps counted; HEAD, four robots and a prefetch redirected uncounted; 3 unknown codes
        # (the fourth, with its slashes, never reaches the redirector's route: the router's 404)
        for outcome, n in (("counted", 3), ("robot", 6), ("unknown", 3)):
            assert f'pigeon_link_clicks_total{{outcome="{outcome}"}} {n}.0' in scraped, outcome
    store = LinkStore(links_path(load_engine(engine).store_path))
    try:
        by_row, by_group = store.clicks("d11")
    finally:
        store.close()
    assert sorted(by_row.values()) == [1, 2] and by_group == {}  # first: 2 taps, one recipient
    assert report["total"]["clicks"] == 2  # recipients who clicked, not taps


async def test_group_links_are_one_per_group_and_count_visitors(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, key = write_engine(tmp_path, simulator.port)
    _campaign(tmp_path, "g11", "group", holdout=0.0)
    async with (
        serving(engine) as (url, _),
        httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=60) as c,
    ):
        await _run(c, "g11")
        store = LinkStore(links_path(load_engine(engine).store_path))
        try:
            group_codes = [
                c for (c,) in store.db.execute("SELECT code FROM link_codes WHERE campaign = 'g11'")
            ]
        finally:
            store.close()
        assert len(group_codes) == 2 and {p for *_, p in simulator.log} == {2}  # one constant link per group
        links = dict(enumerate(group_codes))
        a, b = sorted(set(links.values()))
        async with httpx.AsyncClient(base_url=url, timeout=30) as anon:
            for ua in (BROWSER, BROWSER, BROWSER + " other"):
                assert (await anon.get(f"/l/{a}", headers={"user-agent": ua})).status_code == 302
            assert (await anon.get(f"/l/{b}", headers={"user-agent": BROWSER})).status_code == 302
        report = (await c.get("/v1/campaigns/g11/outcomes")).json()
    clicks = {g["group"]: g["clicks"] for g in report["groups"]}
    assert sorted(clicks.values()) == [1, 2]  # two visitors on one group's link, one on the other's
    assert report["total"]["clicks"] == 3


async def test_many_clicks_at_once_are_each_recorded_once(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    """2,000 taps on 1,000 codes, 50 at a time, each code twice and out of order: 1,000 click rows,
    each with 2 hits (loadtests/redirector_clicks.py does 10,000)."""
    engine, _ = write_engine(tmp_path, simulator.port)
    store = LinkStore(links_path(load_engine(engine).store_path))
    try:
        codes = store.assign(
            "load", [str(r) for r in range(2, 1002)], ["all"] * 1000, list(range(2, 1002)), TARGET, 7
        )
    finally:
        store.close()
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, timeout=60) as anon:
        order = codes + codes[::-1]
        sem = anyio.Semaphore(50)
        statuses: list[int] = []

        async def tap(code: str) -> None:
            async with sem:
                statuses.append((await anon.get(f"/l/{code}", headers={"user-agent": BROWSER})).status_code)

        async with anyio.create_task_group() as tg:
            for code in order:
                tg.start_soon(tap, code)
    assert statuses.count(302) == 2000
    store = LinkStore(links_path(load_engine(engine).store_path))
    try:
        by_row, _ = store.clicks("load")
    finally:
        store.close()
    assert len(by_row) == 1000 and set(by_row.values()) == {2}
