"""Issue 18, item by item: hostile input never gets a 500, times are sane, marketing passes preflight.

Each case the issue found is sent to a real ``pigeon serve`` on loopback, on both event loops.
"""

from __future__ import annotations

import io
import json
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from engine.sending.webhooks import sign
from engine.service.openapi import build
from engine.state.store import OptOutRecord
from engine.state.store.sqlite import SqliteStore
from loadtests.simulator import Simulator
from tests.integration.service_harness import SECRET, serving, write_campaign, write_engine
from tests.integration.test_send import run_cli

pytestmark = pytest.mark.anyio

TX = "transactional"


def _problem(r: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    for w in words:
        assert w in body["detail"], body
    return body


def _signed(body: bytes, t: int | None = None) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "x-pigeon-signature": sign(SECRET.encode(), body, int(time.time()) if t is None else t),
    }


async def _until(check: Callable[[], Any], seconds: float = 30.0) -> Any:
    with anyio.fail_after(seconds):
        while True:  # polling the service over HTTP, as a client would
            got = await check()
            if got:
                return got
            await anyio.sleep(0.02)


# -- 1. no 500 on hostile input ------------------------------------------------------------------


async def test_the_issues_unauthenticated_500s_are_4xx_now(
    anyio_backend: object, tmp_path: Path, simulator: Simulator, logged: io.StringIO
) -> None:
    engine, key = write_engine(tmp_path, simulator.port)
    (tmp_path / "campaigns").mkdir()
    auth = {"authorization": f"Bearer {key}"}
    number = "13800138000"
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, headers=auth) as c:
        # a path component over 255 bytes (and one made of phone numbers)
        for name in ("x" * 300, number * 30, f"a/{'b' * 256}/c.toml", "界" * 100, "a" * 1024):
            r = await c.post("/v1/campaigns", json={"file": name})
            body = _problem(r, 422, "service.campaigns_dir")
            assert str(tmp_path) not in body["detail"]
        _problem(await c.post("/v1/campaigns", json={"file": "a" * 1025}), 422, "1024")
        _problem(await c.post("/v1/campaigns", json={"file": ""}), 422, "length >= 1")
        # signature headers that crashed the parser: 401, whatever the bytes
        raw = b'{"reports": [{"id": "x", "status": "delivered"}]}'
        mac = sign(SECRET.encode(), raw, int(time.time())).split("v1=")[1]
        for header in (
            f"t=²,v1={mac}".encode(),
            b"t=" + b"9" * 5000 + f",v1={mac}".encode(),
            f"t={int(time.time())},v1=".encode() + "é".encode() * 32,
            f"t={int(time.time())},v1=".encode() + bytes(range(128, 192)),
            b"t=1,v1=" + b"0" * 5000,
            b"=,=,=,v1",
            b"t=-1,v1=" + mac.encode(),
            b"\xff" * 2000,
        ):
            r = await c.post(
                "/v1/webhooks/sim/reports",
                content=raw,
                headers={"content-type": "application/json", "x-pigeon-signature": header},  # type: ignore[dict-item]
            )
            _problem(r, 401)
        # `to` as 5,000 nested arrays; a signed report with a 5,000-deep unknown field
        deep = b"[" * 5000 + b"]" * 5000
        r = await c.post(
            "/v1/messages",
            content=b'{"priority": "transactional", "messages": [{"to": ' + deep + b', "text": "x"}]}',
            headers={"content-type": "application/json"},
        )
        _problem(r, 422, "messages[0].to", "phone number as a string")
        report = b'{"reports": [{"id": "api-transactional-1", "status": "delivered", "junk": ' + deep + b"}]}"
        _problem(await c.post("/v1/webhooks/sim/reports", content=report, headers=_signed(report)), 422)
        replies = b'{"replies": [{"from": "13800138000", "text": "R"}], "x": ' + deep + b"}"
        _problem(await c.post("/v1/webhooks/sim/replies", content=replies, headers=_signed(replies)), 422)
        assert (await c.get("/healthz")).status_code == 200
    log = logged.getvalue()
    assert '"level":"error"' not in log, log  # no unhandled error on the way
    assert number not in log


