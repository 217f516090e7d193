"""The ``jsonl`` segment source: one JSON object per line, projected onto the fields a campaign uses."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from pigeon import Reject, RejectReason, SegmentRange, SourceBatch, SourceContext
from plugins.source_file._io import fraction_read, open_binary, resolve, text_blocks
from plugins.source_file.config import JsonlConfig
from plugins.source_file.ranges import Window, cut_ranges, rest_of

__all__ = ["JsonlReader", "JsonlSource"]

_encode = msgspec.json.encode


def _cell(value: Any) -> str:
    """A JSON value as the text a template shows: numbers as written, null as empty."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return _encode(value).decode()


class JsonlSource:
    """A configured JSON Lines segment."""

    def __init__(self, config: JsonlConfig, ctx: SourceContext) -> None:
        self.path = resolve(config.path, ctx.base_dir)

    def open(self, fields: Sequence[str]) -> JsonlReader:
        """Open the file; rows will hold exactly ``fields``, in that order."""
        return JsonlReader(self.path, fields)

    def ranges(self, target_bytes: int) -> list[SegmentRange]:
        """The lines as byte ranges of about ``target_bytes`` (:mod:`.ranges`)."""
        return cut_ranges(self.path, target_bytes, header=False, quote=None)

    def open_range(self, fields: Sequence[str], part: SegmentRange) -> JsonlReader:
        """Read only ``part``'s lines (numbered as in the file)."""
        return JsonlReader(self.path, fields, part)

    def rest_of(self, part: SegmentRange, row: int) -> SegmentRange:
        """``part`` from line ``row`` on, starting at that line's first byte (:func:`.ranges.rest_of`)."""
        return rest_of(self.path, part, row, quote=None)


class JsonlReader:
    """Decodes each line with msgspec; a missing key reads as empty (templates decide if that is ok)."""

    def __init__(self, path: Path, fields: Sequence[str], part: SegmentRange | None = None) -> None:
        self.columns: list[str] = list(dict.fromkeys(fields))
        self._file = open_binary(path)
        self._window = Window(self._file, part.start, part.end) if part is not None else None
        self._first = part.first_row if part is not None else 1
        self._size = path.stat().st_size
        self._decode = msgspec.json.Decoder(dict[str, Any]).decode

    def batches(self, size: int) -> Iterator[SourceBatch]:
        """Yield batches of about ``size`` lines; bad lines become rejects with their line number."""
        cols = self.columns
        decode = self._decode
        line_no = self._first - 1
        raw = self._window if self._window is not None else self._file
        for block, _dirty in text_blocks(raw, "utf-8"):  # type: ignore[arg-type]
            lines = block.split("\n")
            for start in range(0, len(lines), size):
                nums: list[int] = []
                rows: list[Sequence[str]] = []
                rejects: list[Reject] = []
                for line in lines[start : start + size]:
                    line_no += 1
                    if not line.strip():
                        continue
                    try:
                        obj = decode(line.encode("utf-8"))
                    except UnicodeEncodeError:
                        rejects.append(Reject(line_no, RejectReason.UNDECODABLE, "line is not valid UTF-8"))
                        continue
                    except msgspec.ValidationError:
                        rejects.append(
                            Reject(line_no, RejectReason.MALFORMED_ROW, "line is not a JSON object")
                        )
                        continue
                    except msgspec.DecodeError as exc:
                        rejects.append(Reject(line_no, RejectReason.MALFORMED_ROW, f"invalid JSON: {exc}"))
                        continue
                    nums.append(line_no)
                    rows.append([_cell(obj.get(c)) for c in cols])
                yield SourceBatch(nums, rows, rejects)

    def fraction_read(self) -> float | None:
        """How much of the file (of a range: of the range) has been read (0–1), for progress and ETA."""
        if self._window is not None:
            return self._window.fraction()
        return fraction_read(self._file, self._size)

    def close(self) -> None:
        """Close the file."""
        self._file.close()
