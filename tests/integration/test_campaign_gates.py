"""Campaign gates against the gateway simulator, on both loops: a test send to the seeds before the
real send (and again after the text changed), approval (never by the submitting key), and the spend
cap — refused in preflight, hit mid-blast with the rest pending, then resumed with a raised cap."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx
import pytest

from engine.observability.metrics import Metrics
from engine.run.gates import SpendCapExceeded, run_send_test
from engine.run.plan import prepare
from engine.run.send import send
from engine.service.apikeys import KeyRing
from engine.state.gates import GateClosed, Gates
from engine.state.ledger.store import Ledger
from loadtests.simulator import Simulator
from tests.integration.service_harness import serving, write_engine

SEEDS = '["13900139000", "13700137000"]'


def _campaign(tmp_path: Path, rows: int, body: str, cid: str = "gated") -> Path:
    d = tmp_path / "campaigns"
    d.mkdir(exist_ok=True)
    (d / "seg.csv").write_text(
        "phone,name\n" + "".join(f"1380{i:07d},客{i}\n" for i in range(rows)), encoding="utf-8"
    )
    path = d / f"{cid}.toml"
    path.write_text(
        f'id = "{cid}"\nkind = "marketing"\nengine = "../engine.toml"\n'
        '[segment]\nsource = "csv"\npath = "seg.csv"\n' + body,
        encoding="utf-8",
    )
    return path


AB = (
    """[template]
signature = "小鹅优选"
[[template.variants]]
name = "a"
share = 0.5
text = "{name}，春季上新"
[[template.variants]]
name = "b"
share = 0.5
text = "{name}，新品八折"
[policy]
send_wind"""
    + """ow = ""
