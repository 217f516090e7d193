"""Synthetic segments for the load tests: generated once by ``config/make_segment.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["DATA", "make_segment", "segment_of", "write_marketing_campaign"]

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "loadtests" / "data"
"""Where generated segments are kept between runs (ignored by git)."""


def make_segment(rows: int, path: Path) -> Path:
    """Write a realistic ``rows``-member RFM segment to ``path`` unless it is there; returns it."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, str(ROOT / "config" / "make_segment.py"), "--rows", str(rows), "-o", str(path)],
            check=True,
            capture_output=True,
        )
    return path


def segment_of(rows: int) -> Path:
    """The kept ``rows``-member segment (``loadtests/data/segment-<rows>.csv``), generated the first time."""
    return make_segment(rows, DATA / f"segment-{rows}.csv")


def write_marketing_campaign(directory: Path, cid: str, segment: str = "seg.csv") -> Path:
    """A marketing campaign file ``<cid>.toml`` in ``directory`` (a service's ``campaigns_dir``)
    sending ``{name}，春季上新`` to ``segment``, at any hour; returns its path."""
    path = directory / f"{cid}.toml"
    path.write_text(
        f"""id = "{cid}"
kind = "marketing"
[segment]
source = "csv"
path = "{segment}"
[template]
signature = "小鹅优选"
text = "{{name}}，春季上新"
[policy]
send_window = ""
""",
        encoding="utf-8",
    )
    return path
