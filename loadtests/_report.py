"""Printing and saving a load test's report, the same way for every scenario."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["emit"]


def emit(report: dict[str, Any], path: Path | None) -> None:
    """Print ``report`` as JSON and, with ``path``, save it there too."""
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if path is not None:
        path.write_text(text + "\n", encoding="utf-8")
