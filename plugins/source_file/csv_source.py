"""The ``csv`` segment source: a header row, then streaming records in batches."""

from __future__ import annotations

import csv
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from operator import itemgetter
from pathlib import Path

from pigeon import Reject, RejectReason, SegmentRange, SourceBatch, SourceContext, SourceError
from plugins.source_file._io import (
    SURROGATE,
    _ascii_compatible,
    fraction_read,
    open_binary,
    resolve,
    text_blocks,
)
from plugins.source_file._project import BlockProjector
from plugins.source_file.config import CsvConfig
from plugins.source_file.ranges import Window, cut_ranges, rest_of

__all__ = ["CsvReader", "CsvSource"]

_UNDECODABLE = "bytes not valid in the segment's encoding; check segment.encoding"


def _quote_free_lines(block: str, quote: str) -> list[str] | None:
    """The block's lines if ``str.split`` can parse it: no quote, and LF or uniform CRLF line ends."""
    if quote in block:
        return None
    if "\r" not in block:
        return block.split("\n")
    lines = block.split("\r\n")
    # Uniform CRLF: every LF is preceded by CR, and the only other CR ends the block's last line.
    if block[-1] == "\r" and len(lines) == block.count("\n") + 1 == block.count("\r"):
        lines[-1] = lines[-1][:-1]
        return lines
    return None


class CsvSource:
    """A configured CSV segment."""

    def __init__(self, config: CsvConfig, ctx: SourceContext) -> None:
        self.config = config
        self.path = resolve(config.path, ctx.base_dir)

    def open(self, fields: Sequence[str]) -> CsvReader:
        """Open the file and read its header; rows will hold just ``fields`` when the header has them."""
        return CsvReader(self.config, self.path, fields)

    def ranges(self, target_bytes: int) -> list[SegmentRange]:
        """The data rows as byte ranges of about ``target_bytes`` (:mod:`.ranges`)."""
        if not _ascii_compatible(self.config.encoding):
            raise SourceError(
                f"a {self.config.encoding} file is not cut into byte ranges: save it as UTF-8 or GBK"
            )
        return cut_ranges(self.path, target_bytes, header=True, quote=self.config.quotechar.encode("ascii"))

    def open_range(self, fields: Sequence[str], part: SegmentRange) -> CsvReader:
        """Read the header, then only ``part``'s rows."""
        return CsvReader(self.config, self.path, fields, part)

    def rest_of(self, part: SegmentRange, row: int) -> SegmentRange:
        """``part`` from row ``row`` on, starting at that row's first byte (:func:`.ranges.rest_of`)."""
        return rest_of(self.path, part, row, quote=self.config.quotechar.encode("ascii"))


