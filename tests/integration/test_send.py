"""`pigeon preview` and `pigeon send` end to end, as an operator runs them, on both event loops."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from engine.run.plan import prepare
from engine.run.send import send
from tests.conftest import ROOT

SEGMENT = (
    "phone,name,coupon\r\n"
    "13800138000,张伟,20\r\n"  # row 2: cm
    "+86 130-0013-0000,,50\r\n"  # row 3: cu, no name: default
    "0086 133 0013 3000,王芳,10\r\n"  # row 4: ct
    "13490000000,卫星,10\r\n"  # row 5: satellite: rejected
    "12345,短号,10\r\n"  # row 6: invalid
    "19200000000,广电,\r\n"  # row 7: coupon missing: rejected
    "17100000000,虚拟,30\r\n"  # row 8: VNO on cu
    "+44 7911 123456,Ann,5\r\n"  # row 9: international
    "13800138001,张三\r\n"  # row 10: short row
    "+86 138 0013 8000,又是张伟,20\r\n"  # row 11: row 2's number again: suppressed
)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUTF8": "1"}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_send_writes_every_message_once_and_accounts_for_every_row(
    tmp_path: Path,
    write: Callable[[str, str | bytes], Path],
    campaign_file: Callable[..., Path],
    backend: str,
) -> None:
    write("seg.csv", SEGMENT)
    campaign = campaign_file("seg.csv", engine_kwargs={"max_batch": 2})
    result = run_cli("send", str(campaign), "--backend", backend, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["rows"] == 10
    assert summary["states"] == {"sent": 5, "rejected": 4, "suppressed": 1}
    assert summary["reasons"]["suppressed"] == {"duplicate": 1}
    assert sum(summary["states"].values()) == summary["rows"]
    assert summary["reasons"]["rejected"] == {
        "satellite_number": 1,
        "invalid_number": 1,
        "missing_field": 1,
        "malformed_row": 1,
    }
    assert {c: v["messages"] for c, v in summary["carriers"].items()} == {
        "cm": 1,
        "cu": 2,
        "ct": 1,
        "intl": 1,
    }
    assert summary["gateways"]["out"]["accepted"] == 5

    run_dir = Path(summary["run_dir"])
    assert not run_dir.is_absolute()  # relative to where the operator ran it
    sent = [json.loads(line) for line in (tmp_path / run_dir / "sent.jsonl").read_text("utf-8").splitlines()]
    by_id = {m["id"]: m for m in sent}
    assert len(by_id) == len(sent) == 5
    assert by_id["t-2"] == {
        "id": "t-2",
        "to": "+8613800138000",
        "text": "【小鹅优选】张伟，您的20元券已到账拒收请回复R",
        "carrier": "cm",
        "parts": 1,
    }
    assert by_id["t-3"]["text"].startswith("【小鹅优选】亲，")
    assert by_id["t-8"]["carrier"] == "cu"
    assert by_id["t-9"]["to"] == "+447911123456"

    with (tmp_path / run_dir / "rejects.csv").open(encoding="utf-8") as f:
        rejects = list(csv.DictReader(f))
    # In row order, as the segment has them, whichever stage refused the row (the source, normalize,
    # route, render): an operator reads the file beside the segment.
    assert [(int(r["row"]), r["reason"]) for r in rejects] == [
        (5, "satellite_number"),
        (6, "invalid_number"),
        (7, "missing_field"),
        (10, "malformed_row"),
    ]
    assert all("13490000000" not in r["phone"] for r in rejects)  # masked
    suppressed = (tmp_path / run_dir / "suppressed.csv").read_text("utf-8").splitlines()
    assert suppressed[1].startswith("11,duplicate,")
    on_disk = json.loads((tmp_path / run_dir / "summary.json").read_text("utf-8"))
    assert on_disk["states"] == summary["states"]


def test_preview_shows_samples_costs_and_rejects_without_sending(
    tmp_path: Path, write: Callable[[str, str | bytes], Path], campaign_file: Callable[..., Path]
) -> None:
    write("seg.csv", SEGMENT)
    campaign = campaign_file("seg.csv")
    result = run_cli("preview", str(campaign), "--json", "-n", "2", "--rejects", "rej.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["mode"] == "preview"
    assert summary["states"] == {"rendered": 5, "rejected": 4, "suppressed": 1}
    assert [s["row"] for s in summary["samples"]] == [2, 3]
    assert summary["samples"][0]["to"] == "138****8000"
    cm = summary["carriers"]["cm"]
    assert cm == {"messages": 1, "parts": 1, "cost": pytest.approx(0.05)}
    assert summary["total_cost"] == pytest.approx(0.05 + 2 * 0.04 + 0.03)
    assert not (tmp_path / "runs").exists()
    assert len((tmp_path / "rej.csv").read_text("utf-8").splitlines()) == 5

    human = run_cli("preview", str(campaign), cwd=tmp_path)
    assert human.returncode == 0
    assert "China Mobile" in human.stdout and "satellite_number" in human.stdout


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("{coupon}", "{copon}"), "did you mean {coupon}?"),
        (('signature = "小鹅优选"', 'signatur = "x"'), "template.signatur: unknown key"),
        (('path = "seg.csv"', 'path = "nope.csv"'), "segment file not found"),
        (
            ('signature = "小鹅优选"', 'signature = "鹅"'),
            "template.signature: the signature 【鹅】 has 1 characters",
        ),
        (
            ("元券已到账", "元券，全网最低价"),
            "absolute terms the Advertising Law (Art. 9) forbids in ads: 最低",
        ),
    ],
)
def test_bad_input_fails_before_the_first_send_and_says_what_to_change(
    tmp_path: Path,
    write: Callable[[str, str | bytes], Path],
    campaign_file: Callable[..., Path],
    change: tuple[str, str],
    message: str,
) -> None:
    write("seg.csv", SEGMENT)
    campaign = campaign_file("seg.csv")
    campaign.write_text(campaign.read_text("utf-8").replace(*change), encoding="utf-8")
    result = run_cli("send", str(campaign), cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("sent.jsonl"))


def test_preview_of_a_campaign_send_would_refuse_shows_why_and_exits_2(
    tmp_path: Path, write: Callable[[str, str | bytes], Path], campaign_file: Callable[..., Path]
) -> None:
    write("seg.csv", SEGMENT)
    campaign = campaign_file("seg.csv", text="国家级好券 {name} {coupon}")
    result = run_cli("preview", str(campaign), cwd=tmp_path)
    assert result.returncode == 2
    assert "国家级" in result.stdout and "will refuse" in result.stdout
    assert "Sample messages" in result.stdout  # the preview still shows what it would send


def test_the_example_campaign_runs_as_the_readme_says(tmp_path: Path) -> None:
    segment = tmp_path / "segment.csv"
    gen = subprocess.run(
        [sys.executable, str(ROOT / "config" / "make_segment.py"), "--rows", "3000", "-o", str(segment)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert gen.returncode == 0, gen.stderr
    campaign = tmp_path / "campaign.toml"
    campaign.write_text((ROOT / "config" / "campaign.toml").read_text("utf-8"), encoding="utf-8")
    (tmp_path / "engine.toml").write_text(
        (ROOT / "config" / "engine.toml").read_text("utf-8"), encoding="utf-8"
    )
    result = run_cli("send", str(campaign), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["rows"] == 3000
    assert summary["states"]["sent"] + summary["states"]["rejected"] == 3000
    assert summary["states"]["rejected"] < 150
    assert (tmp_path / "pigeon.db").exists()  # the example's store, next to its engine file

    # The campaign is finished: running it again sends nothing and says what to do.
    rerun = run_cli("send", str(campaign), "--json", cwd=tmp_path)
    assert rerun.returncode == 2 and rerun.stdout == ""
    assert "already finished" in rerun.stderr and "--again" in rerun.stderr
    # Sent afresh on purpose, the example's same-content rule (the same text to a number at most
    # once per 30 s) still suppresses everyone sent a moment ago.
    again = json.loads(run_cli("send", str(campaign), "--again", "--json", cwd=tmp_path).stdout)
    assert again["states"].get("sent", 0) == 0
    assert again["reasons"]["suppressed"]["same_content"] == summary["states"]["sent"]


def test_gbk_excel_export_with_crlf_and_bom_free_header(
    tmp_path: Path, write: Callable[[str, str | bytes], Path], campaign_file: Callable[..., Path]
) -> None:
    write("seg.csv", SEGMENT.encode("gbk", errors="replace"))
    campaign = campaign_file("seg.csv", extra_segment='encoding = "gbk"')
    summary = msgspec.json.decode(run_cli("preview", str(campaign), "--json", cwd=tmp_path).stdout)
    assert summary["states"] == {"rendered": 5, "rejected": 4, "suppressed": 1}


@pytest.mark.anyio
async def test_send_api_on_both_backends_gives_the_same_result(
    anyio_backend: tuple[str, dict[str, object]],
    tmp_path: Path,
    write: Callable[[str, str | bytes], Path],
    campaign_file: Callable[..., Path],
) -> None:
    """The async core is backend-neutral: the lanes run inside the test's own event loop here."""
    from engine.core.clock import SystemClock
    from engine.run.blast import _send
    from engine.run.plan import new_run_dir

    write("seg.csv", SEGMENT)
    plan = prepare(campaign_file("seg.csv", engine_kwargs={"max_batch": 1}))
    run_dir = new_run_dir(plan, tmp_path / "runs")
    summary = await _send(plan, run_dir, None, SystemClock())
    assert summary.states == {"sent": 5, "rejected": 4, "suppressed": 1}
    assert summary.gateways["out"].requests == 5  # max_batch 1: one request per message
    assert len((run_dir / "sent.jsonl").read_text("utf-8").splitlines()) == 5


