"""An A/B test sent to the simulator, killed mid-blast and resumed: every recipient once, each with
its own variant's text on both runs, the shares held, and the report counting each variant apart.

The two texts differ in billed parts (1 and 2), so the simulator's log tells which text each
number got; the variant each number should get comes from the campaign's split."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

from engine.core.variants import Split
from loadtests.simulator import SimConfig, SimulatorThread
from tests.integration.crash_harness import (
    check_ledger_against_log,
    cli,
    files,
    resume,
    segment,
    start,
    wait_for,
)

LONG = "亲爱的{name}，" + "您的双11专属券已到账，今晚八点开抢，" * 3 + "{coupon}元"


def test_an_ab_test_killed_mid_blast_keeps_every_numbers_variant_on_resume(tmp_path: Path) -> None:
    rows = 30_000
    eligible, dups = segment(tmp_path / "seg.csv", rows)
    store = tmp_path / "pigeon.db"
    with SimulatorThread(SimConfig()) as sim:
        campaign = files(tmp_path, sim.port, store=store, gateway="in_flight = 2", max_batch=100)
        text = campaign.read_text(encoding="utf-8")
        campaign.write_text(
            text.replace(
                'text = "{name}，您的{coupon}元券已到账"',
                '[[template.variants]]\nname = "short"\nshare = 0.6\ntext = "{name}，您的{coupon}元券已到账"\n'
                f'[[template.variants]]\nname = "long"\nshare = 0.4\ntext = "{LONG}"\n',
            ),
            encoding="utf-8",
        )
        preview = cli(tmp_path, "preview", str(campaign), flags=("--json",))
        assert preview.returncode == 0, preview.stderr
        assert set(json.loads(preview.stdout)["variants"]) == {"short", "long"}
        proc = start(["send", str(campaign)], tmp_path)
        assert wait_for(lambda: len(sim.log) >= 8_000, proc, 60), "the send did not get going"
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        killed_at = len(sim.log)
        done = resume(tmp_path)
        assert done.returncode == 0, done.stderr
        log = list(sim.log)
    assert killed_at < len(log)  # the resume sent the rest
    check_ledger_against_log(store, sim, eligible, rows, dups)
    split = Split("crash", ["short", "long"], [0.6, 0.4])
    sent = {to: parts for _, _, to, _, parts in log}
    want = dict(zip(sent, split.assign([int(to.removeprefix("+86")) for to in sent]), strict=True))
    got = {to: "short" if parts == 1 else "long" for to, parts in sent.items()}
    wrong = [to[-4:] for to in sent if got[to] != want[to]]
    assert not wrong, f"{len(wrong)} numbers got the other variant's text"
    before = Counter(got[to] for _, _, to, _, _ in log[:killed_at])
    after = Counter(got[to] for _, _, to, _, _ in log[killed_at:])
    assert before["long"] and after["long"] and before["short"] and after["short"]
    shares = Counter(got.values())
    assert abs(shares["short"] / len(got) - 0.6) < 0.015
    report = cli(
        tmp_path, "report", "crash", "--engine", str(tmp_path / "engine.toml"), flags=("--format", "json")
    )
    assert report.returncode == 0, report.stderr
    variants = json.loads(report.stdout)["variants"]
    # every message the simulator accepted was recorded sent, or unknown (in flight at the kill)
    unknown = json.loads(report.stdout)["states"].get("unknown", 0)
    for name in ("short", "long"):
        v = variants[name]
        assert shares[name] - unknown <= v["messages"] + v["unknown"] <= shares[name]
        assert v["parts"] == v["messages"] * (1 if name == "short" else 2)
        assert v["cost"] == round(v["parts"] * 0.05, 4)  # (every number is China Mobile's, 0.05 a part)
    # The outcomes report splits each group by variant, and its sent counts agree with the ledger's
    outcomes = cli(
        tmp_path,
        "report",
        "crash",
        "--outcomes",
        "--engine",
        str(tmp_path / "engine.toml"),
        flags=("--format", "json"),
    )
    assert outcomes.returncode == 0, outcomes.stderr
    groups = json.loads(outcomes.stdout)["groups"]
    assert {g["variant"] for g in groups} == {"short", "long"}
    for name in ("short", "long"):
        v = variants[name]
        assert sum(g["sent"] for g in groups if g["variant"] == name) == v["messages"]  # (unknown: not sent)
