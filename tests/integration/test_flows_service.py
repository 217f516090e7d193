"""Flows in ``pigeon serve`` on both event loops: a simulated shop's order events in over HTTP, timed steps out
to the gateway simulator — each once, at its time, none after its cancel event, marketing in its window and caps
(the shop and its checks: ``loadtests/flow_shop.py``, which runs it at 100,000 orders) — and the flows' API,
back-fills, pausing and metrics.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio
import httpx
import pytest

from engine.service.core import Service
from loadtests.flow_shop import (
    EXTRA,
    FLOWS,
    TOLERANCE,
    ShopClock,
    caught_up,
    check,
    run_shop,
)
from loadtests.simulator import Simulator
from tests.integration.service_harness import write_engine

pytestmark = pytest.mark.anyio

SH = ZoneInfo("Asia/Shanghai")
ORDERS = int(os.environ.get("PIGEON_SHOP_ORDERS", "150"))
"""Orders of the simulated shop (CI-sized; ``python -m loadtests.flow_shop --orders 100000`` for the issue's)."""


async def test_a_simulated_shops_steps_fire_once_on_time_never_after_their_cancel(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    """The shop of ``loadtests/flow_shop.py`` at CI size, checked message by message there."""
    run = await run_shop(tmp_path, simulator.port, ORDERS)
    figures = check(run, simulator.log)
    assert figures["twins"] >= 10  # customers whose two review requests fell on one day
    assert figures["steps_cancelled"] > 0 and figures["late_max_s"] <= TOLERANCE


async def test_events_and_flows_over_http_scopes_problems_duplicates_pause_and_resume(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    from engine.service.apikeys import KeyRing
    from engine.service.serve import bind, run

    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "shipped.toml").write_text(FLOWS["shipped"], encoding="utf-8")
    engine, key = write_engine(
        tmp_path, simulator.port, templates=EXTRA.replace("batch = 200", "batch = 200\nmax_events = 3")
    )
    sender_only = KeyRing(tmp_path / "api-keys.json").create("crm", scopes=["send"])
    clock = ShopClock(datetime(2026, 11, 10, 12, 0, tzinfo=SH).timestamp())
    holder: list[Service] = []
    started = anyio.Event()
    stop = anyio.Event()
    sock = bind("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    def on_start(svc: Service) -> None:
        holder.append(svc)
        started.set()

    auth = {"authorization": f"Bearer {key}"}
    one = {
        "id": "s1",
        "type": "order_shipped",
        "phone": "13800138000",
        "order_id": "A",
        "fields": {"item": "围巾", "tracking": "SF1"},
    }
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: run(engine, sock, stop=stop, handle_signals=False, started=on_start, clock=clock)
        )
        with anyio.fail_after(30):
            await started.wait()
        svc = holder[0]
        async with httpx.AsyncClient(base_url=url) as c:

            async def problem(r: httpx.Response, status: int, word: str) -> None:
                assert r.status_code == status, r.text
                assert r.headers["content-type"].startswith("application/problem+json")
                assert word in r.json()["detail"], r.json()

            await problem(await c.post("/v1/events", json={"events": [one]}), 401, "API key")
            await problem(
                await c.post(
                    "/v1/events", json={"events": [one]}, headers={"authorization": f"Bearer {sender_only}"}
                ),
                403,
                "`events` scope",
            )
            await problem(await c.post("/v1/events", json={"events": []}, headers=auth), 422, "empty")
            await problem(
                await c.post("/v1/events", json={"events": [one] * 4}, headers=auth), 413, "max_events"
            )
            await problem(
                await c.post(
                    "/v1/events", content=b"{not json", headers={**auth, "content-type": "application/json"}
                ),
                400,
                "",
            )
            await problem(
                await c.post("/v1/events", json={"events": [{**one, "colour": "red"}]}, headers=auth),
                422,
                "colour",
            )
            await problem(await c.post("/v1/flows/shipped/stop", headers=auth), 404, "pause or resume")
            await problem(await c.post("/v1/flows/nope/pause", headers=auth), 404, "shipped")

            # paused: the event schedules its step, which waits for the resume
            r = await c.post("/v1/flows/shipped/pause", headers=auth)
            assert r.status_code == 200 and r.json()["paused"] is True
            r = await c.post(
                "/v1/events", json={"events": [one, {**one, "id": "bad", "phone": "123"}]}, headers=auth
            )
            assert r.status_code == 200
            body = r.json()
            assert [e["state"] for e in body["events"]] == ["accepted", "rejected"]
            assert body["scheduled"] == 1 and body["events"][1]["reason"].startswith("phone:")
            again = (await c.post("/v1/events", json={"events": [one]}, headers=auth)).json()
            assert again["duplicates"] == 1 and again["scheduled"] == 0
            clock.jump_to(clock.time() + 60)
            await anyio.sleep(0.5)  # ten polls of the runner: a paused flow's step stays pending
            assert simulator.log == []
            steps = (await c.get("/v1/customers/13800138000/flows", headers=auth)).json()
            assert steps["phone"] == "138****8000" and [s["state"] for s in steps["steps"]] == ["pending"]
            assert "13800138000" not in str(steps)
            r = await c.post("/v1/flows/shipped/resume", headers=auth)
            assert r.status_code == 200 and r.json()["paused"] is False
            await caught_up(svc)  # the step is due again: until it is fired and handed over
            listing = (await c.get("/v1/flows", headers=auth)).json()
            assert listing["flows"][0]["timers"] == {"fired": 1}
            metrics = (await c.get("/metrics", headers=auth)).text
            assert 'pigeon_flow_events_total{outcome="accepted"} 1.0' in metrics
            assert 'pigeon_flow_events_total{outcome="duplicate"} 1.0' in metrics
            assert "pigeon_flow_timers_fired_total 1.0" in metrics
            assert 'pigeon_flow_steps_total{outcome="sent"} 1.0' in metrics
        stop.set()
    assert len(simulator.log) == 1 and simulator.log[0][2] == "+8613800138000"


async def test_a_back_fill_imported_while_the_service_runs_is_fired_by_it_and_not_twice(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    """``pigeon events import`` writes the store the running service reads: its steps go out once,
    and importing the same file again changes nothing."""
    from engine.cli.main import main
    from tests.integration.service_harness import serving

    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "shipped.toml").write_text(FLOWS["shipped"], encoding="utf-8")
    engine, _ = write_engine(tmp_path, simulator.port, templates=EXTRA)
    now = time.time()
    lines = [
        json.dumps(
            {
                "id": f"s{i}",
                "type": "order_shipped",
                "phone": f"1380013{i:04d}",
                "order_id": f"T{i}",
                "at": now - 5,
                "fields": {"item": "围巾", "tracking": f"SF{i}"},
            },
            ensure_ascii=False,
        )
        for i in range(30)
    ]
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\nnot an event\n", encoding="utf-8")
    argv = ["events", "import", str(tmp_path / "events.jsonl"), "--engine", str(engine), "--json"]
    async with serving(engine) as (_, svc):
        assert (
            await anyio.to_thread.run_sync(main, argv) == 2
        )  # one line is not an event: listed, the rest taken
        await caught_up(svc)
        assert len(simulator.log) == 30
        assert await anyio.to_thread.run_sync(main, argv) == 2  # again: every event a duplicate
        await anyio.sleep(0.3)
        await caught_up(svc)
    assert sorted(to for _, _, to, *_ in simulator.log) == [f"+861380013{i:04d}" for i in range(30)]
