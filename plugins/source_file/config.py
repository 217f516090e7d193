"""Config types of the file sources (the source's keys of a campaign's ``[segment]`` table)."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["CsvConfig", "JsonlConfig"]


class CsvConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``source = "csv"``: a CSV file with a header row."""

    path: str
    """The file, relative to the campaign file; gzip is detected from its first bytes."""
    encoding: str = "utf-8"
    """Text encoding: ``utf-8`` (a BOM is accepted), ``gbk``/``gb18030`` for Excel exports, ``utf-16``…"""
    delimiter: Annotated[str, msgspec.Meta(min_length=1, max_length=1)] = ","
    """Field separator (``"\\t"`` for tab-separated exports)."""
    quotechar: Annotated[str, msgspec.Meta(min_length=1, max_length=1)] = '"'


class JsonlConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``source = "jsonl"``: one JSON object per line, UTF-8."""

    path: str
    """The file, relative to the campaign file; gzip is detected from its first bytes."""