async def test_an_unexpected_error_is_a_problem_500_logged_once_with_numbers_masked(
    anyio_backend: object, tmp_path: Path, simulator: Simulator, logged: io.StringIO
) -> None:
    engine, key = write_engine(tmp_path, simulator.port)
    auth = {"authorization": f"Bearer {key}"}
    async with serving(engine) as (url, svc), httpx.AsyncClient(base_url=url, headers=auth) as c:

        def broken(message_id: str, **_: object) -> None:
            raise ValueError(f"cannot look up {message_id} for +86 139-0013-9000")

        svc.messages.message = broken  # type: ignore[method-assign,assignment]
        r = await c.get("/v1/messages/13800138000")
        body = _problem(r, 500, "the service failed on this request")
        assert "13800138000" not in r.text and "ValueError" not in r.text
        assert (await c.get("/healthz")).status_code == 200  # still serving
    errors = [json.loads(line) for line in logged.getvalue().splitlines() if '"level":"error"' in line]
    assert len(errors) == 1, errors  # once: by the service, not again by the server
    (event,) = errors
    assert event["event"] == "http.error" and event["error"] == "ValueError"
    assert event["path"] == "/v1/messages/138****8000"
    assert "ValueError: cannot look up 138****8000 for +86****9000" in event["exception"] or (
        "138****8000" in event["exception"] and "ValueError" in event["exception"]
    )
    assert "13800138000" not in logged.getvalue() and "0013-9000" not in logged.getvalue()
    assert body["type"].endswith("/internal-error")


async def test_problem_details_never_reveal_server_paths_or_gateway_names(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, key = write_engine(tmp_path, simulator.port)
    write_campaign(tmp_path, 10, "tiny")
    (tmp_path / "campaigns" / "bad.toml").write_text('id = "bad"\n[nonsense\n', encoding="utf-8")
    auth = {"authorization": f"Bearer {key}"}
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, headers=auth) as c:
        bodies = [
            _problem(await c.post("/v1/campaigns", json={"file": "../engine.toml"}), 403, "outside"),
            _problem(await c.post("/v1/campaigns", json={"file": "none.toml"}), 404, "no campaign file"),
            _problem(await c.post("/v1/campaigns", json={"file": "bad.toml"}), 422),
        ]
        unknown = _problem(await c.post("/v1/webhooks/nope/reports", content=b"{}"), 404)
        assert "sim" not in unknown["detail"]
        r = await c.post("/v1/campaigns", json={"file": "tiny.toml"})
        assert r.status_code == 202, r.text

        async def over() -> bool:
            return bool((await c.get("/v1/campaigns/tiny")).json()["done"])

        await _until(over)
        again = _problem(await c.post("/v1/campaigns", json={"file": "tiny.toml"}), 409, '"again": true')
        bodies.append(again)
        assert "--again" not in again["detail"]
        assert (await c.post("/v1/campaigns", json={"file": "tiny.toml", "again": True})).status_code == 202
    for b in bodies:
        assert str(tmp_path) not in json.dumps(b), b


async def test_405_says_what_is_allowed(anyio_backend: object, tmp_path: Path, simulator: Simulator) -> None:
    engine, _ = write_engine(tmp_path, simulator.port)
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url) as c:
        r = await c.delete("/v1/messages")
        _problem(r, 405, "DELETE")
        assert set(r.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
        r = await c.put("/v1/campaigns/x")
        assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "HEAD"}


def test_the_openapi_document_refuses_what_the_service_refuses() -> None:
    schemas = build()["components"]["schemas"]
    assert schemas["MessagesIn"]["properties"]["messages"]["minItems"] == 1
    assert schemas["MessagesIn"]["required"] == ["messages", "priority"]
    assert schemas["StartCampaign"]["properties"]["file"]["minLength"] == 1
    assert schemas["MessageIn"]["properties"]["to"]["type"] == "string"


# -- 4. sane timestamps ------------------------------------------------------------------------


async def test_timestamps_in_milliseconds_are_read_as_such_and_insane_ones_refused(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, key = write_engine(tmp_path, simulator.port)
    auth = {"authorization": f"Bearer {key}"}
    now = time.time()
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, headers=auth) as c:
        ms = {"replies": [{"from": "13800138000", "text": "退订", "at": int(now * 1000)}]}
        raw = json.dumps(ms, ensure_ascii=False).encode()
        r = await c.post("/v1/webhooks/sim/replies", content=raw, headers=_signed(raw))
        assert r.json() == {"received": 1, "optouts": 1}, r.text
        for bad in (now * 1e12, -5, 1e300, 631_152_000, now + 3 * 86_400):  # …, 1990, three days ahead
            raw = json.dumps({"replies": [{"from": "13900139000", "text": "R", "at": bad}]}).encode()
            r = await c.post("/v1/webhooks/sim/replies", content=raw, headers=_signed(raw))
            _problem(r, 422, "replies[0].at", "not a Unix time in seconds")
            raw = json.dumps({"reports": [{"id": "x-1", "status": "delivered", "done_at": bad}]}).encode()
            r = await c.post("/v1/webhooks/sim/reports", content=raw, headers=_signed(raw))
            _problem(r, 422, "reports[0].done_at")
        for inf in (b"Infinity", b"1e999", b"NaN"):
            raw = b'{"reports": [{"id": "x-1", "done_at": ' + inf + b"}]}"
            r = await c.post("/v1/webhooks/sim/reports", content=raw, headers=_signed(raw))
            assert r.status_code == 422, (inf, r.text)
    store = SqliteStore(tmp_path / "pigeon.db")
    try:
        record = store.optout_records(["+8613800138000"])["+8613800138000"]
    finally:
        store.close()
    assert abs(record.created_at - now) < 60  # seconds, not the year 57888
    assert store_has_only("+8613800138000", tmp_path)