def test_jsonl_segment(
    tmp_path: Path, write: Callable[[str, str | bytes], Path], campaign_file: Callable[..., Path]
) -> None:
    lines = [
        {"phone": 13800138000, "name": "张伟", "coupon": 20},
        {"phone": "bad", "coupon": 1},
        {"name": "x"},
        {"phone": "13800138001", "name": "李娜", "coupon": 30},
        {"phone": 13800138002, "coupon": 10},
    ]
    write("seg.jsonl", "\n".join(json.dumps(x, ensure_ascii=False) for x in lines))
    plan = prepare(campaign_file("seg.jsonl", source="jsonl"))
    summary = send(plan, runs_dir=tmp_path / "runs")
    assert summary.states == {"sent": 3, "rejected": 2}
    assert summary.reasons["rejected"] == {"invalid_number": 1, "missing_phone": 1}


def test_opted_out_numbers_are_suppressed_in_marketing_but_not_transactional(
    tmp_path: Path, write: Callable[[str, str | bytes], Path], campaign_file: Callable[..., Path]
) -> None:
    write("seg.csv", SEGMENT)
    campaign = campaign_file("seg.csv")
    engine = tmp_path / "engine.toml"
    engine.write_text(engine.read_text("utf-8") + '[store]\npath = "state/pigeon.db"\n', encoding="utf-8")
    added = run_cli(
        "optout", "--engine", str(engine), "add", "+86 130 0013 0000", "13800138000", cwd=tmp_path
    )
    assert added.returncode == 0, added.stderr
    assert (tmp_path / "state" / "pigeon.db").exists()

    summary = json.loads(run_cli("preview", str(campaign), "--json", cwd=tmp_path).stdout)
    # 13800138000 is on two rows: each says why it was not sent (opted out), not "duplicate"
    assert summary["reasons"]["suppressed"] == {"opted_out": 3}
    assert summary["states"]["rendered"] == 3

    campaign.write_text(campaign.read_text("utf-8").replace('kind = "marketing"', 'kind = "transactional"'))
    summary = json.loads(run_cli("preview", str(campaign), "--json", cwd=tmp_path).stdout)
    assert summary["reasons"]["suppressed"] == {"duplicate": 1}


