"""Status callbacks: signed batched events per state change, allow-listed URLs, retries, dead letters, restarts."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from engine.sending.webhooks import WebhookError, sign, verify_signature
from engine.service.apikeys import KeyRing
from loadtests.simulator import Simulator
from tests.integration.callback_receiver import Receiver, receiver
from tests.integration.service_harness import SECRET, serving, write_campaign, write_engine

pytestmark = pytest.mark.anyio

CALLBACK_SECRET = "callback-secret-for-tests"


@pytest.fixture(autouse=True)
def _callback_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIGEON_TEST_CALLBACK_SECRET", CALLBACK_SECRET)


def callbacks_engine(tmp_path: Path, port: int, extra: str = "", **kw: Any) -> tuple[Path, str]:
    """The harness's engine file with ``[service.callbacks]`` (fast retries) and a key."""
    line = (
        'callbacks = { secret_env = "PIGEON_TEST_CALLBACK_SECRET", flush_every = 0.05, '
        f"backoff_base = 0.1, backoff_cap = 0.5, max_attempts = 10000{extra} }}"
    )
    return write_engine(tmp_path, port, service_extra=line, **kw)


async def until(check: Callable[[], Awaitable[Any] | Any], seconds: float = 60.0) -> Any:
    with anyio.fail_after(seconds):
        while True:
            got = check()
            if isinstance(got, Awaitable):
                got = await got
            if got:
                return got
            await anyio.sleep(0.05)


async def report(c: httpx.AsyncClient, items: list[dict[str, Any]]) -> None:
    """Signed delivery reports into the service, as a gateway posts them."""
    raw = json.dumps({"reports": items}).encode()
    headers = {
        "content-type": "application/json",
        "x-pigeon-signature": sign(SECRET.encode(), raw, int(time.time())),
    }
    r = await c.post("/v1/webhooks/sim/reports", content=raw, headers=headers)
    assert r.status_code == 200, r.text


async def test_every_state_change_is_posted_signed_batched_and_masked_per_scope(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    async with receiver(CALLBACK_SECRET.encode()) as rx:
        engine, _ = callbacks_engine(tmp_path, simulator.port)
        ring = KeyRing(tmp_path / "api-keys.json")
        shop = ring.create("shop", callback_urls=[f"http://127.0.0.1:{rx.port}/hooks"])
        crm = ring.create("crm", scopes=["send", "read", "numbers"], callback_urls=[rx.url])
        raw = json.dumps({"replies": [{"from": "13900139000", "text": "退订", "at": time.time()}]}).encode()
        async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url) as c:
            headers = {
                "content-type": "application/json",
                "x-pigeon-signature": sign(SECRET.encode(), raw, int(time.time())),
            }
            assert (await c.post("/v1/webhooks/sim/replies", content=raw, headers=headers)).status_code == 200
            opted, sent = [], []
            for priority, to in (("marketing", "13900139000"), ("transactional", "13800138000")):
                r = await c.post(
                    "/v1/messages",
                    headers={"authorization": f"Bearer {shop}"},
                    json={
                        "priority": priority,
                        "callback_url": rx.url,
                        "messages": [{"to": to, "text": "您好"}],
                    },
                )
                assert r.status_code == 202, r.text
                (opted if priority == "marketing" else sent).append(r.json()["messages"][0]["id"])
            (opted,), (sent,) = opted, sent
            r = await c.post(
                "/v1/messages",
                headers={"authorization": f"Bearer {crm}"},
                json={
                    "priority": "transactional",
                    "callback_url": rx.url + "?tenant=7",
                    "messages": [{"to": "13700137000", "text": "验证码1234"}],
                },
            )
            assert r.status_code == 202, r.text
            code = r.json()["messages"][0]["id"]
            await until(lambda: {(sent, "sent"), (code, "sent")} <= rx.seen())
            await report(
                c, [{"id": sent, "status": "delivered"}, {"id": code, "status": "failed", "code": "UNDELIV"}]
            )
            want = {
                (sent, "accepted"),
                (sent, "sent"),
                (sent, "delivered"),
                (opted, "opted_out"),
                (code, "accepted"),
                (code, "sent"),
                (code, "failed"),
            }
            await until(lambda: rx.seen() == want)
    assert rx.bad_signatures == 0 and rx.posts < len(rx.events)  # batched: fewer POSTs than events
    by = {(e["message_id"], e["state"]): e for e in rx.events}
    assert len({e["id"] for e in rx.events}) == len(rx.events)  # one id per event
    assert by[sent, "accepted"]["to"] == "138****8000" and by[opted, "opted_out"]["to"] == "139****9000"
    assert by[code, "sent"]["to"] == "+8613700137000"  # the crm key has the `numbers` scope
    assert by[code, "failed"]["reason"] == "dlr:UNDELIV" and by[opted, "opted_out"]["reason"] == "opted_out"
    assert {e["campaign"] for e in rx.events} == {"api-marketing", "api-transactional"}
    assert all(isinstance(e["at"], float) and abs(e["at"] - time.time()) < 120 for e in rx.events)