class CsvReader:
    """Reads records block by block.

    A block (about 128 KiB of whole lines) without any quote character is split with ``str.split``;
    a block with quotes goes through the stdlib ``csv`` parser, which may pull following lines for a
    quoted field that spans lines. Records are numbered as spreadsheets number rows: the header
    is row 1, and a quoted field with newlines is one row.
    """

    def __init__(
        self, config: CsvConfig, path: Path, fields: Sequence[str] = (), part: SegmentRange | None = None
    ) -> None:
        self._file = open_binary(path)
        self._window: Window | None = None
        self._size = path.stat().st_size
        self._delim = config.delimiter
        self._quote = config.quotechar
        self._blocks = text_blocks(self._file, config.encoding)
        self._pending: deque[str] = deque()
        self._dirty = False
        self._dirty_block = False
        self._csv = csv.reader(self._pull(), delimiter=self._delim, quotechar=self._quote, strict=False)
        self._row = 0
        try:
            header = self._read_header()
        except BaseException:
            self._file.close()
            raise
        self.header = header
        if part is not None:  # only this range's rows: drop what the header's block read beyond it
            self._pending.clear()
            self._dirty = False
            self._window = Window(self._file, part.start, part.end)
            self._blocks = text_blocks(self._window, config.encoding)  # type: ignore[arg-type]
            self._row = part.first_row - 1
        self._ncols = len(header)
        wanted = list(dict.fromkeys(fields))
        self._take: Callable[[Sequence[str]], Sequence[str]] | None = None
        self._projector: BlockProjector | None = None
        self.columns: list[str] = header
        """What rows hold: just the requested fields when the header has them all (each row is
        projected in C as it is read), otherwise the whole header, so the engine can say which
        field is missing."""
        if wanted and all(f in header for f in wanted):
            pos = [header.index(f) for f in wanted]
            self.columns = wanted
            if len(pos) == 1:
                p0 = pos[0]
                self._take = lambda r: (r[p0],)
            else:
                self._take = itemgetter(*pos)
            if BlockProjector.usable(self._delim, self._ncols, pos):
                self._projector = BlockProjector(self._delim, self._ncols, pos)

    def _pull(self) -> Iterator[str]:
        """Lines (with their newline) for the csv parser: pending lines first, then more blocks."""
        while True:
            while self._pending:
                yield self._pending.popleft() + "\n"
            nxt = next(self._blocks, None)
            if nxt is None:
                return
            block, dirty = nxt
            self._dirty = self._dirty or dirty
            self._pending.extend(line.removesuffix("\r") for line in block.split("\n"))

    def _read_header(self) -> list[str]:
        try:
            first = next(self._csv, None)
        except csv.Error as exc:
            raise SourceError(f"the header row is not valid CSV: {exc}") from None
        if first is None:
            raise SourceError("the segment file is empty: expected a header row")
        self._row = 1
        if self._dirty and SURROGATE.search("".join(first)):
            raise SourceError(
                "the header row is not valid in the configured encoding; set "
                'segment.encoding (e.g. "gbk" for Excel exports from Chinese Windows)'
            )
        header = [h.strip() for h in first]
        if not any(header):
            raise SourceError("the header row is empty")
        dupes = sorted({h for h in header if header.count(h) > 1 and h})
        if dupes:
            raise SourceError(f"the header names column(s) twice: {', '.join(dupes)}")
        return header

    def _records(self) -> Iterator[tuple[list[Sequence[str]], bool]]:
        """Blocks of records, and whether each block's records are already projected.

        Projected records are tuples of the requested fields; a record that is not a tuple is a
        row that needs checking (wrong column count). Unprojected records are the full field lists.
        """
        delim, quote, take, ncols = self._delim, self._quote, self._take, self._ncols
        projector = self._projector
        carry: tuple[str, bool] | None = None
        if self._pending and not any(quote in line for line in self._pending):
            # The rest of the header's block, quote-free: back to the fast path (the parser stopped
            # at a record boundary, so these are whole records).
            carry = "\n".join(self._pending), self._dirty
            self._pending.clear()
            self._dirty = False
        while True:
            if carry is not None:
                (block, dirty), carry = carry, None
            elif self._pending:
                # Lines already pulled by the csv parser: let it finish them (they may be mid-quote).
                recs: list[Sequence[str]] = []
                while self._pending:
                    rec = next(self._csv, None)
                    if rec is None:
                        break
                    recs.append(rec)
                self._dirty_block = self._dirty
                self._dirty = False
                yield recs, False
                del recs
                continue
            else:
                nxt = next(self._blocks, None)
                if nxt is None:
                    return
                block, dirty = nxt
                del nxt
            if projector is not None and not dirty and quote not in block:
                projected_recs = projector.project(block)
                if projected_recs is not None:
                    self._dirty_block = False
                    del block
                    yield projected_recs, True  # type: ignore[misc]
                    del projected_recs
                    continue
            lines = _quote_free_lines(block, quote)
            if lines is None:
                self._pending.extend(line.removesuffix("\r") for line in block.split("\n"))
                self._dirty = dirty
                continue
            self._dirty_block = dirty
            del block  # hold one block at a time: memory stays flat in the file's size
            if take is None or dirty:
                recs = [line.split(delim) for line in lines]
                del lines
                yield recs, False
            else:
                # Split and project in one pass: each full field list dies at once, while its
                # memory is still in cache. A row with the wrong width stays a list, for checking.
                recs = [take(f) if len(f := line.split(delim)) == ncols else f for line in lines]
                del lines
                yield recs, True
            del recs

    def batches(self, size: int) -> Iterator[SourceBatch]:
        """Yield batches of about ``size`` records; bad records become rejects with their row."""
        take = self._take
        row = self._row
        records = self._records()
        while (item := next(records, None)) is not None:
            recs, projected = item
            del item
            dirty = self._dirty_block
            for start in range(0, len(recs), size):
                chunk = recs[start : start + size]
                first = row + 1
                row += len(chunk)
                bad = self._check(chunk, first, dirty, projected)
                if bad:
                    keep = [i for i in range(len(chunk)) if i not in bad]
                    nums = [first + i for i in keep]
                    chunk = [chunk[i] for i in keep]
                else:
                    nums = list(range(first, row + 1))
                if take is not None and not projected:
                    chunk = list(map(take, chunk))
                rejects = [r for i in sorted(bad) if (r := bad[i]) is not None]
                yield SourceBatch(nums, chunk, rejects)
                del chunk
            del recs
        self._row = row

    def _check(
        self, chunk: list[Sequence[str]], first: int, dirty: bool, projected: bool
    ) -> dict[int, Reject | None]:
        """Rows to leave out: undecodable or malformed ones (with a reject), blank lines (without).

        Trims the trailing empty cells a spreadsheet may add, in place.
        """
        ncols = self._ncols
        bad: dict[int, Reject | None] = {}
        if dirty:
            for i, r in enumerate(chunk):
                if SURROGATE.search("".join(r)):
                    bad[i] = Reject(first + i, RejectReason.UNDECODABLE, _UNDECODABLE)
        if projected:
            if list not in set(map(type, chunk)):
                return bad
            suspects = [i for i, r in enumerate(chunk) if type(r) is list]
        else:
            if set(map(len, chunk)) == {ncols}:
                return bad
            suspects = [i for i, r in enumerate(chunk) if len(r) != ncols]
        take = self._take
        for i in suspects:
            r = chunk[i]
            if i in bad:
                continue
            if len(r) <= 1 and not (r and r[0]):
                bad[i] = None  # a blank line: nobody on it
            elif len(r) > ncols and not any(r[ncols:]):
                trimmed = list(r[:ncols])  # trailing empty cells from a spreadsheet
                chunk[i] = take(trimmed) if projected and take is not None else trimmed
            else:
                bad[i] = Reject(
                    first + i, RejectReason.MALFORMED_ROW, f"expected {ncols} columns, found {len(r)}"
                )
        return bad

    def fraction_read(self) -> float | None:
        """How much of the file (of a range: of the range) has been read (0–1), for progress and ETA."""
        if self._window is not None:
            return self._window.fraction()
        return fraction_read(self._file, self._size)

    def close(self) -> None:
        """Close the file."""
        self._file.close()
