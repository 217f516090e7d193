"""Start ``pigeon serve`` in the test's event loop (``loadtests/_service.py``), and campaign files for it."""

from __future__ import annotations

from pathlib import Path

from loadtests._segment import write_marketing_campaign
from loadtests._service import ENGINE, SECRET, serving, write_engine

__all__ = ["ENGINE", "SECRET", "serving", "write_campaign", "write_engine"]


def write_campaign(tmp_path: Path, rows: int, cid: str = "spring") -> None:
    """A marketing campaign file under ``campaigns/`` with a ``rows``-member China Mobile segment."""
    (tmp_path / "campaigns").mkdir(exist_ok=True)
    (tmp_path / "campaigns" / "seg.csv").write_text(
        "phone,name\n" + "".join(f"1380{i:07d},客{i}\n" for i in range(rows)), encoding="utf-8"
    )
    write_marketing_campaign(tmp_path / "campaigns", cid)