async def test_the_signature_is_checked_as_documented(anyio_backend: object) -> None:
    body = b'{"events":[]}'
    t = int(time.time())
    header = sign(CALLBACK_SECRET.encode(), body, t)
    verify_signature(CALLBACK_SECRET.encode(), header, body, time.time())
    for secret, h, b, now in (
        (b"another secret", header, body, time.time()),
        (CALLBACK_SECRET.encode(), header, body + b" ", time.time()),
        (CALLBACK_SECRET.encode(), header, body, time.time() + 600),  # a replay, ten minutes later
        (CALLBACK_SECRET.encode(), None, body, time.time()),
    ):
        with pytest.raises(WebhookError):
            verify_signature(secret, h, b, now)


async def test_a_receiver_with_another_secret_gets_nothing_it_accepts(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    async with receiver(b"not the service's secret") as rx:
        engine, _ = callbacks_engine(tmp_path, simulator.port)
        key = KeyRing(tmp_path / "api-keys.json").create("shop", callback_urls=[rx.url])
        async with (
            serving(engine) as (url, svc),
            httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}) as c,
        ):
            body = {
                "priority": "transactional",
                "callback_url": rx.url,
                "messages": [{"to": "13800138000", "text": "您好"}],
            }
            assert (await c.post("/v1/messages", json=body)).status_code == 202
            await until(lambda: rx.bad_signatures >= 2)
            depth = svc.ledger.db.execute("SELECT count(*) FROM callback_outbox").fetchone()[0]  # type: ignore[union-attr]
            assert depth == 2 and rx.events == []  # accepted, sent: kept for the next try


async def test_a_callback_url_off_the_keys_allow_list_is_refused_with_the_reason(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, _ = callbacks_engine(tmp_path, simulator.port)
    ring = KeyRing(tmp_path / "api-keys.json")
    shop = ring.create("shop", callback_urls=["https://hooks.shop.example/pigeon"])
    bare = ring.create("bare")
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url) as c:
        for key, cb, words in (
            (shop, "https://evil.example/pigeon", "not under a URL the API key 'shop' may call back"),
            (shop, "https://hooks.shop.example/pigeonx", "allowed: https://hooks.shop.example/pigeon"),
            (shop, "http://hooks.shop.example/pigeon", "not under"),  # another scheme
            (shop, "https://hooks.shop.example:8443/pigeon", "not under"),  # another port
            (shop, "https://me@hooks.shop.example/pigeon", "not under"),  # user info
            (bare, "https://hooks.shop.example/pigeon", "it has none"),
        ):
            r = await c.post(
                "/v1/messages",
                headers={"authorization": f"Bearer {key}"},
                json={
                    "priority": "transactional",
                    "callback_url": cb,
                    "messages": [{"to": "13800138000", "text": "您好"}],
                },
            )
            assert r.status_code == 422 and words in r.json()["detail"], (cb, r.text)
            assert "pigeon keys create NAME --callback-url" in r.json()["detail"]
        r = await c.post(
            "/v1/messages",
            headers={"authorization": f"Bearer {shop}"},
            json={
                "priority": "transactional",
                "callback_url": "https://hooks.shop.example/pigeon/orders?x=1",
                "messages": [{"to": "13800138000", "text": "您好"}],
            },
        )
        assert r.status_code == 202, r.text