def test_optout_import_reports_bad_lines(
    tmp_path: Path, write: Callable[[str, str | bytes], Path], engine_file: Callable[..., Path]
) -> None:
    engine = engine_file()
    write("list.csv", "手机号\n13800138000\n+86 139 0013 9000\nnot-a-number\n13800138000\n")
    result = run_cli("optout", "--engine", str(engine), "import", "list.csv", cwd=tmp_path)
    assert result.returncode == 2
    assert (
        "2 added" in result.stdout
        and "1 already on the list" in result.stdout
        and "1 not numbers" in result.stdout
    )
    assert "line 4" in result.stdout
    check = run_cli("optout", "--engine", str(engine), "check", "13900139000", cwd=tmp_path)
    assert check.returncode == 0 and "opted out on" in check.stdout


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_caps_hold_across_runs_and_kinds(
    tmp_path: Path,
    write: Callable[[str, str | bytes], Path],
    campaign_file: Callable[..., Path],
    backend: str,
) -> None:
    write("seg.csv", SEGMENT)
    campaign = campaign_file("seg.csv")
    engine = tmp_path / "engine.toml"
    engine.write_text(
        engine.read_text("utf-8")
        + '[caps.marketing]\nwindows = [{ limit = 1, period = "calendar_day" }, { limit = 2, period = "7d" }]\n',
        encoding="utf-8",
    )
    first = json.loads(run_cli("send", str(campaign), "--json", "--backend", backend, cwd=tmp_path).stdout)
    assert first["states"]["sent"] == 5
    # The same campaign sent afresh (--again: it finished) is held back by the caps of the first run.
    second = json.loads(
        run_cli("send", str(campaign), "--again", "--json", "--backend", backend, cwd=tmp_path).stdout
    )
    assert second["states"].get("sent", 0) == 0
    # every row of a capped number says so, its repeat too (dedupe runs after the rejecting stages)
    assert second["reasons"]["suppressed"] == {"capped": 6}
    assert second["rows"] == first["rows"]

    # Transactional messages have their own budget: the marketing sends do not count against them.
    campaign.write_text(campaign.read_text("utf-8").replace('kind = "marketing"', 'kind = "transactional"'))
    third = json.loads(
        run_cli("send", str(campaign), "--again", "--json", "--backend", backend, cwd=tmp_path).stdout
    )
    assert third["states"]["sent"] == 5


