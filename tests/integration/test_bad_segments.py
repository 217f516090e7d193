"""A bad segment or template fails before anything is recorded, says what to change, and a fixed
one is sent without ``--force``; a run where nothing could be sent is a failure, not "finished".

Each case runs ``pigeon send`` in this process (``engine.cli.main.main``) through the ``file`` gateway.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.cli.main import EXIT_BAD_INPUT, EXIT_OK, main
from engine.state.ledger.records import CampaignStatus
from engine.state.ledger.store import Ledger

GOOD = "phone,name,coupon\n" + "".join(f"1380013{i:04d},客{i},20\n" for i in range(30))


def _send(campaign: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["send", str(campaign), "-q", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def _recorded(tmp_path: Path) -> CampaignStatus | None:
    store = tmp_path / "pigeon.db"
    if not store.exists():
        return None
    ledger = Ledger(store)
    try:
        rec = ledger.campaign("t")
        return rec.status if rec is not None else None
    finally:
        ledger.close()


def _xlsx(path: Path) -> bytes:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("xl/workbook.xml", "<workbook/>")
    return path.read_bytes()


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "the segment file is empty"),
        (b"phone,name,coupon\n", "no data rows"),
        ("phone,name,coupon\n13800138000,张,20\n".encode("utf-16"), 'segment.encoding = "utf-16"'),
        ("xlsx", "save it as"),
        (
            ("phone,name,coupon\n" + "".join(f"1380013{i:04d},客户{i},20\n" for i in range(30))).encode(
                "gbk"
            ),
            'segment.encoding = "gbk"',
        ),
        ("phone,name,coupon\n" + "".join(f"x{i},客{i},20\n" for i in range(30)), "segment.phone_field"),
        (GOOD.replace("coupon", "amount"), "coupon"),  # the template's field is not a column
    ],
    ids=["empty", "header-only", "utf-16", "xlsx", "gbk-as-utf8", "no-phones", "missing-field"],
)
def test_a_broken_segment_fails_before_the_ledger_and_a_fixed_one_needs_no_force(
    tmp_path: Path,
    write: Callable[[str, str | bytes], Path],
    campaign_file: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    content: str | bytes,
    says: str,
) -> None:
    seg = tmp_path / "seg.csv"
    write("seg.csv", _xlsx(seg) if content == "xlsx" else content)
    campaign = campaign_file("seg.csv")
    code, said = _send(campaign, capsys)
    assert code == EXIT_BAD_INPUT, said
    assert says in said
    assert "Traceback" not in said
    assert _recorded(tmp_path) is None  # no run recorded: nothing to --force past
    assert not list((tmp_path / "runs").glob("t/*/sent.jsonl"))  # and nothing sent
    write("seg.csv", GOOD)
    code, said = _send(campaign, capsys)
    assert code == EXIT_OK, said
    assert _recorded(tmp_path) is CampaignStatus.FINISHED


def test_cr_only_line_ends_are_read_as_lines(
    tmp_path: Path,
    write: Callable[[str, str | bytes], Path],
    campaign_file: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    write("seg.csv", GOOD.replace("\n", "\r"))  # an old Mac export
    code, said = _send(campaign_file("seg.csv"), capsys, "--json")
    assert code == EXIT_OK, said
    assert '"sent": 30' in said


def test_a_segment_that_turns_bad_after_its_first_rows_is_judged_at_the_end(
    tmp_path: Path,
    write: Callable[[str, str | bytes], Path],
    campaign_file: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    good = "".join(f"138{i:08d},客,20\n" for i in range(2_500))  # the first rows pass the check …
    bad = "".join(f"99{i:05d},坏,20\n" for i in range(5_000))  # … the rest are not numbers
    write("seg.csv", "phone,name,coupon\n" + good + bad)
    code, said = _send(campaign_file("seg.csv"), capsys)
    assert code == EXIT_BAD_INPUT, said
    assert "5,000 of the 7,500 rows read are rejected" in said
    assert _recorded(tmp_path) is CampaignStatus.RUNNING  # not "finished": someone must look


def test_a_run_where_everyone_opted_out_is_not_finished(
    tmp_path: Path,
    write: Callable[[str, str | bytes], Path],
    campaign_file: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    write("seg.csv", "phone,name,coupon\n13800138000,a,1\n13800138001,b,2\n")
    campaign = campaign_file("seg.csv")
    engine = tmp_path / "engine.toml"
    assert main(["optout", "--engine", str(engine), "add", "13800138000", "13800138001"]) == 0
    code, said = _send(campaign, capsys)
    assert code == EXIT_BAD_INPUT, said
    assert "none of the 2 rows read could be sent" in said and "opted_out 2" in said
    assert _recorded(tmp_path) is CampaignStatus.RUNNING
    # The operator picks other customers: nobody was contacted, so the campaign starts afresh.
    write("seg.csv", GOOD)
    code, said = _send(campaign, capsys)
    assert code == EXIT_OK, said
    assert "starting afresh" in said
    assert _recorded(tmp_path) is CampaignStatus.FINISHED
