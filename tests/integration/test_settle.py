"""``pigeon settle`` against the Aliyun and Tencent simulators, both event loops: messages a
provider took without answering, and messages it never took, end ``unknown``; settling moves each
to its true state from the query API, once — a second settle changes nothing."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.core.config import load_engine
from engine.run.settle import NOT_SENT, asettle_campaign
from engine.state.ledger.records import LedgerState
from engine.state.ledger.store import Ledger
from loadtests.sim_aliyun import AliyunSim, AliyunSimConfig
from loadtests.sim_cloud import SimThread
from loadtests.sim_tencent import TencentSim, TencentSimConfig
from tests.integration.crash_harness import send_with_ledger

ROOT = Path(__file__).resolve().parents[2]
ROWS = 400
ALIYUN_TEXT = "亲爱的${name}，您的${coupon}元券已到账，拒收请回复R"
TENCENT_TEXT = "{1}，您的{2}元券已到账，拒收请回复R"
HUNG = 17
"""The row whose request the simulator takes and never answers (a timeout that did send)."""
DROPPED = 211
"""The row whose request the simulator reads and hangs up on, taking nothing."""
KEYS = {
    "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAIsimKeyId",
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "simSecret",
    "TENCENTCLOUD_SECRET_ID": "AKIDsim",
    "TENCENTCLOUD_SECRET_KEY": "simKey",
}


def _number(row: int) -> str:
    """The national number of segment row ``row`` (the header is row 1)."""
    i = row - 2
    return f"13{8 + i % 2}{i:08d}"


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in KEYS.items():
        monkeypatch.setenv(k, v)


@pytest.fixture(params=["aliyun", "tencent"])
def provider(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sim(provider: str) -> Iterator[Any]:
    if provider == "aliyun":
        s: Any = AliyunSim(
            AliyunSimConfig(
                templates={"SMS_1": ALIYUN_TEXT},
                undeliv_numbers={_number(HUNG)},  # the rest delivered: the outcome fixed, not drawn
                hang_s=3,
                hang_numbers={_number(HUNG)},
                drop_numbers={_number(DROPPED)},
            )
        )
    else:
        s = TencentSim(
            TencentSimConfig(
                templates={"1234567": TENCENT_TEXT},
                undeliv_numbers={"+86" + _number(HUNG)},
                hang_s=3,
                hang_numbers={"+86" + _number(HUNG)},
                drop_numbers={"+86" + _number(DROPPED)},
            )
        )
    with SimThread(s) as running:
        yield running


def _files(tmp_path: Path, provider: str, port: int) -> Path:
    # Names repeat every 7 rows, coupons every 3: requests of equal parameters, and others.
    seg = "phone,name,coupon\n" + "".join(
        f"{_number(r)},客{(r - 2) % 7},{5 + (r - 2) % 3}\n" for r in range(2, ROWS + 2)
    )
    (tmp_path / "seg.csv").write_text(seg, encoding="utf-8")
    if provider == "aliyun":
        gw = (
            f'plugin = "aliyun"\n[gateways.cloud.options]\nurl = "http://127.0.0.1:{port}"\n'
            "timeout = 1.0\nquery_lag = 0.0\n"
        )
        tpl = (
            f'provider = "aliyun"\ncode = "SMS_1"\ntext = "{ALIYUN_TEXT}"\n'
            'params = { name = "name", coupon = "coupon" }'
        )
    else:
        gw = (
            f'plugin = "tencent"\n[gateways.cloud.options]\nurl = "http://127.0.0.1:{port}"\n'
            'sdk_app_id = "1400000001"\ntimeout = 1.0\n'
        )
        tpl = f'provider = "tencent"\ncode = "1234567"\ntext = "{TENCENT_TEXT}"\nparams = {{ 1 = "name", 2 = "coupon" }}'
    (tmp_path / "engine.toml").write_text(
        'batch_size = 128\nruns_dir = "runs"\n[retry]\nmax_attempts = 5\nbase = 0.05\ncap = 0.2\n'
        f"[gateways.cloud]\nbreaker_threshold = 1000\n{gw}",
        encoding="utf-8",
    )
    campaign = tmp_path / "campaign.toml"
    campaign.write_text(
        f'id = "cloud"\nengine = "engine.toml"\n[segment]\nsource = "csv"\npath = "seg.csv"\n'
        f'[template]\nsignature = "小鹅优选"\n[template.provider]\n{tpl}\n[policy]\nsend_window = ""\n',
        encoding="utf-8",
    )
    return campaign


def _states(tmp_path: Path) -> dict[int, tuple[str, str]]:
    """Row → (state, reason) of every recipient the campaign handed over."""
    ledger = Ledger(tmp_path / "pigeon.db")
    try:
        out = {}
        for row in range(2, ROWS + 2):
            rec = ledger.message(f"cloud-{row}")
            assert rec is not None, f"row {row} has no state"
            out[row] = (rec.state.value, rec.reason)
        return out
    finally:
        ledger.close()


def _reports_per_row(tmp_path: Path) -> dict[int, int]:
    db = sqlite3.connect(tmp_path / "pigeon.db")
    try:
        return dict(
            db.execute("SELECT row, count(*) FROM ledger_reports WHERE campaign = 'cloud' GROUP BY row")
        )
    finally:
        db.close()


def _truth(provider: str, sim: Any) -> dict[str, str]:
    """National number → what the provider knows became of the message it took."""
    if provider == "aliyun":
        return {r["n"]: "delivered" if r["ok"] else "failed" for r in sim.records}
    return {n[3:]: "delivered" if ok else "failed" for n, ok in sim.fates.items()}


def _pigeon(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``pigeon ARGS`` in ``cwd``; it must exit 0."""
    env = {**os.environ, **KEYS, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


def _settle_cli(tmp_path: Path, backend: str) -> dict[str, Any]:
    done = _pigeon(tmp_path, "settle", "cloud", "--engine", "engine.toml", "--json", "--backend", backend)
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


@pytest.mark.anyio
async def test_unknown_messages_are_settled_to_their_true_states_once(
    tmp_path: Path, keys: None, provider: str, sim: Any, anyio_backend: Any
) -> None:
    campaign = _files(tmp_path, provider, sim.port)
    summary = await send_with_ledger(campaign, tmp_path / "runs")
    before = _states(tmp_path)
    unknown = {r for r, (st, _) in before.items() if st == "unknown"}
    assert summary.states.get("unknown") == len(unknown)
    assert HUNG in unknown and DROPPED in unknown, "the faults did not happen: the test proves nothing"
    took = {n for n, _ in sim.sent} if provider == "aliyun" else {n[3:] for n, _ in sim.sent}
    hung = {r for r in unknown if _number(r) in took}
    dropped = unknown - hung
    assert HUNG in hung and DROPPED in dropped and len(hung) > 1
    if provider == "aliyun":  # no journal (as after a crash): the numbers come from the segment
        for journal in (tmp_path / "runs").glob("cloud/*/unsettled-*.jsonl"):
            journal.unlink()
    truth = _truth(provider, sim)

    backend = anyio_backend[0] if isinstance(anyio_backend, tuple) else anyio_backend
    first = _settle_cli(tmp_path, backend)
    after = _states(tmp_path)
    for r in hung:  # taken without an answer: the provider's own record of it
        assert after[r][0] == truth[_number(r)], (r, after[r], truth[_number(r)])
    assert after[HUNG][0] == "failed" and {after[r][0] for r in hung} == {"delivered", "failed"}
    if provider == "aliyun":  # never taken: QuerySendDetails lists every send of the number
        assert {after[r] for r in dropped} == {("failed", f"dlr:{NOT_SENT}")}
        assert first["not_sent"] == len(dropped)
        assert first["unknown"] == 0 and first["receipts"] == 0
    else:  # a pull cannot prove a message was never taken: it stays unknown
        assert {after[r][0] for r in dropped} == {"unknown"}
        assert first["unknown"] == len(dropped)
        # the pull also handed out the receipts of every message Tencent answered for
        answered = {r for r, (st, _) in before.items() if st == "submitted"}
        assert first["receipts"] == len(answered) > 0
        assert all(after[r][0] == truth[_number(r)] for r in answered)
    assert first["asked"] == len(unknown)
    assert first["delivered"] + first["failed"] == len(hung)
    assert first["errors"] == [] and first["kept"] == 0
    per_row = _reports_per_row(tmp_path)
    assert max(per_row.values()) == 1  # no message recorded twice
    for r, (st, _) in before.items():  # nothing else moved
        if st not in ("unknown", "submitted"):
            assert after[r] == before[r]

    # Asking again changes nothing (only what is still unknown is asked about).
    engine = load_engine(tmp_path / "engine.toml")
    again = await asettle_campaign(engine, "cloud", runs_dirs=[tmp_path / "runs"])
    assert again.settled == 0 and again.asked == (0 if provider == "aliyun" else len(dropped))
    assert _states(tmp_path) == after
    assert _reports_per_row(tmp_path) == per_row
    ledger = Ledger(tmp_path / "pigeon.db")
    try:
        left = ledger.rows_in("cloud", LedgerState.UNKNOWN).tolist()
    finally:
        ledger.close()
    assert set(left) == (set() if provider == "aliyun" else dropped)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("provider", ["aliyun"], indirect=True)
def test_send_settle_after_asks_about_what_the_run_left_unknown(
    tmp_path: Path, keys: None, provider: str, sim: Any, backend: str
) -> None:
    _files(tmp_path, provider, sim.port)
    done = _pigeon(
        tmp_path, "send", "campaign.toml", "--json", "-q", "--settle-after", "0", "--backend", backend
    )
    doc = json.loads(done.stdout)
    unknown = doc["states"]["unknown"]
    assert unknown > 0 and "waiting 0 s for late receipts" in done.stderr
    assert doc["settle"]["asked"] == unknown and doc["settle"]["settled"] == unknown
    ledger = Ledger(tmp_path / "pigeon.db")
    try:
        assert ledger.rows_in("cloud", LedgerState.UNKNOWN).size == 0
        assert ledger.counts("cloud").total == ROWS
    finally:
        ledger.close()


@pytest.mark.anyio
@pytest.mark.parametrize("provider", ["aliyun"], indirect=True)
async def test_numbers_are_read_only_from_the_segment_the_campaign_was_sent_from(
    tmp_path: Path, keys: None, provider: str, sim: Any, anyio_backend: Any
) -> None:
    campaign = _files(tmp_path, provider, sim.port)
    summary = await send_with_ledger(campaign, tmp_path / "runs")
    unknown = summary.states["unknown"]
    for journal in (tmp_path / "runs").glob("cloud/*/unsettled-*.jsonl"):
        journal.unlink()  # no journal (as after a crash): only the segment knows the numbers
    seg = tmp_path / "seg.csv"
    original = seg.read_bytes()
    seg.write_bytes(original.replace(_number(HUNG).encode(), b"13999999999"))  # edited since
    engine = load_engine(tmp_path / "engine.toml")
    said: list[str] = []
    counts = await asettle_campaign(engine, "cloud", notify=said.append)
    assert counts.no_number == unknown and counts.asked == 0 and sim.stats["queries"] == 0
    assert any("not the file the campaign was sent from" in s for s in said)
    seg.write_bytes(original)
    counts = await asettle_campaign(engine, "cloud")
    assert counts.no_number == 0 and counts.asked == unknown and counts.settled == unknown
    # --submitted: also those accepted without a receipt yet (the simulator pushed none)
    ledger = Ledger(tmp_path / "pigeon.db")
    try:
        waiting = ledger.rows_in("cloud", LedgerState.SUBMITTED).size
    finally:
        ledger.close()
    assert waiting == ROWS - unknown
    counts = await asettle_campaign(engine, "cloud", submitted=True)
    assert counts.asked == waiting and counts.delivered == waiting and counts.unknown == 0
    assert _reports_per_row(tmp_path) == dict.fromkeys(range(2, ROWS + 2), 1)