def test_bad_cap_settings_name_the_key(write: Callable[[str, str | bytes], Path]) -> None:
    from engine.core.config import load_engine
    from engine.core.errors import ConfigError

    f = write(
        "engine.toml",
        '[gateways.x]\nplugin = "blackhole"\n[caps.marketing]\nwindows = [{ limit = 3, period = "1w" }]\n',
    )
    with pytest.raises(ConfigError, match=r"caps.marketing.windows\[0\].period: '1w' is not a period"):
        load_engine(f)
    f = write("engine.toml", '[gateways.x]\nplugin = "blackhole"\n[caps.marketing]\ntimezone = "Mars/Base"\n')
    with pytest.raises(ConfigError, match=r"caps\.marketing\.timezone: unknown time zone"):
        load_engine(f)


def _closed_window_now() -> str:
    """A one-hour window that starts two hours from now, Shanghai time."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    h = (datetime.now(ZoneInfo("Asia/Shanghai")).hour + 2) % 24
    return f"{h:02d}:00-{(h + 1) % 24:02d}:00" if h != 23 else "23:00-24:00"


def test_quiet_hours_no_wait_sends_nothing_and_says_when(
    tmp_path: Path, write: Callable[[str, str | bytes], Path], campaign_file: Callable[..., Path]
) -> None:
    write("seg.csv", SEGMENT)
    campaign = campaign_file("seg.csv", send_window=_closed_window_now())
    result = run_cli("send", str(campaign), "--no-wait", cwd=tmp_path)
    assert result.returncode == 4
    assert "not now: outside sending hours" in result.stderr and "Asia/Shanghai (in" in result.stderr
    assert not (tmp_path / "runs").exists()
    summary = json.loads(run_cli("preview", str(campaign), "--json", cwd=tmp_path).stdout)
    assert summary["states"]["rejected"] == 4 and summary["states"]["suppressed"] == 1
    # The four Chinese numbers wait for Shanghai's window; the UK one for London's.
    assert summary["states"]["deferred"] >= 4
    assert summary["states"]["deferred"] + summary["states"].get("rendered", 0) == 5


@pytest.mark.anyio
async def test_a_blast_at_night_pauses_until_the_window_opens_then_sends_everyone(
    anyio_backend: tuple[str, dict[str, object]],
    tmp_path: Path,
    write: Callable[[str, str | bytes], Path],
    campaign_file: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    import anyio

    import engine.run.blast as rt
    from engine.core.clock import FakeClock
    from engine.run.plan import new_run_dir

    monkeypatch.setattr(rt, "WINDOW_POLL_SECONDS", 0.01)
    write("seg.csv", SEGMENT)
    night = datetime(2026, 11, 22, 23, 30, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()
    clock = FakeClock(night)
    plan = prepare(campaign_file("seg.csv", send_window="08:00-21:00"), clock=clock)
    notes: list[str] = []
    result: list[object] = []

    async def blast() -> None:
        result.append(await rt._send(plan, new_run_dir(plan, tmp_path / "runs"), None, clock, notes.append))

    async with anyio.create_task_group() as tg:
        tg.start_soon(blast)
        await anyio.sleep(0.1)
        assert result == [] and "resuming 2026-11-23 08:00 Asia/Shanghai (in 8h 30m)" in notes[0]
        clock.advance(9 * 3600)  # 08:30 next morning
    summary = result[0]
    # 08:30 in Shanghai is 00:30 in London: the UK number is deferred, everyone else is sent.
    assert summary.states == {"sent": 4, "deferred": 1, "rejected": 4, "suppressed": 1}  # type: ignore[attr-defined]
    assert notes[-1] == "sending hours: resumed"


def test_consent_import_and_check(
    tmp_path: Path, write: Callable[[str, str | bytes], Path], engine_file: Callable[..., Path]
) -> None:
    engine = engine_file()
    write("members.csv", "phone\n13800138000\n+86 139 0013 9000\n")
    result = run_cli(
        "consent",
        "--engine",
        str(engine),
        "import",
        "members.csv",
        "--source",
        "member_signup",
        "--proof",
        "terms v3",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    check = run_cli("consent", "--engine", str(engine), "check", "13900139000", "13700137000", cwd=tmp_path)
    assert check.returncode == 1  # one of them has no consent on record
    assert (
        "consent given" in check.stdout
        and "terms v3" in check.stdout
        and "no consent on record" in check.stdout
    )


def test_the_same_text_to_the_same_number_waits_out_its_window(
    tmp_path: Path, write: Callable[[str, str | bytes], Path], campaign_file: Callable[..., Path]
) -> None:
    write("seg.csv", SEGMENT)
    campaign = campaign_file("seg.csv")
    engine = tmp_path / "engine.toml"
    engine.write_text(engine.read_text("utf-8") + '[caps.marketing]\nsame_content = "1h"\n', encoding="utf-8")
    first = json.loads(run_cli("send", str(campaign), "--json", cwd=tmp_path).stdout)
    assert first["states"]["sent"] == 5
    again = json.loads(run_cli("send", str(campaign), "--again", "--json", cwd=tmp_path).stdout)
    assert again["states"].get("sent", 0) == 0
    assert again["reasons"]["suppressed"]["same_content"] == 5
    campaign.write_text(campaign.read_text("utf-8").replace("元券已到账", "元券今晚到期"), encoding="utf-8")
    other_text = json.loads(run_cli("send", str(campaign), "--again", "--json", cwd=tmp_path).stdout)
    assert other_text["states"]["sent"] == 5


def test_require_consent_sends_marketing_only_to_numbers_with_a_consent_record(
    tmp_path: Path, write: Callable[[str, str | bytes], Path], campaign_file: Callable[..., Path]
) -> None:
    write("seg.csv", SEGMENT)
    campaign = campaign_file("seg.csv")
    campaign.write_text(campaign.read_text("utf-8") + "require_consent = true\n", encoding="utf-8")
    # consent for two of the five sendable numbers (in other spellings than the segment's)
    write("members.csv", "phone\n+8613800138000\n133 0013 3000\n")
    imported = run_cli("consent", "import", "members.csv", "--source", "checkout", cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    result = run_cli("send", str(campaign), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    # (like opt-outs, consent is the number's: checked before the rows' own checks, so a row whose
    # number has no consent is suppressed for it even when its data would be rejected later)
    assert summary["states"] == {"sent": 2, "rejected": 2, "suppressed": 6}
    assert summary["reasons"]["suppressed"] == {"no_consent": 5, "duplicate": 1}
    sent = (tmp_path / summary["run_dir"] / "sent.jsonl").read_text("utf-8").splitlines()
    assert sorted(json.loads(line)["to"] for line in sent) == ["+8613300133000", "+8613800138000"]
    report = json.loads(run_cli("report", "t", "--format", "json", cwd=tmp_path).stdout)
    assert report["reasons"]["suppressed"]["no_consent"] == 5
    # the same campaign without the requirement sends to all five (consent is not needed then)
    campaign.write_text(campaign.read_text("utf-8").replace("require_consent = true\n", ""), encoding="utf-8")
    again = json.loads(run_cli("send", str(campaign), "--again", "--json", cwd=tmp_path).stdout)
    assert again["states"]["sent"] == 5


@pytest.mark.anyio
async def test_a_daily_limit_spreads_a_blast_over_days_exactly(
    anyio_backend: tuple[str, dict[str, object]],
    tmp_path: Path,
    write: Callable[[str, str | bytes], Path],
    campaign_file: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """100 recipients at 30 a day, read in batches of 16 (so a day's last batch is split): 30, 30,
    30, 10 on four days, each day's share inside the window, the split ones sent the next morning."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    import anyio

    import engine.run.blast as rt
    from engine.core.clock import FakeClock
    from engine.run.plan import new_run_dir

    monkeypatch.setattr(rt, "WINDOW_POLL_SECONDS", 0.01)
    sh = ZoneInfo("Asia/Shanghai")
    write("seg.csv", "phone,name,coupon\n" + "".join(f"1380013{i:04d},客{i},5\n" for i in range(100)))
    path = campaign_file("seg.csv", send_window="08:00-21:00", engine_kwargs={"batch_size": 16})
    path.write_text(path.read_text(encoding="utf-8") + "daily_limit = 30\n", encoding="utf-8")
    clock = FakeClock(datetime(2026, 11, 22, 20, 0, tzinfo=sh).timestamp())
    plan = prepare(path, clock=clock)
    run_dir = new_run_dir(plan, tmp_path / "runs")
    notes: list[str] = []
    result: list[object] = []
    sent_at: dict[str, float] = {}

    def sent() -> list[str]:
        out = run_dir / "sent.jsonl"
        lines = out.read_text(encoding="utf-8").splitlines() if out.exists() else []
        for line in lines:
            sent_at.setdefault(json.loads(line)["to"], clock.time())
        return lines

    async def blast() -> None:
        result.append(await rt._send(plan, run_dir, None, clock, notes.append))

    async with anyio.create_task_group() as tg:
        tg.start_soon(blast)
        for day, total in enumerate([30, 60, 90], start=1):
            with anyio.fail_after(20):
                while True:  # (the gateway's file and the notes: nothing to wait on but them)
                    if sum("daily limit" in n for n in notes) >= day and len(sent()) >= total:
                        break
                    await anyio.sleep(0.01)
            await anyio.sleep(0.1)
            assert len(sent()) == total, day  # paused: nothing more that day
            clock.advance(datetime(2026, 11, 22 + day, 8, 30, tzinfo=sh).timestamp() - clock.time())
    assert (
        "daily limit of 30 recipients reached: paused; resuming 2026-11-23 08:00 Asia/Shanghai (in 12h 00m)"
        in notes
    )
    assert result[0].states == {"sent": 100}  # type: ignore[attr-defined]
    assert len(sent()) == 100 and len(set(sent_at)) == 100  # everyone once
    per_day = Counter(datetime.fromtimestamp(t, sh).date().day for t in sent_at.values())
    assert per_day == {22: 30, 23: 30, 24: 30, 25: 10}
