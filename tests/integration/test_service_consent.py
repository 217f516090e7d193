"""The consent requirement on the API path: per key and per service, marketing only to consented numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from engine.service.apikeys import KeyRing
from engine.state.store import ConsentRecord
from engine.state.store.sqlite import SqliteStore
from loadtests.simulator import Simulator
from tests.integration.service_harness import serving, write_engine
from tests.integration.test_send import run_cli

pytestmark = pytest.mark.anyio

SENT = ("queued", "submitting", "submitted", "deferred")
"""What a message that passed the checks may be (deferred: quiet hours, when the test runs at night)."""


def _consent(tmp_path: Path, *numbers: str) -> None:
    store = SqliteStore(str(tmp_path / "pigeon.db"))
    try:
        store.add_consents(ConsentRecord(n, "checkout", "order A17") for n in numbers)
    finally:
        store.close()


async def _post(c: httpx.AsyncClient, key: str, priority: str, numbers: list[str]) -> list[dict[str, str]]:
    r = await c.post(
        "/v1/messages",
        headers={"authorization": f"Bearer {key}"},
        json={"priority": priority, "messages": [{"to": n, "text": "春季上新"} for n in numbers]},
    )
    assert r.status_code == 202, r.text
    return r.json()["messages"]  # type: ignore[no-any-return]


async def test_a_key_that_requires_consent_sends_marketing_only_to_consented_numbers(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, admin = write_engine(tmp_path, simulator.port)
    ring = KeyRing(tmp_path / "api-keys.json")
    strict = ring.create("strict", require_consent=True)
    loose = ring.create("loose")
    numbers = ["13800138000", "13900139000", "13700137000"]
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url) as c:
        _consent(tmp_path, "+8613800138000")  # imported while the service runs
        got = await _post(c, strict, "marketing", numbers)
        assert got[0]["state"] in SENT
        assert [(m["state"], m["reason"]) for m in got[1:]] == [("suppressed", "no_consent")] * 2
        _consent(tmp_path, "+8613900139000")  # and one more: seen by the next request
        again = await _post(c, strict, "marketing", numbers[1:])
        assert again[0]["state"] in SENT and (again[1]["state"], again[1]["reason"]) == (
            "suppressed",
            "no_consent",
        )
        assert all(m["state"] in SENT for m in await _post(c, loose, "marketing", numbers))  # no requirement
        assert all(
            m["state"] in SENT for m in await _post(c, strict, "transactional", numbers)
        )  # not marketing
        view = (
            await c.get(f"/v1/messages/{got[2]['id']}", headers={"authorization": f"Bearer {admin}"})
        ).json()
        assert (view["state"], view["reason"]) == ("suppressed", "no_consent")
        metrics = (await c.get("/metrics", headers={"authorization": f"Bearer {admin}"})).text
        listed = (
            await c.get(
                "/v1/messages", params={"state": "suppressed"}, headers={"authorization": f"Bearer {admin}"}
            )
        ).json()
        assert {m["id"] for m in listed["messages"]} == {got[1]["id"], got[2]["id"], again[1]["id"]}
    dropped = re.search(
        r'pigeon_stage_messages_dropped_total\{reason="no_consent",stage="require_consent"\} (\S+)', metrics
    )
    assert dropped is not None and float(dropped.group(1)) == 3
    # recorded in the ledger like any suppression: `pigeon report` counts them
    report = run_cli("report", "api-marketing", "--engine", str(engine), "--format", "json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["reasons"]["suppressed"]["no_consent"] == 3


async def test_the_service_can_require_consent_for_every_key(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, admin = write_engine(tmp_path, simulator.port, service_extra="require_consent = true")
    _consent(tmp_path, "+8613800138000")
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url) as c:
        got = await _post(c, admin, "marketing", ["13800138000", "13900139000"])
    assert got[0]["state"] in SENT and (got[1]["state"], got[1]["reason"]) == ("suppressed", "no_consent")
