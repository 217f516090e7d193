"""Cut a CSV or JSON Lines file into byte ranges on row boundaries, and read one range alone.

The cut reads the file once, in 1 MiB chunks, counting rows (where a chunk holds no quote
character, ``bytes.count`` of its newlines and ``bytes.find`` of the few that end a range; byte by
byte, following the quotes, where it does), so every
range knows the number of its first row; a worker then seeks to its range and reads nothing else.
A newline inside a quoted CSV field never ends a range (it does not end a row either).
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import msgspec

from pigeon import SegmentRange, SourceError

__all__ = ["Window", "cut_ranges", "rest_of"]

_CHUNK = 1 << 20


def _plain(path: Path) -> None:
    with path.open("rb") as f:
        head = f.read(1 << 16)
    if head.startswith(b"\x1f\x8b"):
        raise SourceError(
            f"{path.name} is gzip-compressed: a segment is cut into byte ranges only uncompressed "
            "(gunzip it, or send it from one process)"
        )
    if b"\r" in head and b"\n" not in head:
        raise SourceError(f"{path.name} ends its lines with a lone CR: save it with LF or CRLF line ends")


def cut_ranges(path: Path, target_bytes: int, *, header: bool, quote: bytes | None) -> list[SegmentRange]:
    """``path``'s data rows as ranges of about ``target_bytes`` (at least one row each).

    ``header``: the first row is a header (CSV: data rows start at row 2; JSON Lines: row 1).
    ``quote``: the CSV quote character (newlines inside quotes do not end a row); None for JSON Lines.
    """
    if target_bytes < 1:
        raise ValueError("target_bytes must be positive")
    _plain(path)
    size = path.stat().st_size
    out: list[SegmentRange] = []
    row = 1  # the number of the row that starts at `pos`
    pos = 0
    in_quote = False
    data_start: int | None = None if header else 0
    start, first = 0, 1
    with path.open("rb") as f:
        carry_at = 0
        while True:
            f.seek(carry_at)
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            base = carry_at
            if quote is None or (quote not in chunk and not in_quote):
                # No quote: only the newlines that end a range (or the header) are looked for, the
                # others counted (bytes.find and bytes.count, in C).
                i = 0
                while data_start is None:
                    j = chunk.find(b"\n", i)
                    if j == -1:
                        break
                    row += 1
                    data_start = start = base + j + 1
                    first, i = row, j + 1
                if data_start is not None:
                    while True:
                        j = chunk.find(b"\n", max(i, start + target_bytes - 1 - base))
                        if j == -1:
                            row += chunk.count(b"\n", i)
                            break
                        row += chunk.count(b"\n", i, j) + 1
                        end = base + j + 1
                        out.append(
                            SegmentRange(
                                index=len(out), start=start, end=end, first_row=first, rows=row - first
                            )
                        )
                        start, first, i = end, row, j + 1
                pos = carry_at = base + len(chunk)
                continue
            # Row ends in this chunk (quotes in it): offsets just past each newline that ends a row.
            ends = []
            q = quote[0]
            for i, b in enumerate(chunk):
                if b == q:
                    in_quote = not in_quote
                elif b == 10 and not in_quote:
                    ends.append(i + 1)
            for e in ends:
                end = base + e
                row += 1
                if data_start is None:
                    data_start, start, first = end, end, row
                    continue
                if end - start >= target_bytes:
                    out.append(
                        SegmentRange(index=len(out), start=start, end=end, first_row=first, rows=row - first)
                    )
                    start, first = end, row
            pos = base + len(chunk)
            carry_at = pos
    if data_start is None:
        return []  # a header and nothing else
    if size > start:  # the last rows (the final newline may be missing)
        last = row + (1 if pos > 0 and _last_byte(path) != b"\n" else 0)
        out.append(SegmentRange(index=len(out), start=start, end=size, first_row=first, rows=last - first))
    return out


def rest_of(path: Path, part: SegmentRange, row: int, *, quote: bytes | None) -> SegmentRange:
    """``part`` from row ``row`` on (a row of ``part``, or the row after its last: an empty rest):
    its start found by counting row ends from ``part.start`` (a range starts outside any quote, so
    a newline inside a quoted CSV field is not counted), its index, end and row numbers kept.
    Reads at most the bytes of ``part`` before ``row``."""
    skip = row - part.first_row
    if not 0 <= skip <= part.rows:
        raise ValueError(
            f"row {row} is not within the range's rows {part.first_row}..{part.first_row + part.rows}"
        )
    if skip == 0:
        return part
    if skip == part.rows:
        return msgspec.structs.replace(part, start=part.end, first_row=row, rows=0)
    pos, left, in_quote = part.start, skip, False
    with path.open("rb") as f:
        f.seek(pos)
        while left:
            chunk = f.read(min(_CHUNK, part.end - pos))
            if not chunk:
                raise SourceError(f"{path.name} is shorter than its range {part.index}: was it changed?")
            if quote is None or (quote not in chunk and not in_quote):
                i = -1
                for _ in range(min(left, chunk.count(b"\n"))):
                    i = chunk.find(b"\n", i + 1)
                    left -= 1
                if not left:
                    return msgspec.structs.replace(
                        part, start=pos + i + 1, first_row=row, rows=part.rows - skip
                    )
            else:
                q = quote[0]
                for i, b in enumerate(chunk):
                    if b == q:
                        in_quote = not in_quote
                    elif b == 10 and not in_quote:
                        left -= 1
                        if not left:
                            return msgspec.structs.replace(
                                part, start=pos + i + 1, first_row=row, rows=part.rows - skip
                            )
            pos += len(chunk)
    raise AssertionError("unreachable")  # pragma: no cover


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(-1, 2)
        return f.read(1)


class Window:
    """A file seen from ``start`` to ``end`` only: what a range's reader reads (``read`` stops at
    ``end``; ``tell`` is the position in the file, for progress)."""

    def __init__(self, raw: BinaryIO, start: int, end: int) -> None:
        self.raw, self.start, self.end = raw, start, end
        raw.seek(start)

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes, never past ``end``."""
        left = self.end - self.raw.tell()
        if left <= 0:
            return b""
        return self.raw.read(left if n < 0 else min(n, left))

    def tell(self) -> int:
        """Position in the whole file."""
        return self.raw.tell()

    def fraction(self) -> float:
        """How much of the range has been read (0–1)."""
        span = self.end - self.start
        return min(1.0, (self.raw.tell() - self.start) / span) if span > 0 else 1.0

    def close(self) -> None:
        """Close the file."""
        self.raw.close()