async def test_callbacks_are_refused_when_the_service_has_no_secret(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, _ = write_engine(tmp_path, simulator.port)
    key = KeyRing(tmp_path / "api-keys.json").create("shop", callback_urls=["https://hooks.shop.example/"])
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url) as c:
        r = await c.post(
            "/v1/messages",
            headers={"authorization": f"Bearer {key}"},
            json={
                "priority": "transactional",
                "callback_url": "https://hooks.shop.example/a",
                "messages": [{"to": "13800138000", "text": "您好"}],
            },
        )
        assert r.status_code == 422 and "service.callbacks.secret_env" in r.json()["detail"]


async def test_events_a_receiver_refuses_past_max_age_become_dead_letters(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    async with receiver(CALLBACK_SECRET.encode()) as rx:
        rx.status = 503
        engine, admin = callbacks_engine(tmp_path, simulator.port, extra=", max_age = 1.5")
        key = KeyRing(tmp_path / "api-keys.json").create("shop", callback_urls=[rx.url])
        async with (
            serving(engine) as (url, _),
            httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {admin}"}) as c,
        ):
            body = {
                "priority": "transactional",
                "callback_url": rx.url,
                "messages": [{"to": "13800138000", "text": "您好"}],
            }
            r = await c.post("/v1/messages", json=body, headers={"authorization": f"Bearer {key}"})
            assert r.status_code == 202
            mid = r.json()["messages"][0]["id"]

            async def dead() -> list[dict[str, Any]]:
                page = (await c.get("/v1/callbacks/dead")).json()
                return page["dead"] if len(page["dead"]) == 2 else []

            letters = await until(dead, 30)
            metrics = (await c.get("/metrics")).text
        assert rx.events == [] and rx.posts >= 2
        assert {(d["event"]["message_id"], d["event"]["state"]) for d in letters} == {
            (mid, "accepted"),
            (mid, "sent"),
        }
        assert all(
            d["url"] == rx.url and d["last_error"] == "status 503" and d["attempts"] >= 1 for d in letters
        )
        assert all(d["dead_at"] - d["created_at"] >= 1.5 for d in letters)
        assert 'pigeon_callback_events_total{outcome="dead"} 2.0' in metrics
        assert "pigeon_callback_queue_depth 0.0" in metrics
        assert 'pigeon_callback_requests_total{outcome="refused"}' in metrics


async def _post_all(c: httpx.AsyncClient, cb: str, numbers: list[str]) -> list[str]:
    ids: list[str] = []
    for i in range(0, len(numbers), 100):
        body = {
            "priority": "transactional",
            "callback_url": cb,
            "messages": [{"to": n, "text": "您的订单已发货"} for n in numbers[i : i + 100]],
        }
        r = await c.post("/v1/messages", json=body)
        assert r.status_code == 202, r.text
        ids += [m["id"] for m in r.json()["messages"]]
    return ids


async def _deliver(c: httpx.AsyncClient, ids: list[str]) -> None:
    for i in range(0, len(ids), 500):
        await report(c, [{"id": m, "status": "delivered"} for m in ids[i : i + 500]])


async def test_ten_thousand_messages_every_state_change_across_an_outage_and_a_restart(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    numbers = [f"138{i:08d}" for i in range(10_000)]
    async with receiver(CALLBACK_SECRET.encode()) as rx:
        engine, key = callbacks_engine(tmp_path, simulator.port, max_body=1 << 20)
        KeyRing(tmp_path / "api-keys.json").revoke("tests")
        key = KeyRing(tmp_path / "api-keys.json").create("tests", callback_urls=[rx.url])
        auth = {"authorization": f"Bearer {key}"}
        async with (
            serving(engine) as (url, svc),
            httpx.AsyncClient(base_url=url, headers=auth, timeout=30) as c,
        ):
            first = await _post_all(c, rx.url, numbers[:3000])
            await until(lambda: all(svc.records.by_id[m].state == "submitted" for m in first))
            await _deliver(c, first[:1500])
            await rx.go_down()  # the receiver is gone for 10 s from here
            down_at = time.monotonic()
            second = await _post_all(c, rx.url, numbers[3000:6000])
            await until(lambda: all(svc.records.by_id[m].state == "submitted" for m in second))
            await _deliver(c, first[1500:] + second[:1000])
        # the service stopped (its sender cut off mid-stream), and starts again on the same store
        with sqlite3.connect(tmp_path / "pigeon.db") as db:
            waiting = db.execute("SELECT count(*) FROM callback_outbox").fetchone()[0]
        # at least what happened during the outage, kept across the restart: the second 3,000's
        # accepted and sent, and the 2,500 delivered reported meanwhile
        assert waiting >= 3000 * 2 + 2500
        async with (
            serving(engine) as (url, svc),
            httpx.AsyncClient(base_url=url, headers=auth, timeout=30) as c,
        ):
            third = await _post_all(c, rx.url, numbers[6000:])
            await anyio.sleep(max(0.0, 10.0 - (time.monotonic() - down_at)))
            await rx.come_up()
            await _deliver(c, second[1000:])
            await until(lambda: all(svc.records.by_id[m].state == "submitted" for m in third))
            await _deliver(c, third)
            ids = first + second + third
            want = {(m, s) for m in ids for s in ("accepted", "sent", "delivered")}
            await until(lambda: rx.seen() >= want, 180)
            await until(
                lambda: svc.ledger.db.execute("SELECT count(*) FROM callback_outbox").fetchone()[0] == 0, 30
            )  # type: ignore[union-attr]
            metrics = (await c.get("/metrics")).text
    assert len(set(ids)) == 10_000
    assert rx.seen() == want  # every state change of every message, nothing else
    assert rx.bad_signatures == 0
    assert len({e["id"] for e in rx.events}) >= len(want)
    assert rx.posts < 1000  # batched per receiver: not a POST per message
    assert 'pigeon_callback_events_total{outcome="dead"} 0.0' in metrics
    unreachable = re.search(r'pigeon_callback_requests_total\{outcome="unreachable"\} (\S+)', metrics)
    assert unreachable is not None and float(unreachable.group(1)) > 0  # the restarted one saw it down


async def test_receiver_helper_goes_down_and_up(anyio_backend: object) -> None:
    """(The receiver itself: down means connection refused, up again on the same port.)"""
    async with receiver(b"k") as rx:
        rx_: Receiver = rx
        async with httpx.AsyncClient() as c:
            assert (await c.post(rx_.url, content=b'{"events":[]}')).status_code == 401
            await rx_.go_down()
            with pytest.raises(httpx.ConnectError):
                await c.post(rx_.url, content=b"{}")
            await rx_.come_up()
            body = b'{"events":[]}'
            r = await c.post(
                rx_.url, content=body, headers={"x-pigeon-signature": sign(b"k", body, int(time.time()))}
            )
            assert r.status_code == 200


async def test_a_campaign_started_with_a_callback_url_reports_each_recipient(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    write_campaign(tmp_path, 5, "other")  # (refused below; both read the same seg.csv)
    write_campaign(tmp_path, 200, "spring")
    async with receiver(CALLBACK_SECRET.encode()) as rx:
        engine, _ = callbacks_engine(tmp_path, simulator.port)
        key = KeyRing(tmp_path / "api-keys.json").create("crm", callback_urls=[rx.url])
        auth = {"authorization": f"Bearer {key}"}
        async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, headers=auth) as c:
            r = await c.post(
                "/v1/campaigns", json={"file": "other.toml", "callback_url": "https://elsewhere.example/x"}
            )
            assert (
                r.status_code == 422
                and "not under a URL the API key 'crm' may call back" in r.json()["detail"]
            )
            r = await c.post("/v1/campaigns", json={"file": "spring.toml", "callback_url": rx.url})
            assert r.status_code == 202, r.text

            async def finished() -> bool:
                return (await c.get("/v1/campaigns/spring")).json()["state"] == "finished"

            await until(finished, 60)
            sent = await until(
                lambda: {m for m, s in rx.seen() if s == "sent"} if len(rx.seen()) >= 200 else None
            )
            some = sorted(sent)[:10]
            await report(c, [{"id": m, "status": "delivered"} for m in some])
            await until(lambda: {(m, "delivered") for m in some} <= rx.seen())
    assert len(sent) == 200 and all(re.fullmatch(r"spring-\d+", m) for m in sent)
    assert {s for _, s in rx.seen()} == {"sent", "delivered"}
    assert all(e["campaign"] == "spring" for e in rx.events)
    assert all(re.fullmatch(r"138\*{4}\d{4}", e["to"]) for e in rx.events if e["state"] == "sent")
    assert rx.bad_signatures == 0 and rx.posts < 50


async def test_a_campaign_awaiting_approval_keeps_its_callback_across_a_restart(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    """Posted with a callback URL and review.require_approval, the service restarted, approved by
    another key: its recipients' state changes still go to the URL it was posted with."""
    write_campaign(tmp_path, 20, "spring")
    path = tmp_path / "campaigns" / "spring.toml"
    path.write_text(path.read_text("utf-8") + "[review]\nrequire_approval = true\n", encoding="utf-8")
    async with receiver(CALLBACK_SECRET.encode()) as rx:
        engine, _ = callbacks_engine(tmp_path, simulator.port)
        ring = KeyRing(tmp_path / "api-keys.json")
        crm = {"authorization": f"Bearer {ring.create('crm', callback_urls=[rx.url])}"}
        lead = {"authorization": f"Bearer {ring.create('lead', scopes=['approve'])}"}
        async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, headers=crm) as c:
            r = await c.post("/v1/campaigns", json={"file": "spring.toml", "callback_url": rx.url})
            assert r.status_code == 202 and r.json()["state"] == "awaiting_approval", r.text
        async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, headers=crm) as c:

            async def restored() -> bool:
                return (await c.get("/v1/campaigns/spring")).status_code == 200

            await until(restored, 10)
            r = await c.post("/v1/campaigns/spring/approve", headers=lead)
            assert r.status_code == 200, r.text

            async def finished() -> bool:
                return (await c.get("/v1/campaigns/spring")).json()["state"] == "finished"

            await until(finished, 60)
            sent = await until(
                lambda: {m for m, s in rx.seen() if s == "sent"} if len(rx.seen()) >= 20 else None
            )
    assert len(sent) == 20 and len(simulator.log) == 20
    assert all(e["campaign"] == "spring" for e in rx.events) and rx.bad_signatures == 0


def _start_service(engine: Path, tmp_path: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``pigeon serve`` in a process of its own (its JSON log into ``log``) and its port."""
    env = {**os.environ, "PIGEON_TEST_WEBHOOK_SECRET": SECRET, "PIGEON_TEST_CALLBACK_SECRET": CALLBACK_SECRET}
    seen = log.read_text("utf-8").count('"service.listening"') if log.exists() else 0
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", "--engine", str(engine), "--port", "0"],
            stderr=out,
            env=env,
            cwd=tmp_path,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = [ln for ln in log.read_text("utf-8").splitlines() if '"service.listening"' in ln]
        if len(lines) > seen:  # (the log holds an earlier process's lines too)
            return proc, int(json.loads(lines[-1])["port"])
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(log.read_text("utf-8")[-2000:])


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_events_outlive_a_sigkill_of_the_service(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    async with receiver(CALLBACK_SECRET.encode()) as rx:
        rx.status = 503  # refusing: every event waits in the outbox when the service is killed
        engine, _ = callbacks_engine(tmp_path, simulator.port)
        key = KeyRing(tmp_path / "api-keys.json").create("crm", callback_urls=[rx.url])
        auth = {"authorization": f"Bearer {key}"}
        first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
        proc, port = _start_service(engine, tmp_path, first_log)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=30) as c:
                ids = await _post_all(c, rx.url, [f"139{i:08d}" for i in range(2000)])
            proc.send_signal(signal.SIGKILL)  # no drain, no flush: what is committed is all there is
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        with sqlite3.connect(tmp_path / "pigeon.db") as db:
            waiting = db.execute("SELECT count(*) FROM callback_outbox").fetchone()[0]
        assert waiting >= 2000  # at least every acceptance
        rx.status = 200
        proc, port = _start_service(engine, tmp_path, second_log)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=30) as c:
                await until(lambda: {(m, "accepted") for m in ids} <= rx.seen(), 60)
                states = {m: (await c.get(f"/v1/messages/{m}")).json()["state"] for m in ids}
                sent = [m for m, s in states.items() if s == "submitted"]
                await until(lambda: {(m, "sent") for m in sent} <= rx.seen(), 60)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    assert len(sent) > 0  # (the simulator answers fast: most were answered before the kill)
    # every message the ledger records as answered has its `sent` event, every accepted one its `accepted`
    assert {m for m, s in rx.seen() if s == "sent"} >= set(sent)
    assert rx.bad_signatures == 0