def store_has_only(number: str, tmp_path: Path) -> bool:
    db = sqlite3.connect(tmp_path / "pigeon.db")
    try:
        return [r[0] for r in db.execute("SELECT number FROM optouts")] == [number]
    finally:
        db.close()


def test_optout_export_and_check_never_crash_on_stored_times(tmp_path: Path) -> None:
    """Values an older version stored (milliseconds, nonsense) are shown, not a crash for the list."""
    write_engine(tmp_path, 9)
    ms = 1_764_614_400_000.0  # 2025-12-01T18:40:00Z in milliseconds
    store = SqliteStore(tmp_path / "pigeon.db")
    try:
        store.add_optouts(
            [
                OptOutRecord(number="+8613800138000", source="mo", reason="R", created_at=ms),
                OptOutRecord(number="+8613900139000", source="mo", reason="R", created_at=1e300),
                OptOutRecord(number="+8613700137000", source="mo", reason="R", created_at=-1e20),
            ]
        )
    finally:
        store.close()
    out = run_cli("optout", "export", "--engine", "engine.toml", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    times = {r["number"]: r["created_at"] for r in json.loads(out.stdout)}
    assert times["+8613800138000"].startswith("2025-12-01T18:40:00")
    assert "not a time" in times["+8613900139000"]
    csv = run_cli("optout", "export", "--engine", "engine.toml", cwd=tmp_path)
    assert csv.returncode == 0 and "2025-12-01T18:40:00" in csv.stdout, csv.stderr
    check = run_cli("optout", "check", "13800138000", "13900139000", "--engine", "engine.toml", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert "2025-12-01 18:40 UTC" in check.stdout


async def test_report_done_at_in_milliseconds_gives_seconds_in_pigeon_report_and_metrics(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, key = write_engine(tmp_path, simulator.port)
    auth = {"authorization": f"Bearer {key}"}
    body = {"priority": TX, "messages": [{"to": f"1390013900{i}", "text": "订单已发货"} for i in range(4)]}
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, headers=auth) as c:
        ids = [m["id"] for m in (await c.post("/v1/messages", json=body)).json()["messages"]]

        async def submitted() -> list[dict[str, Any]] | None:
            views = [(await c.get(f"/v1/messages/{i}")).json() for i in ids]
            return views if all(v["state"] == "submitted" for v in views) else None

        views = await _until(submitted)
        await anyio.sleep(0.2)  # a measurable submit → delivery time
        done = time.time()
        reports = {
            "reports": [
                # by provider id, in milliseconds; by Pigeon's id, in seconds; a status not in the
                # contract (counted as unknown, the batch taken)
                {"provider_id": views[0]["provider_id"], "status": "delivered", "done_at": int(done * 1000)},
                {"provider_id": views[1]["provider_id"], "status": "delivered", "done_at": done},
                {"id": ids[2], "status": "delivered"},
                {"provider_id": views[3]["provider_id"], "status": "DELIVRD"},
            ]
        }
        raw = json.dumps(reports).encode()
        r = await c.post("/v1/webhooks/sim/reports", content=raw, headers=_signed(raw))
        assert r.status_code == 200 and r.json() == {"received": 4, "matched": 4}, r.text
        first = (await c.get(f"/v1/messages/{ids[0]}")).json()
        assert abs(first["delivery"]["done_at"] - done) < 0.01
        unknown = (await c.get(f"/v1/messages/{ids[3]}")).json()
        assert unknown["delivery"] == {"status": "unknown", "code": "DELIVRD", "done_at": 0.0}
        metrics = (await c.get("/metrics")).text
    count = float(re.search(r'pigeon_submit_to_delivery_seconds_count\{gateway="sim"\} (\S+)', metrics)[1])  # type: ignore[index]
    total = float(re.search(r'pigeon_submit_to_delivery_seconds_sum\{gateway="sim"\} (\S+)', metrics)[1])  # type: ignore[index]
    assert count == 4  # every matched report, each with its seconds
    assert 4 * 0.2 <= total < 4 * 30  # seconds, not 1.7e12
    assert 'pigeon_delivery_reports_total{gateway="sim",status="unknown"} 1.0' in metrics
    # What an older version stored for a report in milliseconds: `pigeon report` reads it as seconds.
    db = sqlite3.connect(tmp_path / "pigeon.db")
    with db:
        (row,) = db.execute("SELECT row FROM api_messages WHERE id = ?", (ids[1],)).fetchone()
        db.execute(
            "UPDATE ledger_reports SET done_at = done_at * 1000, latency = done_at * 1000 - (done_at - latency) "
            "WHERE campaign = 'api-transactional' AND row = ? AND latency >= 0",
            (row,),
        )
        assert db.total_changes == 1
    db.close()
    report = run_cli("report", "api-transactional", "--engine", str(engine), "--format", "json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    latency = json.loads(report.stdout)["latency_seconds"]
    assert latency and all(0.2 <= v < 30 for v in latency.values()), latency


# -- 6. compliance -----------------------------------------------------------------------------


async def test_marketing_messages_pass_the_campaign_preflight(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, key = write_engine(
        tmp_path,
        simulator.port,
        service_extra="",
        templates='[service.templates.promo]\ntext = "{item}今日特价"\n'
        '[service.templates.boast]\ntext = "全网最低价：{item}"\n',
    )
    auth = {"authorization": f"Bearer {key}"}
    banned = "全国最低价，第一品牌，国家级"
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, headers=auth) as c:
        for message, field in (
            ({"to": "13800138000", "text": banned}, "text"),
            ({"to": "13800138000", "template": "promo", "fields": {"item": "第一品牌大米"}}, "fields"),
            ({"to": "13800138000", "template": "boast", "fields": {"item": "米"}}, "template"),
        ):
            body = {"priority": "marketing", "messages": [{"to": "13900139000", "text": "周末特惠"}, message]}
            r = await c.post("/v1/messages", json=body)
            problem = _problem(r, 422, "1 of 2", "Advertising Law")
            assert problem["errors"][0]["index"] == 1 and problem["errors"][0]["field"] == field
        ok = {
            "priority": "marketing",
            "messages": [{"to": "13800138000", "text": "新茶上市，最佳赏味期三个月"}],
        }
        assert (await c.post("/v1/messages", json=ok)).status_code == 202  # a lawful phrase
        # a transactional message is not an ad: the preflight of campaigns is not its rule
        tx = {"priority": TX, "messages": [{"to": "13800138000", "text": f"您的订单：{banned}"}]}
        assert (await c.post("/v1/messages", json=tx)).status_code == 202
    assert not any(to.endswith("13900139000") for _, _, to, *_ in simulator.log)  # refused: none sent


def test_serve_says_what_is_wrong_without_a_traceback(tmp_path: Path, simulator: Simulator) -> None:
    import os
    import socket

    engine, _ = write_engine(tmp_path, simulator.port)
    env = {k: v for k, v in os.environ.items() if k != "PIGEON_TEST_WEBHOOK_SECRET"}
    cmd = [sys.executable, "-m", "engine", "serve", "--engine", str(engine)]
    r = subprocess.run([*cmd, "--port", "0"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    (line,) = r.stderr.splitlines()
    assert "PIGEON_TEST_WEBHOOK_SECRET is not set" in json.loads(line)["msg"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env["PIGEON_TEST_WEBHOOK_SECRET"] = SECRET
        r = subprocess.run([*cmd, "--port", str(port)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in json.loads(r.stderr.splitlines()[-1])["msg"]


# -- 7. the file gateway --------------------------------------------------------------------------


async def test_the_file_gateway_has_written_what_it_acknowledges(
    anyio_backend: object, tmp_path: Path
) -> None:
    """A batch is in the file (the OS's) when ``send`` answers: a kill -9 right after loses nothing."""
    from engine.core.messages import Message, MessageBatch
    from engine.sending.gateway import GatewayContext
    from plugins.gateway_file.hooks import FileConfig, FileGateway

    gw = FileGateway(
        FileConfig(path="out.jsonl"), GatewayContext(name="f", base_dir=tmp_path, run_dir=tmp_path)
    )
    try:
        batch = MessageBatch.of([Message(id="c-1", to="+8613800138000", text="hi", carrier="cm", parts=1)])
        results = await gw.send(batch)
        assert [r.outcome.value for r in results] == ["accepted"]
        # read by another handle, the gateway's still open (no close, no flush since)
        lines = (tmp_path / "out.jsonl").read_bytes().splitlines()
        assert [json.loads(x)["id"] for x in lines] == ["c-1"]
    finally:
        await gw.aclose()
