"""Holdout, order import and the outcomes report, as a merchant runs them: send, import orders, report."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from engine.core.config import load_engine
from engine.core.messages import DeliveryReport, DeliveryStatus
from engine.state.ledger.store import Ledger
from tests.integration.test_send import run_cli

SHANGHAI = ZoneInfo("Asia/Shanghai")
N = 2000
PREFIXES = ("138", "130", "133", "150", "186", "189")


def _splitmix_holdout(number: str, campaign: str, share: float) -> bool:
    """The documented holdout rule, written out with Python ints (independent of numpy)."""
    mask = (1 << 64) - 1
    seed = int.from_bytes(hashlib.sha256(campaign.encode()).digest()[:8], "big")
    x = (int(number) ^ seed) & mask
    x = (x + 0x9E3779B97F4A7C15) & mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    x ^= x >> 31
    return (x >> 11) / 2**53 < share


def _phone(i: int) -> str:
    return f"{PREFIXES[i % len(PREFIXES)]}{i:08d}"


def _wall(ts: float) -> str:
    return datetime.fromtimestamp(ts, SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")


def _campaign(write: Callable[[str, str | bytes], Path], cid: str, segment: str, holdout: float) -> Path:
    return write(
        f"{cid}.toml",
        f"""\
        id = "{cid}"
        engine = "engine.toml"
        [segment]
        source = "csv"
        path = "{segment}"
        [template]
        signature = "小鹅优选"
        text = "{{name}}您好，新品上架"
        [policy]
        send_window = ""
        [outcomes]
        holdout = {holdout}
        window = "7d"
        """,
    )


def _report(tmp_path: Path, cid: str) -> dict:  # type: ignore[type-arg]
    done = run_cli("report", cid, "--outcomes", "--format", "json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_holdout_orders_and_outcomes_report(
    tmp_path: Path, write: Callable[[str, str | bytes], Path], engine_file: Callable[..., Path]
) -> None:
    engine_file()
    phones = [_phone(i) for i in range(N)]
    groups = ["A" if i % 2 else "B" for i in range(N)]
    write(
        "seg.csv",
        "phone,group,name\n"
        + "".join(f"{p},{g},n{i}\n" for i, (p, g) in enumerate(zip(phones, groups, strict=True))),
    )
    c1 = _campaign(write, "c1", "seg.csv", 0.2)

    # Preview shows the holdout before anything is sent; the send holds the same people back.
    preview = json.loads(run_cli("preview", str(c1), "--json", cwd=tmp_path).stdout)
    sent = run_cli("send", str(c1), "--json", cwd=tmp_path)
    assert sent.returncode == 0, sent.stderr
    summary = json.loads(sent.stdout)
    expected_held = {i for i in range(N) if _splitmix_holdout(phones[i], "c1", 0.2)}
    assert 300 < len(expected_held) < 500  # binomial around 400
    assert preview["reasons"]["suppressed"]["held_out"] == len(expected_held)
    assert summary["reasons"]["suppressed"]["held_out"] == len(expected_held)
    assert summary["states"]["sent"] == N - len(expected_held)

    store_path = load_engine(tmp_path / "engine.toml").store_path
    ledger = Ledger(store_path)
    try:
        rows = ledger.row_outcomes("c1")
        held_rows = {i for i in range(N) if ledger.message(f"c1-{i + 2}").reason == "held_out"}  # type: ignore[union-attr]
        assert held_rows == expected_held  # the same recipients, chosen by the documented hash
        # receipts for every other sent recipient, a second after the hand-over
        reports = [
            DeliveryReport(
                provider_id="",
                message_id=f"c1-{i + 2}",
                status=DeliveryStatus.DELIVERED,
                done_at=float(rows.submitted_at[i + 2]) + 1,
            )
            for i in range(N)
            if i not in expected_held and i % 2 == 0
        ]
        assert ledger.apply_reports(reports) == len(reports)
        send_time = float(np.max(rows.submitted_at))
        hold_time = float(np.max(rows.decided_at))
    finally:
        ledger.close()

    # Orders: 30% of those sent buy (i % 10 < 3), 10% of those held out (i % 10 == 9) — within an
    # hour; decoys before the campaign and after the window never count.
    base = max(send_time, hold_time) + 3600
    lines = ["order_id,phone,paid_at,amount"]
    hashed = ["order_id,phone_sha256,paid_at,amount"]
    want = {"A": [0, 0, 0.0, 0, 0], "B": [0, 0, 0.0, 0, 0]}  # sent, buyers, revenue, held, held buyers
    for i in range(N):
        g = groups[i]
        amount = 100 + i % 5
        held = i in expected_held
        buys = (i % 10 == 9) if held else (i % 10 < 3)
        want[g][3 if held else 0] += 1
        if buys:
            target = lines if i % 3 else hashed
            who = phones[i] if i % 3 else hashlib.sha256(("pepper" + phones[i]).encode()).hexdigest()
            target.append(f"o{i},{who},{_wall(base)},{amount}")
            if held:
                want[g][4] += 1
            else:
                want[g][1] += 1
                want[g][2] += amount
        if i % 7 == 0:
            lines.append(f"early{i},{phones[i]},{_wall(send_time - 86400 * 2)},999")
        if i % 11 == 0:
            lines.append(f"late{i},{phones[i]},{_wall(base + 8 * 86400)},999")
    lines.append("bad1,13800000001,2025-11-11 10:00:00,-5")  # a negative amount: rejected with its reason
    write("orders.csv", "\n".join(lines) + "\n")
    write("hashed.csv", "\n".join(hashed) + "\n")
    env_salt = ("--salt", "pepper")
    first = run_cli(
        "orders",
        "import",
        "orders.csv",
        "--id-column",
        "order_id",
        *env_salt,
        "--rejects",
        "bad.csv",
        "--json",
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr
    got = json.loads(first.stdout)
    assert got["rejected"] == 1 and got["reasons"] == {"bad_amount": 1}
    bad = (tmp_path / "bad.csv").read_text("utf-8").splitlines()
    assert bad[0] == "row,reason,detail,phone" and bad[1].startswith(f"{len(lines)},bad_amount,")
    assert bad[1].endswith("138****0001") and len(bad) == 2  # the row number, the reason, the number masked
    assert got["imported"] == len(lines) - 2
    again = json.loads(
        run_cli(
            "orders", "import", "orders.csv", "--id-column", "order_id", *env_salt, "--json", cwd=tmp_path
        ).stdout
    )
    assert again["imported"] == 0 and again["already"] == len(lines) - 2  # a re-import adds nothing
    h = run_cli(
        "orders",
        "import",
        "hashed.csv",
        "--hash-column",
        "phone_sha256",
        "--id-column",
        "order_id",
        *env_salt,
        cwd=tmp_path,
    )
    assert h.returncode == 0, h.stderr
    wrong = run_cli(
        "orders", "import", "hashed.csv", "--hash-column", "phone_sha256", "--salt", "x", cwd=tmp_path
    )
    assert wrong.returncode == 2 and "another salt" in wrong.stderr

    report = _report(tmp_path, "c1")
    subtotal = {line["group"]: line for line in report["lines"] if line["carrier"] == "all"}
    for g in ("A", "B"):
        s = subtotal[g]
        assert s["sent"] == want[g][0] and s["holdout"] == want[g][3]
        assert s["targets"] == want[g][0] + want[g][3]
        assert s["buyers"] == want[g][1] and s["orders"] == want[g][1]
        assert s["revenue"] == pytest.approx(want[g][2])
        assert s["holdout_buyers"] == want[g][4]
        assert s["aov"] == pytest.approx(want[g][2] / want[g][1], abs=0.01)
        assert s["roi"] == pytest.approx(s["revenue"] / s["cost"], rel=1e-3)
        assert s["delivered"] == sum(
            1 for i in range(N) if groups[i] == g and i not in expected_held and i % 2 == 0
        )
        p1, p0 = want[g][1] / want[g][0], want[g][4] / want[g][3]
        assert s["lift"] == pytest.approx(p1 - p0, abs=1e-6)
        assert s["lift_low"] < s["lift"] < s["lift_high"]
    total = report["total"]
    assert total["sent"] == N - len(expected_held)
    assert total["lift_low"] < 0.2 < total["lift_high"]  # planted: 30% sent vs 10% held out
    # carriers: each line's carrier is the one its numbers route to; the lines add up to the group
    for g in ("A", "B"):
        per = [line for line in report["lines"] if line["group"] == g and line["carrier"] != "all"]
        assert {line["carrier"] for line in per} == {"cm", "cu", "ct"}
        assert sum(line["buyers"] for line in per) == subtotal[g]["buyers"]
    assert sum(p["sent"] for p in report["timeline"]) == total["sent"]
    assert sum(p["delivered"] for p in report["timeline"]) == total["delivered"]

    # Last touch: a second campaign reaches some of c1's buyers after c1 and before they pay;
    # their orders move from c1 to c2.
    moved = [i for i in range(N) if i not in expected_held and i % 10 == 0]
    write("seg2.csv", "phone,group,name\n" + "".join(f"{phones[i]},{groups[i]},n{i}\n" for i in moved))
    c2 = _campaign(write, "c2", "seg2.csv", 0.0)
    assert run_cli("send", str(c2), "--json", cwd=tmp_path).returncode == 0
    after = _report(tmp_path, "c1")
    assert after["total"]["buyers"] == total["buyers"] - len(moved)
    c2_report = _report(tmp_path, "c2")
    assert c2_report["total"]["buyers"] == len(moved) and c2_report["total"]["lift"] is None

    # CSV and HTML forms carry the same numbers
    rows_csv = list(
        csv.DictReader(
            io.StringIO(run_cli("report", "c1", "--outcomes", "--format", "csv", cwd=tmp_path).stdout)
        )
    )
    assert int(rows_csv[-1]["buyers"]) == after["total"]["buyers"]
    out = tmp_path / "r.html"
    assert (
        run_cli("report", "c1", "--outcomes", "--format", "html", "-o", str(out), cwd=tmp_path).returncode
        == 0
    )
    page = out.read_text("utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched
    assert f'data-group="total" data-carrier="all" data-col="buyers">{after["total"]["buyers"]:,}<' in page


def test_a_bad_outcomes_setting_fails_before_sending(
    tmp_path: Path, write: Callable[[str, str | bytes], Path], engine_file: Callable[..., Path]
) -> None:
    engine_file()
    write("seg.csv", "phone,name\n13800138000,a\n")
    c = _campaign(write, "bad", "seg.csv", 0.7)
    done = run_cli("send", str(c), cwd=tmp_path)
    assert done.returncode == 2 and "outcomes.holdout" in done.stderr
    c.write_text(
        c.read_text("utf-8").replace("holdout = 0.7", "holdout = 0.1").replace('"7d"', '"calendar_day"')
    )
    done = run_cli("send", str(c), cwd=tmp_path)
    assert done.returncode == 2 and "outcomes.window" in done.stderr
    assert not (tmp_path / "sent.jsonl").exists()


@pytest.mark.parametrize(
    ("links", "text", "says"),
    [
        ('mode = "recipient"\ntarget = "https://shop.cn/x"\ndomain = "https://s.cn/l"', "您好", "{link}"),
        ('mode = "group"\ntarget = "shop.cn/x"\ndomain = "https://s.cn/l"', "您好{link}", "links.target"),
        ('mode = "group"\ntarget = "https://shop.cn/x"\ndomain = "s.cn"', "您好{link}", "links.domain"),
        ('mode = "provider"\ntarget = "https://shop.cn/x"', "您好{link}", "ManagedLinks"),
    ],
)
def test_a_bad_links_setting_fails_before_sending(
    tmp_path: Path,
    write: Callable[[str, str | bytes], Path],
    engine_file: Callable[..., Path],
    links: str,
    text: str,
    says: str,
) -> None:
    engine_file()
    write("seg.csv", "phone,name\n13800138000,a\n")
    c = write(
        "c.toml",
        f'id = "l"\nengine = "engine.toml"\n[segment]\nsource = "csv"\npath = "seg.csv"\n'
        f'[template]\nsignature = "小鹅优选"\ntext = "{text}"\n[links]\n{links}\n',
    )
    done = run_cli("send", str(c), cwd=tmp_path)
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert not (tmp_path / "sent.jsonl").exists()


def test_preview_shows_the_link_and_bills_it(
    tmp_path: Path, write: Callable[[str, str | bytes], Path], engine_file: Callable[..., Path]
) -> None:
    engine_file()
    write("seg.csv", "phone,name\n13800138000,a\n13900139000,b\n")
    body = (
        'id = "l"\nengine = "engine.toml"\n[segment]\nsource = "csv"\npath = "seg.csv"\n'
        '[template]\nsignature = "小鹅优选"\ntext = "{name}，新品上架，全场满199减20，会员再享95折，前100名送帆布袋{link}"\n'
        '[policy]\nsend_window = ""\n'
        '[links]\nmode = "recipient"\ntarget = "https://shop.cn/x"\ndomain = "https://s.shop.cn/l"\n'
    )
    c = write("c.toml", body)
    with_link = json.loads(run_cli("preview", str(c), "--json", cwd=tmp_path).stdout)
    assert with_link["links"] == {
        "mode": "recipient",
        "example": "https://s.shop.cn/l/xxxxxxx",
        "characters": 27,
    }
    assert all("https://s.shop.cn/l/" in s["text"] for s in with_link["samples"])
    c.write_text(body.replace("{link}", "").replace("[links]\n", "[x]\n").split("[x]")[0], encoding="utf-8")
    without = json.loads(run_cli("preview", str(c), "--json", cwd=tmp_path).stdout)
    assert (
        with_link["total_parts"] == 4 and without["total_parts"] == 2
    )  # the link makes each message 2 parts
