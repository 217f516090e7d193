"""Blasts of ``pigeon serve`` in their worker processes: control, opt-outs and metrics, on both loops."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from engine.sending.webhooks import sign
from loadtests.simulator import Simulator
from tests.integration.service_harness import SECRET, serving, write_campaign, write_engine

pytestmark = pytest.mark.anyio


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


def test_a_worker_whose_service_is_killed_drains_by_itself_and_the_campaign_resumes_exactly(
    tmp_path: Path, simulator: Simulator
) -> None:
    """SIGKILL the service mid-blast: the worker sees its pipe close, stops reading, settles what it
    had in flight (nothing left ``submitting`` to end ``unknown`` on resume), logs only JSON lines
    and gives the campaign back; a new service resumes it and every recipient gets one message."""
    import os
    import signal
    import subprocess
    import sys

    from engine.state.ledger.store import Ledger

    rows = 6000
    engine, key = write_engine(tmp_path, simulator.port, cm_rate=1000, max_batch=50)
    write_campaign(tmp_path, rows, "spring")
    log = tmp_path / "serve.log"
    env = {**os.environ, "PIGEON_TEST_WEBHOOK_SECRET": SECRET}

    def start(n: int) -> tuple[subprocess.Popen[bytes], str]:
        with log.open("a") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "engine", "serve", "--engine", str(engine), "--port", "0"],
                stderr=stderr,
                env=env,
                cwd=tmp_path,
            )
        return proc, f"http://127.0.0.1:{_event(log, 'service.listening', n, proc)['port']}"

    auth = {"authorization": f"Bearer {key}"}
    proc, url = start(1)
    try:
        with httpx.Client(base_url=url, headers=auth) as c:
            assert c.post("/v1/campaigns", json={"file": "spring.toml"}).status_code == 202
            deadline = time.monotonic() + 60
            while c.get("/v1/campaigns/spring").json()["rows"] < 1000:  # mid-blast
                assert time.monotonic() < deadline
                time.sleep(0.05)
        worker = int(_event(log, "campaign.worker", 1)["pid"])
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 60
        while _alive(worker):  # the orphan drains, then ends by itself
            assert time.monotonic() < deadline, "the orphaned worker did not end"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = log.read_text(encoding="utf-8").splitlines()
    events = [json.loads(line)["event"] for line in lines if json.loads(line).get("event")]  # all JSON
    assert "campaign.orphaned" in events
    ledger = Ledger(tmp_path / "pigeon.db")
    try:
        states = ledger.counts("spring").states
    finally:
        ledger.close()
    assert set(states) <= {"submitted", "pending"}, states  # nothing in flight, nothing unknown
    sent_before = len(simulator.log)
    assert sent_before == states["submitted"] and 1000 <= sent_before < rows

    proc, url = start(2)  # a new service resumes the campaign the worker gave back
    try:
        with httpx.Client(base_url=url, headers=auth) as c:
            r = c.post("/v1/campaigns", json={"file": "spring.toml"})
            assert r.status_code == 202, r.text
            deadline = time.monotonic() + 60
            while not (view := c.get("/v1/campaigns/spring").json())["done"]:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert view["state"] == "finished", view
    sent = [mid for _, mid, *_ in simulator.log]
    assert len(sent) == len(set(sent)) == rows  # every recipient once: none lost, none twice
    ledger = Ledger(tmp_path / "pigeon.db")
    try:
        assert ledger.counts("spring").states == {"submitted": rows}
    finally:
        ledger.close()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped has ended)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _event(log: Path, name: str, count: int, proc: Any = None) -> dict[str, Any]:
    """The ``count``-th log line of event ``name`` in the service's log file (bounded wait)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        found = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines() if f'"{name}"' in x]
        if len(found) >= count:
            return found[count - 1]
        time.sleep(0.02)  # (another process's log file: nothing to wait on but the file)
    raise AssertionError(f"no {name} in {log.read_text(encoding='utf-8')}")
