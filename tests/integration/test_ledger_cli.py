"""`pigeon status`, `report`, `cancel`, `resume` and the resume rules, as an operator runs them."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.core.config import load_engine
from engine.core.messages import DeliveryReport, DeliveryStatus
from engine.state.ledger.store import Ledger
from tests.integration.test_send import SEGMENT, run_cli


def test_status_report_cancel_and_the_resume_rules(
    tmp_path: Path, write: Callable[[str, str | bytes], Path], campaign_file: Callable[..., Path]
) -> None:
    write("seg.csv", SEGMENT)
    campaign = campaign_file("seg.csv", engine_kwargs={"max_batch": 2})
    engine = tmp_path / "engine.toml"
    first = run_cli("send", str(campaign), "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr

    status = json.loads(run_cli("status", "t", "--engine", str(engine), "--json", cwd=tmp_path).stdout)
    assert status["status"] == "finished" and status["semantics"] == "at-most-once"
    assert status["states"] == {"submitted": 5, "rejected": 4, "suppressed": 1}
    assert status["reasons"]["suppressed"] == {"duplicate": 1}

    # Delivery reports (as the service's webhook passes them on), matched by Pigeon's message id.
    ledger = Ledger(load_engine(engine).store_path)
    try:
        rec = ledger.message("t-2")
        assert rec is not None and rec.state == "submitted" and rec.gateway == "out" and rec.attempts == 1
        done = rec.submitted_at + 4.0
        n = ledger.apply_reports(
            [
                DeliveryReport(
                    provider_id="", message_id="t-2", status=DeliveryStatus.DELIVERED, done_at=done
                ),
                DeliveryReport(
                    provider_id="", message_id="t-3", status=DeliveryStatus.FAILED, code="UNDELIV"
                ),
                DeliveryReport(provider_id="", message_id="other-9", status=DeliveryStatus.DELIVERED),
            ]
        )
        assert n == 2
        assert ledger.message("t-3").state == "failed"  # type: ignore[union-attr]
    finally:
        ledger.close()

    report = json.loads(
        run_cli("report", "t", "--engine", str(engine), "--format", "json", cwd=tmp_path).stdout
    )
    assert report["states"] == {"delivered": 1, "submitted": 3, "failed": 1, "rejected": 4, "suppressed": 1}
    assert report["reasons"]["failed"] == {"dlr:UNDELIV": 1}
    assert report["delivery_rate"] == 0.2  # 1 delivered of the 5 the gateway accepted
    assert report["latency_seconds"]["p50"] == 4.0  # done_at minus the hand-over time (matched by message id)
    assert report["carriers"]["cm"]["messages"] == 1 and report["carriers"]["cu"]["messages"] == 1
    assert report["total_cost"] == round(sum(c["cost"] for c in report["carriers"].values()), 4)
    rows = list(
        csv.reader(
            io.StringIO(
                run_cli("report", "t", "--engine", str(engine), "--format", "csv", cwd=tmp_path).stdout
            )
        )
    )
    assert ["state", "delivered", "", "1"] in rows and ["reason", "failed", "dlr:UNDELIV", "1"] in rows

    # A finished campaign is not sent again by accident; --again sends it afresh.
    again = run_cli("send", str(campaign), "--json", cwd=tmp_path)
    assert again.returncode == 2 and "already finished" in again.stderr
    assert (
        json.loads(run_cli("send", str(campaign), "--again", "--json", cwd=tmp_path).stdout)["states"]["sent"]
        == 5
    )
    listing = run_cli("status", "--engine", str(engine), cwd=tmp_path).stdout
    assert "t~1" in listing and "finished" in listing  # the first run's ledger, kept

    # Cancelled: refused like a finished one.
    assert run_cli("cancel", "t", "--engine", str(engine), cwd=tmp_path).returncode == 0
    refused = run_cli("resume", "t", "--engine", str(engine), cwd=tmp_path)
    assert refused.returncode == 2 and "already cancelled" in refused.stderr
    assert run_cli("status", "nope", "--engine", str(engine), cwd=tmp_path).returncode == 2


def test_a_changed_segment_or_template_refuses_to_resume_unless_forced(
    tmp_path: Path, write: Callable[[str, str | bytes], Path], campaign_file: Callable[..., Path]
) -> None:
    write("seg.csv", SEGMENT)
    campaign = campaign_file("seg.csv")
    engine = tmp_path / "engine.toml"
    # An unfinished run: the campaign is marked running as a crash would leave it.
    assert run_cli("send", str(campaign), "--json", cwd=tmp_path).returncode == 0
    ledger = Ledger(load_engine(engine).store_path)
    try:
        from engine.state.ledger.records import CampaignStatus

        ledger.set_status("t", CampaignStatus.RUNNING)
    finally:
        ledger.close()
    write("seg.csv", SEGMENT + "13900139000,新人,20\r\n")
    changed = run_cli("send", str(campaign), "--json", cwd=tmp_path)
    assert (
        changed.returncode == 2
        and "the segment's content changed" in changed.stderr
        and "--force" in changed.stderr
    )
    campaign.write_text(campaign.read_text("utf-8").replace("元券已到账", "元券明天到期"), encoding="utf-8")
    both = run_cli("send", str(campaign), "--json", cwd=tmp_path)
    assert "the template" in both.stderr
    forced = run_cli("send", str(campaign), "--force", "--json", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    summary = json.loads(forced.stdout)
    assert summary["states"] == {"sent": 1}  # only the new row: everyone else was handled before
    assert "resuming campaign 't'" in forced.stderr


def test_resume_finds_the_engine_file_in_pigeon_engine(
    tmp_path: Path,
    write: Callable[[str, str | bytes], Path],
    campaign_file: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write("seg.csv", SEGMENT)
    campaign = campaign_file("seg.csv")
    engine = tmp_path / "engine.toml"
    assert run_cli("send", str(campaign), "--json", cwd=tmp_path).returncode == 0
    ledger = Ledger(load_engine(engine).store_path)
    try:
        from engine.state.ledger.records import CampaignStatus

        ledger.set_status("t", CampaignStatus.RUNNING)  # as a crash leaves it
    finally:
        ledger.close()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()  # no config/engine.toml here: only $PIGEON_ENGINE says where the store is
    monkeypatch.setenv("PIGEON_ENGINE", str(engine))
    done = run_cli("resume", "t", "--json", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["states"] == {}  # everyone was handled: nothing sent twice
