"""Blasts of ``pigeon serve`` in their worker processes: control, opt-outs and metrics, on both loops."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from engine.sending.webhooks import sign
from loadtests.simulator import SimConfig, Simulator, SimulatorThread
from tests.integration.service_harness import SECRET, serving, write_campaign, write_engine

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _webhook_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIGEON_TEST_WEBHOOK_SECRET", SECRET)


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    with SimulatorThread(SimConfig()) as sim:
        yield sim


async def _until(check: Callable[[], Any], what: str, seconds: float = 60.0) -> Any:
    """Poll ``check`` until it returns something truthy (bounded; not a timing assertion)."""
    with anyio.fail_after(seconds):
        while True:
            got = await check()
            if got:
                return got
            await anyio.sleep(0.05)


def _accepted(exposition: str) -> float:
    """The sum of ``pigeon_messages_total{outcome="accepted"}`` in an exposition."""
    return sum(
        float(m.group(1))
        for m in re.finditer(
            r'^pigeon_messages_total\{[^}]*outcome="accepted"[^}]*\} (\S+)$', exposition, re.M
        )
    )


async def test_a_blast_runs_in_a_worker_whose_metrics_the_service_serves(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    rows = 6000
    engine, key = write_engine(tmp_path, simulator.port, cm_rate=1000)
    write_campaign(tmp_path, rows, "spring")
    auth = {"authorization": f"Bearer {key}"}
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, headers=auth) as c:
        assert (await c.post("/v1/campaigns", json={"file": "spring.toml"})).status_code == 202

        view = (await c.get("/v1/campaigns/spring")).json()
        assert "metrics_url" not in view  # the worker serves nothing: no series without a key

        async def merged_while_running() -> bool:
            text = (await c.get("/metrics")).text
            both = 'pigeon_gateway_in_flight_limit{gateway="sim"} 8.0' in text  # 4 here + 4 there
            view: dict[str, Any] = (await c.get("/v1/campaigns/spring")).json()
            assert not view["done"] or both, "the blast ended before its metrics reached the service"
            return both

        await _until(merged_while_running, "the worker's series in the service's /metrics")

        async def finished() -> dict[str, Any] | None:
            view: dict[str, Any] = (await c.get("/v1/campaigns/spring")).json()
            return view if view["done"] else None

        view = await _until(finished, "the blast finished")
        assert view["state"] == "finished" and view["states"] == {"sent": rows}
        served = (await c.get("/metrics")).text
        assert _accepted(served) == rows  # the worker's last counts, kept by the service
        assert served.count("# TYPE pigeon_messages_total counter") == 1
        assert served.count("pigeon_build_info{") == 1
    logged = [mid for _, mid, *_ in simulator.log]
    assert len(logged) == len(set(logged)) == rows
    runs = list((tmp_path / "runs" / "service").glob("*/campaigns/spring/*/summary.json"))
    assert len(runs) == 1 and json.loads(runs[0].read_bytes())["states"] == {"sent": rows}


async def test_an_opt_out_reply_reaches_the_running_blast(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    rows = 1500
    engine, key = write_engine(tmp_path, simulator.port, cm_rate=500)
    write_campaign(tmp_path, rows, "late")
    auth = {"authorization": f"Bearer {key}"}
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, headers=auth) as c:
        assert (await c.post("/v1/campaigns", json={"file": "late.toml"})).status_code == 202
        assert (await c.post("/v1/campaigns/late/pause")).json()["state"] == "paused"
        last = f"1380{rows - 1:07d}"  # the segment's last row: not read while paused
        raw = json.dumps({"replies": [{"from": last, "text": "退订", "at": time.time()}]}).encode()
        headers = {
            "content-type": "application/json",
            "x-pigeon-signature": sign(SECRET.encode(), raw, int(time.time())),
        }
        r = await c.post("/v1/webhooks/sim/replies", content=raw, headers=headers)
        assert r.json() == {"received": 1, "optouts": 1}
        assert (await c.post("/v1/campaigns/late/resume")).json()["state"] == "running"

        async def finished() -> dict[str, Any] | None:
            view: dict[str, Any] = (await c.get("/v1/campaigns/late")).json()
            return view if view["done"] else None

        view = await _until(finished, "the blast finished")
        assert view["state"] == "finished"
        assert view["states"] == {"sent": rows - 1, "suppressed": 1}
        assert view["reasons"]["suppressed"] == {"opted_out": 1}
    sent_to = [to for _, _, to, *_ in simulator.log]
    assert len(sent_to) == rows - 1 and not any(to.endswith(last) for to in sent_to)
