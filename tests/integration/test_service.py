"""``pigeon serve`` over real HTTP on loopback, on both event loops, against the gateway simulator."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from engine.sending.webhooks import sign
from engine.service.openapi import document
from engine.state.store.sqlite import SqliteStore
from loadtests.simulator import SimConfig, Simulator, SimulatorThread
from tests.conftest import ROOT
from tests.integration.service_harness import SECRET, serving, write_campaign, write_engine
from tests.integration.test_send import run_cli

pytestmark = pytest.mark.anyio


def _problem(r: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    assert body["type"].startswith("https://") and body["title"]
    for w in words:
        assert w in body["detail"], body
    return body


async def _until(check: Callable[[], Any], what: str, seconds: float = 20.0) -> Any:
    """Poll ``check`` until it returns something truthy (bounded; not a timing assertion)."""
    with anyio.fail_after(seconds):
        while True:  # polling the service over HTTP, as a client would
            got = await check()
            if got:
                return got
            await anyio.sleep(0.02)


def _signed(body: bytes, *, secret: str = SECRET, t: int | None = None) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "x-pigeon-signature": sign(secret.encode(), body, int(time.time()) if t is None else t),
    }


async def test_auth_is_required_everywhere_but_health(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, key = write_engine(tmp_path, simulator.port)
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url) as c:
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/readyz")).json()["ready"] is True
        body = {"priority": "transactional", "messages": [{"to": "13800138000", "text": "hi"}]}
        _problem(await c.post("/v1/messages", json=body), 401, "API key is required")
        _problem(
            await c.post("/v1/messages", json=body, headers={"authorization": "Bearer pgn_wrong"}),
            401,
            "not valid",
        )
        r = await c.post("/v1/messages", json=body, headers={"authorization": f"Basic {key}"})
        _problem(r, 401, "Bearer")
        assert r.headers["www-authenticate"] == "Bearer"
        for path in ("/metrics", "/v1/messages/api-transactional-1", "/v1/campaigns/x"):
            _problem(await c.get(path), 401)
        _problem(await c.post("/v1/campaigns", json={"file": "c.toml"}), 401)
        ok = await c.post("/v1/messages", json=body, headers={"x-api-key": key})
        assert ok.status_code == 202, ok.text
    assert simulator.summary()["stats"]["accepted"] == 1  # only the authorized request was sent


HOSTILE: list[tuple[str, bytes, dict[str, str], int, str]] = [
    ("bad json", b'{"priority": "transactional", "messages": [', {}, 400, "not valid UTF-8 JSON"),
    ("not an object", b"[1, 2, 3]", {}, 422, "expected `object`"),
    ("wrong type", b'{"priority": "transactional", "messages": "all"}', {}, 422, "expected `array`"),
    (
        "wrong field type",
        b'{"priority": "transactional", "messages": [{"to": 13800138000, "text": "x"}]}',
        {},
        422,
        "phone number as a string",
    ),
    ("unknown key", b'{"prio": 1, "messages": []}', {}, 422, "did you mean `priority`"),
    (
        "bad priority",
        b'{"messages": [{"to": "13800138000", "text": "x"}], "priority": "urgent"}',
        {},
        422,
        "transactional",
    ),
    ("empty", b'{"priority": "transactional", "messages": []}', {}, 422, "length >= 1"),
    (
        "no priority",
        b'{"messages": [{"to": "13800138000", "text": "x"}]}',
        {},
        422,
        "priority: missing required key",
    ),
    ("no body", b"", {}, 400, "needs a JSON body"),
    (
        "bad utf-8",
        b'{"priority": "transactional", "messages": [{"to": "13800138000", "text": "\xff\xfe"}]}',
        {},
        400,
        "JSON",
    ),
    (
        "deep nesting",
        b'{"priority": "transactional", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        {},
        422,
        "expected `object`",
    ),
    (
        "huge array",
        json.dumps(
            {"priority": "transactional", "messages": [{"to": "13800138000", "text": "x"}] * 101}
        ).encode(),
        {},
        413,
        "at most 100",
    ),
    (
        "oversized",
        b'{"priority": "transactional", "messages": [{"to": "13800138000", "text": "'
        + b"x" * 70_000
        + b'"}]}',
        {},
        413,
        "max_body_bytes",
    ),
    (
        "bad phone",
        b'{"priority": "transactional", "messages": [{"to": "12345", "text": "x"}]}',
        {},
        422,
        "invalid_number",
    ),
    (
        "landline",
        b'{"priority": "transactional", "messages": [{"to": "01012345678", "text": "x"}]}',
        {},
        422,
        "cannot be sent",
    ),
    (
        "unknown template",
        b'{"priority": "transactional", "messages": [{"to": "13800138000", "template": "order_shiped"}]}',
        {},
        422,
        "did you mean 'order_shipped'",
    ),
    (
        "unknown field",
        b'{"priority": "transactional", "messages": [{"to": "13800138000", "template": "code", "fields": {"cod": "1"}}]}',
        {},
        422,
        "has no field 'cod'",
    ),
    (
        "missing field",
        b'{"priority": "transactional", "messages": [{"to": "13800138000", "template": "code"}]}',
        {},
        422,
        "needs this field",
    ),
    (
        "both",
        b'{"priority": "transactional", "messages": [{"to": "13800138000", "template": "code", "text": "x"}]}',
        {},
        422,
        "either",
    ),
    (
        "field not str",
        b'{"priority": "transactional", "messages": [{"to": "13800138000", "template": "code", "fields": {"code": 1}}]}',
        {},
        422,
        "expected `str`",
    ),
    (
        "content type",
        b'{"priority": "transactional", "messages": []}',
        {"content-type": "text/plain"},
        415,
        "application/json",
    ),
    (
        "idempotency key",
        b'{"priority": "transactional", "messages": [{"to": "13800138000", "text": "x"}]}',
        {"idempotency-key": "k" * 300},
        422,
        "1-255",
    ),
]


async def test_malformed_oversized_and_hostile_payloads_get_a_clear_4xx(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, key = write_engine(tmp_path, simulator.port)
    auth = {"authorization": f"Bearer {key}"}
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, headers=auth) as c:
        for name, body, headers, status, words in HOSTILE:
            r = await c.post(
                "/v1/messages", content=body, headers={"content-type": "application/json", **headers}
            )
            assert r.status_code == status, (name, r.text)
            _problem(r, status, words)

        async def chunks() -> Any:  # no Content-Length: the limit holds while reading
            for _ in range(100):
                yield b"x" * 1000

        _problem(await c.post("/v1/messages", content=chunks()), 413, "max_body_bytes")
        one = (
            await c.post(
                "/v1/messages",
                content=b'{"priority":"transactional","messages":[{"to":"1380013800","text":"x"}]}',
            )
        ).json()
        assert one["errors"] == [{"index": 0, "field": "to", "detail": one["errors"][0]["detail"]}]
        # One bad message refuses the whole request: nothing half-sent.
        mixed = {
            "priority": "transactional",
            "messages": [{"to": "13800138000", "text": "ok"}, {"to": "1", "text": "no"}],
        }
        _problem(await c.post("/v1/messages", json=mixed), 422, "1 of 2")
        _problem(await c.get("/v1/nothing"), 404, "see /openapi.json")
        _problem(await c.delete("/v1/messages"), 405, "DELETE")
        _problem(await c.get("/v1/messages/" + "x" * 5000), 404)
        _problem(await c.post("/v1/webhooks/nogw/reports", content=b"{}"), 404, "no such gateway")
        assert (await c.get("/healthz")).status_code == 200  # still up after all of it
    assert simulator.summary()["stats"].get("accepted", 0) == 0


async def test_messages_are_sent_once_and_delivery_reports_settle_them(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, key = write_engine(tmp_path, simulator.port)
    auth = {"authorization": f"Bearer {key}"}
    body = {
        "priority": "transactional",
        "messages": [
            {"to": "13800138000", "template": "order_shipped", "fields": {"order": "A17", "tracking": "SF9"}},
            {"to": "+86 139-0013-9000", "text": "您的验证码是 4321"},
        ],
    }
    async with serving(engine) as (url, svc), httpx.AsyncClient(base_url=url, headers=auth) as c:
        r = await c.post("/v1/messages", json=body, headers={"idempotency-key": "order-A17"})
        assert r.status_code == 202, r.text
        answer = r.json()
        ids = [m["id"] for m in answer["messages"]]
        assert answer["accepted"] == 2 and len(set(ids)) == 2
        again = await c.post("/v1/messages", json=body, headers={"idempotency-key": "order-A17"})
        assert again.json() == answer  # same key, same body: same ids
        other = dict(body, priority="marketing")
        _problem(
            await c.post("/v1/messages", json=other, headers={"idempotency-key": "order-A17"}),
            422,
            "different body",
        )

        async def submitted() -> list[dict[str, Any]] | None:
            views = [(await c.get(f"/v1/messages/{i}")).json() for i in ids]
            return views if all(v["state"] == "submitted" for v in views) else None

        views = await _until(submitted, "both submitted")
        assert views[0]["to"] == "138****8000" and views[0]["gateway"] == "sim"
        sent = [mid for _, mid, *_ in simulator.log]
        assert sorted(sent) == sorted(ids)  # each exactly once, despite the repeated request
        assert [to for _, _, to, *_ in simulator.log] == ["+8613800138000", "+8613900139000"]

        reports = {
            "reports": [
                {
                    "provider_id": views[0]["provider_id"],
                    "status": "delivered",
                    "code": "DELIVRD",
                    "done_at": time.time(),
                },
                {"provider_id": "", "id": ids[1], "status": "failed", "code": "UNDELIV"},
                {"provider_id": "someone-elses", "status": "delivered"},
            ]
        }
        raw = json.dumps(reports).encode()
        _problem(await c.post("/v1/webhooks/sim/reports", content=raw), 401, "missing x-pigeon-signature")
        _problem(
            await c.post("/v1/webhooks/sim/reports", content=raw, headers=_signed(raw, secret="wrong")),
            401,
            "bad signature",
        )
        _problem(
            await c.post(
                "/v1/webhooks/sim/reports", content=raw, headers=_signed(raw, t=int(time.time()) - 900)
            ),
            401,
            "replay",
        )
        bad = b'{"reports": [{"status": "delivered"}]}'
        _problem(
            await c.post("/v1/webhooks/sim/reports", content=bad, headers=_signed(bad)), 422, "provider_id"
        )
        r = await c.post("/v1/webhooks/sim/reports", content=raw, headers=_signed(raw))
        assert r.status_code == 200, r.text
        assert r.json() == {"received": 3, "matched": 2}
        first, second = [(await c.get(f"/v1/messages/{i}")).json() for i in ids]
        assert first["state"] == "delivered" and first["delivery"]["code"] == "DELIVRD"
        assert second["state"] == "failed" and second["delivery"]["status"] == "failed"
        # The ledger has them too (what GET answers once they are no longer in memory).
        svc.records.by_id.clear()
        from_ledger = (await c.get(f"/v1/messages/{ids[0]}")).json()
        assert from_ledger["state"] == "delivered" and from_ledger["campaign"] == "api-transactional"
        metrics = (await c.get("/metrics")).text
        assert (
            'pigeon_delivery_reports_total{gateway="sim",status="delivered"} 2.0' in metrics
        )  # every report received


async def test_an_idempotency_key_outlives_a_restart_of_the_service(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, key = write_engine(tmp_path, simulator.port)
    auth = {"authorization": f"Bearer {key}", "idempotency-key": "order-B52"}
    body = {
        "priority": "transactional",
        "messages": [{"to": "13800138000", "template": "code", "fields": {"code": "4321"}}],
    }
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, headers=auth) as c:
        first = await c.post("/v1/messages", json=body)
        assert first.status_code == 202, first.text
        mid = first.json()["messages"][0]["id"]

        async def submitted() -> bool:
            return bool((await c.get(f"/v1/messages/{mid}")).json()["state"] == "submitted")

        await _until(submitted, "the message submitted")
    # A new process: nothing in memory. The client retries (say its connection broke before the 202).
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, headers=auth) as c:
        again = await c.post("/v1/messages", json=body)
        assert again.status_code == 202 and again.json() == first.json()  # the same ids, not sent again
        other = {"priority": "transactional", "messages": [{"to": "13800138000", "text": "另一条"}]}
        _problem(await c.post("/v1/messages", json=other), 422, "different body")
    assert [m for _, m, *_ in simulator.log] == [mid]


async def test_an_opt_out_reply_suppresses_marketing_at_once(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, key = write_engine(tmp_path, simulator.port)
    auth = {"authorization": f"Bearer {key}"}
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, headers=auth) as c:
        replies = {
            "replies": [
                {"from": "+8613800138000", "to": "106900001234", "text": "退订", "at": time.time()},
                {"from": "13900139000", "text": "R U open today?"},  # not an opt-out
            ]
        }
        raw = json.dumps(replies, ensure_ascii=False).encode()
        r = await c.post("/v1/webhooks/sim/replies", content=raw, headers=_signed(raw))
        assert r.json() == {"received": 2, "optouts": 1}
        body = {
            "priority": "marketing",
            "messages": [
                {"to": "13800138000", "text": "周末特惠"},
                {"to": "13900139000", "text": "周末特惠"},
            ],
        }
        answer = (await c.post("/v1/messages", json=body)).json()
        states = [(m["state"], m["reason"]) for m in answer["messages"]]
        assert states[0] == ("suppressed", "opted_out")
        assert states[1][0] in ("queued", "deferred")  # quiet hours depend on the time of day
        # A transactional message (an order notice) still goes to the opted-out number.
        tx = (
            await c.post(
                "/v1/messages",
                json={"priority": "transactional", "messages": [{"to": "13800138000", "text": "订单已发货"}]},
            )
        ).json()
        assert tx["messages"][0]["state"] == "queued"
    store = SqliteStore(tmp_path / "pigeon.db")
    try:
        assert store.optout_records(["+8613800138000"])["+8613800138000"].source == "mo"
        assert store.optout_records(["+8613900139000"]) == {}
    finally:
        store.close()


async def test_a_blast_and_transactional_traffic_together(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    rows, rate = 3000, 1000  # the blast alone needs more than three seconds of the budget
    engine, key = write_engine(tmp_path, simulator.port, cm_rate=rate)
    write_campaign(tmp_path, rows)
    auth = {"authorization": f"Bearer {key}"}
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, headers=auth) as c:
        _problem(await c.post("/v1/campaigns", json={"file": "../engine.toml"}), 403, "outside")
        _problem(await c.post("/v1/campaigns", json={"file": "nope.toml"}), 404, "no campaign file")
        r = await c.post("/v1/campaigns", json={"file": "spring.toml"})
        assert r.status_code == 202, r.text
        _problem(await c.post("/v1/campaigns", json={"file": "spring.toml"}), 409, "already")
        ids: list[str] = []
        for i in range(20):
            r = await c.post(
                "/v1/messages",
                json={
                    "priority": "transactional",
                    "messages": [{"to": f"1390013{i:04d}", "text": f"验证码{i}"}],
                },
            )
            assert r.status_code == 202, r.text
            ids += [m["id"] for m in r.json()["messages"]]

        async def done() -> dict[str, Any] | None:
            view: dict[str, Any] = (await c.get("/v1/campaigns/spring")).json()
            return view if view["state"] == "finished" else None

        view = await _until(done, "the blast finished", 60)
        assert view["states"] == {"sent": rows}
        assert view["rate_per_carrier"]["cm"] > 0 and view["eta_seconds"] == 0.0
        for mid in ids:
            assert (await c.get(f"/v1/messages/{mid}")).json()["state"] == "submitted"
    logged = [mid for _, mid, *_ in simulator.log]
    assert len(logged) == len(set(logged)) == rows + 20
    peak = simulator.max_arrived_parts_per_second()["cm"]  # what arrived, accepted or not
    assert rate * 0.5 < peak <= rate  # blast + API together within the carrier rate, and using it


async def test_campaigns_pause_resume_and_cancel(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, key = write_engine(tmp_path, simulator.port, cm_rate=400, max_batch=50)
    write_campaign(tmp_path, 20_000, "big")
    auth = {"authorization": f"Bearer {key}"}
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, headers=auth) as c:
        assert (await c.post("/v1/campaigns", json={"file": "big.toml"})).status_code == 202
        paused = (await c.post("/v1/campaigns/big/pause")).json()
        assert paused["state"] == "paused"
        resumed = (await c.post("/v1/campaigns/big/resume")).json()
        assert resumed["state"] == "running"
        _problem(await c.post("/v1/campaigns/big/explode"), 404, "pause, resume or cancel")
        _problem(await c.post("/v1/campaigns/other/pause"), 404, "no campaign")
        assert (await c.post("/v1/campaigns/big/cancel")).json()["state"] == "cancelled"

        async def over() -> dict[str, Any] | None:
            view: dict[str, Any] = (await c.get("/v1/campaigns/big")).json()
            return view if view["done"] else None

        view = await _until(over, "the cancel drained", 60)
        assert view["state"] == "cancelled", view["error"]
        assert view["rows"] < 20_000  # it stopped reading
        assert view["fraction_read"] is None  # not "all read" (it stopped; rows says how far)
        assert sum(view["states"].values()) == view["rows"]  # every row read is accounted for
        _problem(await c.post("/v1/campaigns/big/resume"), 409, "already cancelled")
    assert len(simulator.log) == view["states"].get("sent", 0)


async def test_blasts_beyond_concurrent_blasts_wait_queued_and_can_be_cancelled_there(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, key = write_engine(tmp_path, simulator.port, cm_rate=500, max_batch=50)  # one at a time
    for cid in ("first", "second", "third"):
        write_campaign(tmp_path, 1_000, cid)
    auth = {"authorization": f"Bearer {key}"}
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, headers=auth) as c:
        assert (await c.post("/v1/campaigns", json={"file": "first.toml"})).json()["state"] == "running"
        assert (await c.post("/v1/campaigns", json={"file": "second.toml"})).json()["state"] == "queued"
        assert (await c.post("/v1/campaigns", json={"file": "third.toml"})).json()["state"] == "queued"
        cancelled = (await c.post("/v1/campaigns/third/cancel")).json()
        assert cancelled["state"] == "cancelled" and cancelled["done"]  # while queued: no worker at all

        async def both_done() -> list[dict[str, Any]] | None:
            views = [(await c.get(f"/v1/campaigns/{cid}")).json() for cid in ("first", "second")]
            return views if all(v["done"] for v in views) else None

        first, second = await _until(both_done, "both blasts ended", 60)
        assert first["state"] == second["state"] == "finished", (first["error"], second["error"])
    arrivals = {
        cid: [t for t, mid, *_ in simulator.log if mid.startswith(f"{cid}-")] for cid in ("first", "second")
    }
    assert len(arrivals["first"]) == len(arrivals["second"]) == 1_000
    assert max(arrivals["first"]) < min(arrivals["second"])  # the second waited for the first
    assert not any(mid.startswith("third-") for _, mid, *_ in simulator.log)
    status = run_cli("status", "third", "--engine", str(engine), "--json", cwd=tmp_path)
    assert json.loads(status.stdout)["status"] == "cancelled"  # for good: not resumed by accident


async def test_blasts_running_together_share_each_carrier_budget(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, key = write_engine(
        tmp_path, simulator.port, cm_rate=300, max_batch=20, service_extra="concurrent_blasts = 2"
    )
    for cid in ("left", "right"):
        write_campaign(tmp_path, 600, cid)
    auth = {"authorization": f"Bearer {key}"}
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, headers=auth) as c:
        for cid in ("left", "right"):
            assert (await c.post("/v1/campaigns", json={"file": f"{cid}.toml"})).json()["state"] == "running"

        async def both_done() -> list[dict[str, Any]] | None:
            views = [(await c.get(f"/v1/campaigns/{cid}")).json() for cid in ("left", "right")]
            return views if all(v["done"] for v in views) else None

        views = await _until(both_done, "both blasts ended", 60)
        assert [v["state"] for v in views] == ["finished", "finished"], [v["error"] for v in views]
    left = [t for t, mid, *_ in simulator.log if mid.startswith("left-")]
    right = [t for t, mid, *_ in simulator.log if mid.startswith("right-")]
    assert len(left) == len(right) == 600
    assert min(right) < max(left) and min(left) < max(right)  # they did run at the same time
    # Each got half of the marketing part (300 × 0.8 / 2 = 120/s): together within the carrier's 300.
    assert simulator.max_parts_per_second()["cm"] <= 300


async def test_openapi_document_is_served_and_kept_in_the_repo(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, _ = write_engine(tmp_path, simulator.port)
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url) as c:
        served = (await c.get("/openapi.json")).content
    assert served == document() == (ROOT / "docs" / "openapi.json").read_bytes(), (
        "docs/openapi.json is stale: python -m engine.service.openapi > docs/openapi.json"
    )
    doc = json.loads(served)
    assert doc["openapi"] == "3.1.0"
    assert {"/v1/messages", "/v1/messages/{id}", "/v1/campaigns/{id}/pause", "/metrics"} <= set(doc["paths"])


def test_sigterm_drains_and_exits_zero(tmp_path: Path, simulator: Simulator) -> None:
    import signal
    import subprocess
    import sys

    engine, key = write_engine(tmp_path, simulator.port)
    env = {**os.environ, "PIGEON_TEST_WEBHOOK_SECRET": SECRET}
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--config", str(engine), "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert proc.stderr is not None
        port = 0
        for line in proc.stderr:  # JSON log lines
            event = json.loads(line)
            if event.get("event") == "service.listening":
                port = event["port"]
                break
        assert port
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"authorization": f"Bearer {key}"}
        ) as c:
            r = c.post(
                "/v1/messages",
                json={"priority": "transactional", "messages": [{"to": "13800138000", "text": "发货了"}]},
            )
            assert r.status_code == 202
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(30) == 0, rest
        events = [json.loads(line).get("event") for line in rest.splitlines() if line.startswith("{")]
        assert "service.draining" in events and events[-1] == "service.stopped"
        assert "13800138000" not in rest  # numbers are masked in logs
        assert len(simulator.log) == 1  # the accepted message went out before exit
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


async def test_delivery_reports_and_opt_out_replies_arrive_from_the_simulator(
    anyio_backend: object, tmp_path: Path
) -> None:
    """The simulator's own callbacks (signed, batched) reach the service's webhooks: every message
    ends delivered or failed as the simulator reported it, and each reply "R" becomes an opt-out
    that suppresses marketing to that number at once."""
    from engine.service.serve import bind

    sock = bind("127.0.0.1", 0)  # the service's port first: the simulator needs its webhook URLs
    hooks = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/webhooks/sim"
    config = SimConfig(
        dlr_url=f"{hooks}/reports",
        mo_url=f"{hooks}/replies",
        dlr_secret=SECRET,
        dlr_delay_ms=20,
        dlr_batch=7,
        p_undeliv=0.3,
        p_mo=0.5,
        mo_text="R",
        seed=7,
    )
    n = 40
    numbers = [f"+86139{i:08d}" for i in range(n)]
    with SimulatorThread(config) as sim:
        engine, key = write_engine(tmp_path, sim.port, max_batch=10)
        auth = {"authorization": f"Bearer {key}"}
        async with serving(engine, sock) as (url, _), httpx.AsyncClient(base_url=url, headers=auth) as c:
            body = {
                "priority": "transactional",
                "messages": [{"to": to, "text": "您的订单已发货"} for to in numbers],
            }
            r = await c.post("/v1/messages", json=body)
            assert r.status_code == 202, r.text
            ids = [m["id"] for m in r.json()["messages"]]

            async def settled() -> list[dict[str, Any]] | None:
                views = [(await c.get(f"/v1/messages/{i}")).json() for i in ids]
                # The simulator counts a report once its POST is answered: that may come a moment
                # after the service has applied it.
                counted = sim.summary()["stats"].get("dlr_sent", 0) >= n
                return (
                    views if counted and all(v["state"] in ("delivered", "failed") for v in views) else None
                )

            views = await _until(settled, "every message settled by a report from the simulator")
            stats = sim.summary()["stats"]
            failed = [v for v in views if v["state"] == "failed"]
            delivered = [v for v in views if v["state"] == "delivered"]
            assert stats["dlr_sent"] == n and stats.get("dlr_posts_failed", 0) == 0
            assert stats["dlr_posts_sent"] >= n // 7  # batched, several reports per POST
            assert 0 < len(failed) < n  # p_undeliv 0.3 over 40 messages, seeded
            assert all(v["delivery"]["code"] == "UNDELIV" for v in failed)
            assert all(v["delivery"]["code"] == "DELIVRD" for v in delivered)
            metrics = (await c.get("/metrics")).text
            assert (
                f'pigeon_delivery_reports_total{{gateway="sim",status="failed"}} {len(failed)}.0' in metrics
            )
            assert (
                f'pigeon_delivery_reports_total{{gateway="sim",status="delivered"}} {len(delivered)}.0'
                in metrics
            )

            async def replied() -> int:
                return int(sim.summary()["stats"].get("mo_sent", 0))

            repliers = await _until(replied, "some delivered recipients replied R")
            assert 0 < repliers <= len(delivered)
            store = SqliteStore(tmp_path / "pigeon.db")
            try:

                async def opted_out() -> dict[str, Any] | None:
                    found = store.optout_records(numbers)
                    return found if len(found) == repliers else None

                found = await _until(opted_out, "every R reply recorded as an opt-out")
            finally:
                store.close()
            assert {r.source for r in found.values()} == {"mo"}
            to_of = dict(zip(ids, numbers, strict=True))
            assert set(found) <= {to_of[v["id"]] for v in delivered}  # only the delivered replied
            marketing = {
                "priority": "marketing",
                "messages": [{"to": to, "text": "周末特惠"} for to in sorted(found)],
            }
            answer = (await c.post("/v1/messages", json=marketing)).json()
            assert {(m["state"], m["reason"]) for m in answer["messages"]} == {("suppressed", "opted_out")}
