"""Opaque message ids across restarts, and what a later process shows of an earlier one's messages."""

from __future__ import annotations

import base64
import itertools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from engine.service.apikeys import KeyRing
from loadtests.simulator import Simulator
from tests.integration.service_harness import serving, write_engine

pytestmark = pytest.mark.anyio

ID = re.compile(r"^msg_[a-z2-7]{20}$")


async def _until(check: Callable[[], Any], seconds: float = 30.0) -> Any:
    with anyio.fail_after(seconds):
        while True:
            got = await check()
            if got:
                return got
            await anyio.sleep(0.05)


def _bits(mid: str) -> int:
    return int.from_bytes(base64.b32decode(mid[4:].upper() + "===="), "big")


async def _run(engine: Path, key: str, numbers: list[str]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """One process of the service: post ``numbers`` (transactional), wait until each is submitted;
    its ids and what GET /v1/messages/{id} said of each."""
    async with (
        serving(engine) as (url, _),
        httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}) as c,
    ):
        body = {"priority": "transactional", "messages": [{"to": n, "text": "订单已发货"} for n in numbers]}
        r = await c.post("/v1/messages", json=body)
        assert r.status_code == 202, r.text
        ids = [m["id"] for m in r.json()["messages"]]

        async def views() -> dict[str, dict[str, Any]] | None:
            got = {i: (await c.get(f"/v1/messages/{i}")).json() for i in ids}
            return got if all(v["state"] == "submitted" for v in got.values()) else None

        return ids, await _until(views)


async def test_ids_are_opaque_never_reused_and_found_after_restarts_with_what_was_accepted(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, key = write_engine(tmp_path, simulator.port)
    reader = KeyRing(tmp_path / "api-keys.json").create("reader", scopes=["read", "numbers"])
    runs = [[f"138{r}{i:07d}" for i in range(40)] for r in range(3)]
    first, first_views = await _run(engine, key, runs[0])
    second, _ = await _run(engine, key, runs[1])  # a restart on the same store
    third, _ = await _run(engine, key, runs[2])  # and another
    every = first + second + third
    assert all(ID.match(i) for i in every), every[:3]
    assert len(set(every)) == 120  # no id given twice, across the restarts
    # Not sequential, nothing to guess: 96 random bits each, about half of them differ from one
    # id to the next, and issue order is not sort order.
    bits = [_bits(i) for i in every]
    flips = [(a ^ b).bit_count() for a, b in itertools.pairwise(bits)]
    assert 30 < sum(flips) / len(flips) < 66
    assert sorted(every) != every and sorted(first) != first
    async with (
        serving(engine) as (url, _),
        httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}) as c,
    ):
        for mid, number in zip(first, runs[0], strict=True):  # three processes later
            v = (await c.get(f"/v1/messages/{mid}")).json()
            before = first_views[mid]
            assert v["id"] == mid and v["state"] == "submitted", v
            assert v["to"] == f"{number[:3]}****{number[-4:]}" == before["to"]
            for k in ("carrier", "parts", "accepted_at", "priority", "campaign", "gateway", "provider_id"):
                assert v[k] == before[k], (k, v, before)
            assert v["carrier"] == "cm" and v["parts"] == 1 and v["accepted_at"] > 0
        full = (
            await c.get(f"/v1/messages/{second[0]}", headers={"authorization": f"Bearer {reader}"})
        ).json()
        assert full["to"] == "+86" + runs[1][0]  # the `numbers` scope shows it whole
        assert (await c.get("/v1/messages/msg_aaaaaaaaaaaaaaaaaaaa")).status_code == 404
        # the ledger's own id of a message is still looked up (as before opaque ids)
        ledger_id = (await c.get("/v1/messages/api-transactional-1")).json()
        assert ledger_id["state"] == "submitted" and ledger_id["campaign"] == "api-transactional"


async def test_a_suppressed_message_of_an_earlier_process_keeps_its_state_and_recipient(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, key = write_engine(tmp_path, simulator.port)
    auth = {"authorization": f"Bearer {key}"}
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, headers=auth) as c:
        r = await c.post(
            "/v1/messages",
            json={"priority": "marketing", "messages": [{"to": "13800138000", "text": "上新"}]},
        )
        assert r.status_code == 202, r.text
        (m,) = r.json()["messages"]
        before = (await c.get(f"/v1/messages/{m['id']}")).json()
    assert before["state"] in ("deferred", "queued", "submitting", "submitted")  # (quiet hours or not)
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, headers=auth) as c:
        after = (await c.get(f"/v1/messages/{m['id']}")).json()
    assert after["to"] == "138****8000" and after["accepted_at"] == before["accepted_at"]
    assert after["priority"] == "marketing" and after["campaign"] == "api-marketing"
    if before["state"] == "deferred":
        assert after["state"] == "deferred" and after["reason"] == "outside_send_window"
    else:
        assert after["carrier"] == "cm" and after["parts"] == 1
