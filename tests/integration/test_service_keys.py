"""API keys of a running ``pigeon serve``: revoked and created without a restart, SIGHUP, scopes,
expiry, last use, and a log line per request naming the key (never the key), on both loops."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from engine.service.apikeys import KeyRing
from loadtests.simulator import Simulator
from tests.integration.service_harness import SECRET, serving, write_engine
from tests.integration.test_send import run_cli

pytestmark = pytest.mark.anyio

MESSAGE = {"priority": "transactional", "messages": [{"to": "13800138000", "text": "您的验证码是 1234"}]}


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def _refused(c: httpx.AsyncClient, key: str, seconds: float) -> httpx.Response:
    """The first 401 for ``key``, asked every 10 ms; fails after ``seconds``."""
    with anyio.fail_after(seconds):
        while True:  # polling the service over HTTP, as a client would
            r = await c.get("/metrics", headers=_bearer(key))
            if r.status_code == 401:
                return r
            await anyio.sleep(0.01)


async def test_a_revoked_key_is_refused_and_a_new_one_taken_within_a_second(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, key = write_engine(tmp_path, simulator.port)
    ring = KeyRing(tmp_path / "api-keys.json")  # what `pigeon keys create/revoke` does, from outside
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url) as c:
        assert (await c.get("/metrics", headers=_bearer(key))).status_code == 200
        new = ring.create("crm")
        # a key made while the service runs: taken at its first request (the file is looked at on a miss)
        assert (await c.get("/metrics", headers=_bearer(new))).status_code == 200
        assert ring.revoke("tests")
        revoked_at = time.monotonic()
        await _refused(c, key, 1.0)  # the promise: refused within a second, without a restart
        took = time.monotonic() - revoked_at
        assert (await c.get("/metrics", headers=_bearer(new))).status_code == 200  # the other still works
        r = await c.post("/v1/messages", json=MESSAGE, headers=_bearer(key))
        assert r.status_code == 401 and "not valid" in r.json()["detail"]
    assert took < 1.0
    assert simulator.summary()["stats"].get("accepted", 0) == 0


async def test_a_broken_keys_file_keeps_the_keys_it_replaced(
    anyio_backend: object, tmp_path: Path, simulator: Simulator, logged: io.StringIO
) -> None:
    engine, key = write_engine(tmp_path, simulator.port)
    path = tmp_path / "api-keys.json"
    good = path.read_bytes()
    async with serving(engine) as (url, svc), httpx.AsyncClient(base_url=url) as c:
        path.write_bytes(b'{"keys": [{"name": "half')  # someone's hand edit, saved half-way
        assert not svc.reload_keys()
        assert not svc.reload_keys()
        assert (await c.get("/metrics", headers=_bearer(key))).status_code == 200  # not locked out
        path.write_bytes(good.replace(b'"tests"', b'"renamed"'))
        assert svc.reload_keys(only_if_changed=True)
        r = await c.get("/metrics", headers=_bearer(key))
        assert r.status_code == 200
    events = [json.loads(x) for x in logged.getvalue().splitlines()]
    assert [e["event"] for e in events if e.get("event", "").startswith("keys.")].count("keys.error") == 1
    assert [e["key"] for e in events if e.get("event") == "http.request"] == ["tests", "renamed"]


async def test_scopes_and_expiry_are_enforced(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, _ = write_engine(tmp_path, simulator.port)
    ring = KeyRing(tmp_path / "api-keys.json")
    sender = ring.create("sender", scopes=["send"])
    reader = ring.create("reader", scopes=["read", "metrics"])
    soon = ring.create("soon", expires_at=time.time() + 3600)
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url) as c:
        r = await c.post("/v1/messages", json=MESSAGE, headers=_bearer(sender))
        assert r.status_code == 202, r.text
        mid = r.json()["messages"][0]["id"]
        for method, path, needs in (
            ("GET", f"/v1/messages/{mid}", "read"),
            ("GET", "/metrics", "metrics"),
            ("GET", "/v1/campaigns/x", "campaigns"),
            ("POST", "/v1/campaigns/x/pause", "campaigns"),
        ):
            r = await c.request(method, path, headers=_bearer(sender))
            assert r.status_code == 403, (path, r.text)
            assert f"`{needs}` scope" in r.json()["detail"] and "(it has: send)" in r.json()["detail"]
        assert (await c.get(f"/v1/messages/{mid}", headers=_bearer(reader))).status_code == 200
        assert (await c.get("/metrics", headers=_bearer(reader))).status_code == 200
        r = await c.post("/v1/messages", json=MESSAGE, headers=_bearer(reader))
        assert r.status_code == 403 and "`send` scope" in r.json()["detail"]
        r = await c.post("/v1/campaigns", json={"file": "x.toml"}, headers=_bearer(reader))
        assert r.status_code == 403
        assert (await c.get("/metrics", headers=_bearer(soon))).status_code == 200  # no scopes: all
        # the key's expiry passes (written into the file as `pigeon keys create --expires` would)
        data = json.loads((tmp_path / "api-keys.json").read_bytes())
        for k in data["keys"]:
            if k["name"] == "soon":
                k["expires_at"] = time.time() - 1
        tmp = tmp_path / "api-keys.json.tmp"
        tmp.write_bytes(msgspec.json.encode(data))
        tmp.replace(tmp_path / "api-keys.json")
        r = await _refused(c, soon, 1.0)
        assert "expired" in r.json()["detail"]


async def test_every_request_is_logged_with_the_keys_name_and_never_the_key(
    anyio_backend: object, tmp_path: Path, simulator: Simulator, logged: io.StringIO
) -> None:
    engine, key = write_engine(tmp_path, simulator.port)
    bogus = "pgn_" + "x" * 43
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url) as c:
        assert (await c.post("/v1/messages", json=MESSAGE, headers=_bearer(key))).status_code == 202
        assert (
            await c.get("/v1/messages/api-transactional-13800138000", headers=_bearer(key))
        ).status_code == 404
        assert (await c.get("/metrics", headers={"x-api-key": key})).status_code == 200
        assert (await c.get("/metrics", headers=_bearer(bogus))).status_code == 401
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/nowhere", headers=_bearer(key))).status_code == 404
    lines = [json.loads(x) for x in logged.getvalue().splitlines()]
    requests = [x for x in lines if x.get("event") == "http.request"]
    got = [(r["method"], r["path"], r["status"], r["key"]) for r in requests]
    assert got == [
        ("POST", "/v1/messages", 202, "tests"),
        ("GET", "/v1/messages/api-transactional-138****8000", 404, "tests"),
        ("GET", "/metrics", 200, "tests"),
        ("GET", "/metrics", 401, ""),
        ("GET", "/healthz", 200, ""),
        ("GET", "/nowhere", 404, ""),  # (no endpoint: its key was never looked at)
    ]
    assert all(r["ms"] >= 0 for r in requests)
    text = logged.getvalue()
    assert key not in text and bogus not in text and key[4:20] not in text
    assert "13800138000" not in text
    # when each key was last used is kept in the store (written while running and at the stop)
    listed = run_cli("keys", "list", "--engine", str(engine), "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    (only,) = json.loads(listed.stdout)
    assert only["name"] == "tests" and only["last_used_at"] is not None
    assert only["scopes"] == ["send", "campaigns", "read", "metrics", "events", "flows"]
    assert only["expires_at"] is None


def test_keys_create_takes_scopes_and_an_expiry(tmp_path: Path) -> None:
    engine, _ = write_engine(tmp_path, 9)
    made = run_cli(
        "keys",
        "create",
        "crm",
        "--scope",
        "read",
        "--scope",
        "send",
        "--expires",
        "30d",
        "--engine",
        str(engine),
        "--json",
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stderr
    listed = {
        k["name"]: k
        for k in json.loads(run_cli("keys", "list", "--engine", str(engine), "--json", cwd=tmp_path).stdout)
    }
    assert listed["crm"]["scopes"] == ["send", "read"] and listed["crm"]["expires_at"].startswith(
        time.strftime("%Y-", time.gmtime(time.time() + 30 * 86400))
    )
    assert listed["crm"]["last_used_at"] is None
    dated = run_cli(
        "keys", "create", "bi", "--expires", "2099-01-31", "--engine", str(engine), "--json", cwd=tmp_path
    )
    assert dated.returncode == 0, dated.stderr
    bad = run_cli("keys", "create", "x", "--expires", "soonish", "--engine", str(engine), cwd=tmp_path)
    assert bad.returncode == 2 and "--expires" in bad.stderr
    past = run_cli("keys", "create", "y", "--expires", "2001-01-01", "--engine", str(engine), cwd=tmp_path)
    assert past.returncode == 2 and "past" in past.stderr
    scope = run_cli("keys", "create", "z", "--scope", "admin", "--engine", str(engine), cwd=tmp_path)
    assert scope.returncode == 2


def test_sighup_reloads_the_keys_and_does_not_stop_the_service(tmp_path: Path, simulator: Simulator) -> None:
    engine, key = write_engine(tmp_path, simulator.port)
    log = tmp_path / "serve.log"
    env = {**os.environ, "PIGEON_TEST_WEBHOOK_SECRET": SECRET}
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", "--engine", str(engine), "--port", "0"],
            stderr=stderr,
            env=env,
            cwd=tmp_path,
        )
    try:
        port = _port(log, proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            assert c.get("/metrics", headers=_bearer(key)).status_code == 200
            for n in range(1, 4):  # (one at a time: signals sent together may arrive as one)
                proc.send_signal(signal.SIGHUP)
                _wait_for(log, "service.sighup", n)
            assert proc.poll() is None  # still running (SIGHUP used to kill it)
            assert c.get("/metrics", headers=_bearer(key)).status_code == 200
            ring = KeyRing(tmp_path / "api-keys.json")
            assert ring.revoke("tests")
            proc.send_signal(signal.SIGHUP)
            assert c.get("/metrics", headers=_bearer(key)).status_code in (200, 401)
            deadline = time.monotonic() + 1.0
            while c.get("/metrics", headers=_bearer(key)).status_code != 401:
                assert time.monotonic() < deadline, "the revoked key still works a second later"
                time.sleep(0.01)
            r = c.post("/v1/messages", json=MESSAGE, headers=_bearer(ring.create("after")))
            assert r.status_code == 202, r.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = [json.loads(line).get("event") for line in log.read_text(encoding="utf-8").splitlines()]
    assert events.count("service.sighup") == 4 and "keys.reloaded" in events
    assert events[-1] == "service.stopped"
    assert len(simulator.log) == 1


def _port(log: Path, proc: subprocess.Popen[bytes]) -> int:
    event = _wait_for(log, "service.listening", 1, proc)
    return int(event["port"])


def _wait_for(
    log: Path, name: str, count: int, proc: subprocess.Popen[bytes] | None = None
) -> dict[str, Any]:
    """The ``count``-th log line of event ``name`` of the service writing ``log`` (bounded wait)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        events = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines()]
        found = [e for e in events if e.get("event") == name]
        if len(found) >= count:
            return found[count - 1]
        time.sleep(0.02)  # (another process's log file: nothing to wait on but the file)
    raise AssertionError(f"no {name} in the service's log: {log.read_text(encoding='utf-8')}")