"""
)


def test_a_test_send_goes_to_the_seeds_first_and_again_after_the_text_changed(
    anyio_backend: tuple[str, dict[str, object]], tmp_path: Path, simulator: Simulator
) -> None:
    backend = anyio_backend[0]
    write_engine(tmp_path, simulator.port)
    path = _campaign(tmp_path, 30, AB + f"[review]\nseeds = {SEEDS}\n")
    plan = prepare(path)
    with pytest.raises(GateClosed, match="no test send was made"):
        send(plan, backend=backend, progress=None)
    assert simulator.log == []
    record = run_send_test(plan, backend=backend, by="cli:tester")
    assert record.passed and record.sent == 4  # two variants × two seeds
    assert sorted((m["variant"], m["to"]) for m in record.messages) == [
        ("a", "137****7000"),
        ("a", "139****9000"),
        ("b", "137****7000"),
        ("b", "139****9000"),
    ]
    got = {(to, mid.split("~")[0]) for _, mid, to, *_ in simulator.log}
    assert {to for to, _ in got} == {"+8613900139000", "+8613700137000"} and {c for _, c in got} == {"gated"}
    texts = {m["id"]: m for m in record.messages}
    assert len(texts) == 4
    # the text changes after the test: the real send is refused until a new test
    path.write_text(path.read_text(encoding="utf-8").replace("新品八折", "新品七折"), encoding="utf-8")
    plan = prepare(path)
    with pytest.raises(GateClosed, match="changed since its last test send"):
        send(plan, backend=backend, progress=None)
    assert len(simulator.log) == 4
    assert run_send_test(plan, backend=backend, by="cli:tester").passed
    summary = send(plan, backend=backend, progress=None, runs_dir=tmp_path / "runs")
    assert summary.states["sent"] == 30 and summary.rows == 30
    campaign = [mid for _, mid, *_ in simulator.log if "~test-" not in mid]
    assert len(campaign) == 30 and len(simulator.log) == 38
    ledger = Ledger(tmp_path / "pigeon.db")
    try:  # the test messages are no recipients of the campaign
        assert ledger.counts("gated").states.get("submitted", 0) == 30
    finally:
        ledger.close()


def test_approval_from_the_command_line_is_recorded_and_used_up_by_its_run(
    tmp_path: Path, simulator: Simulator
) -> None:
    write_engine(tmp_path, simulator.port)
    path = _campaign(tmp_path, 5, AB + "[review]\nrequire_approval = true\n")
    with pytest.raises(GateClosed, match="requires approval"):
        send(prepare(path), progress=None)
    summary = send(prepare(path), progress=None, approved_by="lead", runs_dir=tmp_path / "runs")
    assert summary.states["sent"] == 5
    with Gates(tmp_path / "pigeon.db") as gates:
        row = gates.db.execute("SELECT by, via, generation FROM campaign_approvals").fetchall()
    assert [(r[0], r[1]) for r in row] == [("lead", "cli")] and row[0][2] is not None
    with pytest.raises(GateClosed, match="requires approval"):  # sent again: a new approval
        send(prepare(path), progress=None, again=True)


def _spend(m: Metrics) -> float:
    return float(m.registry.get_sample_value("pigeon_spend_total", {"carrier": "cm"}) or 0.0)


def test_the_spend_cap_refuses_in_preflight_stops_mid_blast_and_a_raised_cap_resumes(
    anyio_backend: tuple[str, dict[str, object]], tmp_path: Path, simulator: Simulator
) -> None:
    backend = anyio_backend[0]
    write_engine(tmp_path, simulator.port, max_batch=5)  # cm: 0.05 a part; requests of 5
    policy = '[template]\nsignature = "小鹅优选"\ntext = "{name}，春季上新"\n[policy]\nsend_window = ""\n'
    path = _campaign(tmp_path, 40, policy + "spend_cap = 1.0\n")
    with pytest.raises(SpendCapExceeded, match=r"cost 2\.00 CNY \(40 billed parts\), 1\.00 CNY over"):
        send(prepare(path), backend=backend, progress=None)
    assert simulator.log == []
    path.write_text(path.read_text(encoding="utf-8") + 'spend_cap_mode = "partial"\n', encoding="utf-8")
    metrics = Metrics(backend=backend)
    summary = send(prepare(path), backend=backend, progress=None, metrics=metrics, runs_dir=tmp_path / "r")
    assert summary.halted == "spend_cap" and "raise spend_cap" in summary.message
    assert summary.states["sent"] == 20 and summary.states["pending"] == 20
    assert summary.reasons["pending"] == {"spend_cap": 20} and summary.rows == 40
    assert len(simulator.log) == 20 and _spend(metrics) == pytest.approx(1.0)
    # raised to what the whole segment costs: the resume sends the other 20, nobody twice
    path.write_text(
        path.read_text(encoding="utf-8").replace("spend_cap = 1.0", "spend_cap = 2.0"), encoding="utf-8"
    )
    metrics = Metrics(backend=backend)
    summary = send(prepare(path), backend=backend, progress=None, metrics=metrics, runs_dir=tmp_path / "r")
    assert not summary.halted and summary.states["sent"] == 20
    ids = [mid for _, mid, *_ in simulator.log]
    assert len(ids) == 40 and len(set(ids)) == 40 and _spend(metrics) == pytest.approx(1.0)


@pytest.mark.anyio
async def test_service_gates_test_send_approval_by_another_key_and_cancel_while_waiting(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    engine, key = write_engine(tmp_path, simulator.port)
    ring = KeyRing(tmp_path / "api-keys.json")
    approver = ring.create("lead", scopes=["approve", "campaigns"])
    plain = ring.create("ops", scopes=["campaigns"])
    second = ring.create("auditor", scopes=["approve"])
    _campaign(tmp_path, 12, AB + f"[review]\nseeds = {SEEDS}\nrequire_approval = true\n")
    _campaign(tmp_path, 12, AB + "[review]\nrequire_approval = true\n", cid="other")
    auth = {"authorization": f"Bearer {key}"}
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, timeout=30) as c:
        r = await c.post("/v1/campaigns", json={"file": "gated.toml"}, headers=auth)
        assert r.status_code == 409 and "test send" in r.json()["detail"], r.text
        r = await c.post("/v1/campaigns", json={"file": "gated.toml", "test": True}, headers=auth)
        assert r.status_code == 200 and r.json()["passed"] and r.json()["sent"] == 4, r.text
        assert r.json()["by"] == "tests"
        r = await c.post("/v1/campaigns", json={"file": "gated.toml"}, headers=auth)
        assert r.status_code == 202 and r.json()["state"] == "awaiting_approval", r.text
        assert r.json()["submitted_by"] == "tests"
        # the submitting key may not approve (it has no approve scope; a key without scopes never
        # implies it), nor may a key without the scope, nor the submitter even with it
        for who in (key, plain):
            r = await c.post("/v1/campaigns/gated/approve", headers={"authorization": f"Bearer {who}"})
            assert r.status_code == 403, r.text
        await anyio.sleep(0.3)
        assert len(simulator.log) == 4  # only the test messages
        lead = {"authorization": f"Bearer {approver}"}
        r = await c.post("/v1/campaigns/gated/approve", headers=lead)
        assert r.status_code == 200 and r.json()["approved_by"] == "lead", r.text
        with anyio.fail_after(20):
            while True:  # polling the service over HTTP, as a client would
                if (await c.get("/v1/campaigns/gated", headers=auth)).json()["state"] == "finished":
                    break
                await anyio.sleep(0.05)
        r = await c.post("/v1/campaigns/gated/approve", headers=lead)
        assert r.status_code == 409
        # the approver's own submission cannot be approved by the approver
        r = await c.post("/v1/campaigns", json={"file": "other.toml"}, headers=lead)
        assert r.status_code == 202 and r.json()["state"] == "awaiting_approval"
        r = await c.post("/v1/campaigns/other/approve", headers=lead)
        assert r.status_code == 403 and "another key" in r.json()["detail"]
        # its text changes while it waits: an approval now would not be of what was submitted
        other = tmp_path / "campaigns" / "other.toml"
        other.write_text(other.read_text(encoding="utf-8").replace("春季上新", "夏季上新"), encoding="utf-8")
        r = await c.post("/v1/campaigns/other/approve", headers={"authorization": f"Bearer {second}"})
        assert r.status_code == 409 and "changed since it was submitted" in r.json()["detail"], r.text
        # cancel works while it waits, and nothing of it is ever sent
        r = await c.post("/v1/campaigns/other/cancel", headers=auth)
        assert r.status_code == 200 and r.json()["state"] == "cancelled" and r.json()["done"]
    ids = [mid for _, mid, *_ in simulator.log]
    assert len(ids) == 16 and not any(i.startswith("other") for i in ids)
    assert sum(1 for i in ids if "~test-" in i) == 4


async def _awaiting(c: httpx.AsyncClient, auth: dict[str, str]) -> list[str]:
    r = await c.get("/v1/campaigns?state=awaiting_approval", headers=auth)
    assert r.status_code == 200, r.text
    return sorted(x["id"] for x in r.json()["campaigns"])


async def _restored(c: httpx.AsyncClient, auth: dict[str, str], cid: str) -> dict[str, object]:
    with anyio.fail_after(10):
        while True:  # restored in the background as the service starts
            r = await c.get(f"/v1/campaigns/{cid}", headers=auth)
            if r.status_code == 200:
                got: dict[str, object] = r.json()
                return got
            await anyio.sleep(0.05)


async def _state_is(c: httpx.AsyncClient, auth: dict[str, str], cid: str, state: str) -> None:
    with anyio.fail_after(30):
        while True:  # polling the service over HTTP, as a client would
            if (await c.get(f"/v1/campaigns/{cid}", headers=auth)).json()["state"] == state:
                return
            await anyio.sleep(0.05)


@pytest.mark.anyio
async def test_campaigns_awaiting_approval_outlive_a_restart_of_the_service(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    """Posted, the service stopped and started on the same store: still awaiting approval (listed,
    with the key that posted it), approved by another key it sends; the submitter still cannot
    approve its own; one approved with a future send_at is scheduled; a cancelled one stays gone."""
    engine, key = write_engine(tmp_path, simulator.port)
    ring = KeyRing(tmp_path / "api-keys.json")
    lead = {"authorization": f"Bearer {ring.create('lead', scopes=['approve', 'campaigns'])}"}
    auditor = {"authorization": f"Bearer {ring.create('auditor', scopes=['approve'])}"}
    auth = {"authorization": f"Bearer {key}"}
    for cid in ("gated", "own", "later"):
        _campaign(tmp_path, 12, AB + "[review]\nrequire_approval = true\n", cid=cid)
    send_at = time.time() + 3600
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, timeout=30) as c:
        r = await c.post("/v1/campaigns", json={"file": "gated.toml"}, headers=auth)
        assert r.status_code == 202 and r.json()["state"] == "awaiting_approval", r.text
        r = await c.post("/v1/campaigns", json={"file": "own.toml"}, headers=lead)
        assert r.status_code == 202 and r.json()["state"] == "awaiting_approval", r.text
        r = await c.post("/v1/campaigns", json={"file": "later.toml", "send_at": send_at}, headers=auth)
        assert r.status_code == 202 and r.json()["state"] == "awaiting_approval", r.text
        assert await _awaiting(c, auth) == ["gated", "later", "own"]
    # stopped (a drain, as SIGTERM does) and started again on the same store
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, timeout=30) as c:
        view = await _restored(c, auth, "gated")
        assert view["state"] == "awaiting_approval" and view["submitted_by"] == "tests", view
        assert (await _restored(c, auth, "own"))["submitted_by"] == "lead"
        later = await _restored(c, auth, "later")
        assert later["state"] == "awaiting_approval" and later["send_at"] == send_at
        assert await _awaiting(c, auth) == ["gated", "later", "own"]
        assert simulator.log == []
        # the key that posted it still cannot approve it after the restart
        r = await c.post("/v1/campaigns/own/approve", headers=lead)
        assert r.status_code == 403 and "another key" in r.json()["detail"], r.text
        r = await c.post("/v1/campaigns/gated/approve", headers=lead)
        assert r.status_code == 200 and r.json()["approved_by"] == "lead", r.text
        assert r.json()["submitted_by"] == "tests"
        await _state_is(c, auth, "gated", "finished")
        r = await c.post("/v1/campaigns/later/approve", headers=auditor)
        assert r.status_code == 200 and r.json()["state"] == "scheduled", r.text
        assert r.json()["send_at"] == send_at
        r = await c.post("/v1/campaigns/own/cancel", headers=auth)
        assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
        assert await _awaiting(c, auth) == []
    ids = [mid for _, mid, *_ in simulator.log]
    assert len(ids) == 12 and len(set(ids)) == 12 and all(i.startswith("gated-") for i in ids)
    # a third start: the approved one is no longer awaiting (scheduled, from its own table), the
    # cancelled one is not brought back
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, timeout=30) as c:
        later = await _restored(c, auth, "later")
        assert later["state"] == "scheduled" and later["send_at"] == send_at
        r = await c.get("/v1/campaigns/own", headers=auth)
        assert r.status_code == 404, r.text
        assert await _awaiting(c, auth) == []
        r = await c.post("/v1/campaigns/later/cancel", headers=auth)
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert len(simulator.log) == 12


@pytest.mark.anyio
async def test_a_campaign_changed_while_the_service_was_down_needs_a_new_approval(
    anyio_backend: object, tmp_path: Path, simulator: Simulator
) -> None:
    """The approval is of the content that was posted (its hash, kept across the restart): the file
    changed while the service was down cannot be approved; posted again, the new text is approved
    and sent."""
    engine, key = write_engine(tmp_path, simulator.port)
    lead = {
        "authorization": f"Bearer {KeyRing(tmp_path / 'api-keys.json').create('lead', scopes=['approve'])}"
    }
    auth = {"authorization": f"Bearer {key}"}
    path = _campaign(tmp_path, 8, AB + "[review]\nrequire_approval = true\n")
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, timeout=30) as c:
        r = await c.post("/v1/campaigns", json={"file": "gated.toml"}, headers=auth)
        assert r.status_code == 202 and r.json()["state"] == "awaiting_approval", r.text
    path.write_text(path.read_text(encoding="utf-8").replace("新品八折", "新品七折"), encoding="utf-8")
    async with serving(engine) as (url, _), httpx.AsyncClient(base_url=url, timeout=30) as c:
        assert (await _restored(c, auth, "gated"))["state"] == "awaiting_approval"
        r = await c.post("/v1/campaigns/gated/approve", headers=lead)
        assert r.status_code == 409 and "changed since it was submitted" in r.json()["detail"], r.text
        assert simulator.log == []
        r = await c.post("/v1/campaigns/gated/cancel", headers=auth)
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
        r = await c.post("/v1/campaigns", json={"file": "gated.toml"}, headers=auth)
        assert r.status_code == 202 and r.json()["state"] == "awaiting_approval", r.text
        r = await c.post("/v1/campaigns/gated/approve", headers=lead)
        assert r.status_code == 200, r.text
        await _state_is(c, auth, "gated", "finished")
    assert len(simulator.log) == 8
    with Gates(tmp_path / "pigeon.db") as gates:  # one approval, of the content as changed
        rows = gates.db.execute("SELECT content, by, submitted_by FROM campaign_approvals").fetchall()
    assert len(rows) == 1 and rows[0][1:] == ("lead", "tests")
