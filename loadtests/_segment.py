"""Synthetic segments for the load tests: generated once by ``config/make_segment.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["DATA", "make_segment", "segment_of"]

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
