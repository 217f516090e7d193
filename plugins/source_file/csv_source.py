"""The ``csv`` segment source: a header row, then streaming records in batches."""

from __future__ import annotations

import csv
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

from engine.errors import SourceError
from engine.messages import Reject, RejectReason
from engine.source import SourceBatch, SourceContext
from plugins.source_file._io import SURROGATE, open_binary, resolve, text_blocks
from plugins.source_file.config import CsvConfig

__all__ = ["CsvReader", "CsvSource"]


class CsvSource:
    """A configured CSV segment."""

    def __init__(self, config: CsvConfig, ctx: SourceContext) -> None:
        self.config = config
        self.path = resolve(config.path, ctx.base_dir)

    def open(self, fields: Sequence[str]) -> CsvReader:
        """Open the file and read its header (``fields`` is not needed: CSV has a header)."""
        return CsvReader(self.config, self.path)


class CsvReader:
    """Reads records block by block.

    A block (about 1 MiB of whole lines) without any quote character is split with ``str.split``;
    a block with quotes goes through the stdlib ``csv`` parser, which may pull following lines for a
    quoted field that spans lines. Records are numbered as spreadsheets number rows: the header
    is row 1, and a quoted field with newlines is one row.
    """

    def __init__(self, config: CsvConfig, path: Path) -> None:
        self._file = open_binary(path)
        self._delim = config.delimiter
        self._quote = config.quotechar
        self._blocks = text_blocks(self._file, config.encoding)
        self._pending: deque[str] = deque()
        self._dirty = False
        self._csv = csv.reader(self._pull(), delimiter=self._delim, quotechar=self._quote, strict=False)
        self._row = 0
        header = self._read_header()
        self.columns: list[str] = header
        self._ncols = len(header)

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
            self._pending.extend(block.replace("\r\n", "\n").split("\n"))

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

    def _records(self) -> Iterator[tuple[list[list[str]], bool]]:
        """Blocks of parsed records and whether their block had undecodable bytes."""
        delim, quote = self._delim, self._quote
        while True:
            if self._pending:
                # Lines already pulled by the csv parser: let it finish them (they may be mid-quote).
                recs = []
                while self._pending:
                    rec = next(self._csv, None)
                    if rec is None:
                        break
                    recs.append(rec)
                dirty, self._dirty = self._dirty, False
                yield recs, dirty
                continue
            nxt = next(self._blocks, None)
            if nxt is None:
                return
            block, dirty = nxt
            if "\r" in block:
                block = block.replace("\r\n", "\n")
            if quote in block or "\r" in block:
                self._pending.extend(block.split("\n"))
                self._dirty = dirty
                continue
            yield [line.split(delim) for line in block.split("\n")], dirty

    def batches(self, size: int) -> Iterator[SourceBatch]:
        """Yield batches of about ``size`` records; bad records become rejects with their row."""
        ncols = self._ncols
        row = self._row
        for recs, dirty in self._records():
            for start in range(0, len(recs), size):
                chunk = recs[start : start + size]
                nums = list(range(row + 1, row + 1 + len(chunk)))
                row += len(chunk)
                rejects: list[Reject] = []
                bad: list[int] = []
                if dirty:
                    for i, r in enumerate(chunk):
                        if SURROGATE.search("".join(r)):
                            bad.append(i)
                            rejects.append(
                                Reject(
                                    nums[i],
                                    RejectReason.UNDECODABLE,
                                    "bytes not valid in the segment's encoding; check segment.encoding",
                                )
                            )
                odd = [i for i, r in enumerate(chunk) if len(r) != ncols]
                for i in odd:
                    r = chunk[i]
                    if i in bad:
                        continue
                    if len(r) <= 1 and not (r and r[0]):
                        bad.append(i)  # blank line: nobody on it
                    elif len(r) > ncols and not any(r[ncols:]):
                        del r[ncols:]  # trailing empty cells from a spreadsheet
                    else:
                        bad.append(i)
                        rejects.append(
                            Reject(
                                nums[i],
                                RejectReason.MALFORMED_ROW,
                                f"expected {ncols} columns, found {len(r)}",
                            )
                        )
                if bad:
                    drop = set(bad)
                    keep = [i for i in range(len(chunk)) if i not in drop]
                    chunk = [chunk[i] for i in keep]
                    nums = [nums[i] for i in keep]
                yield SourceBatch(nums, chunk, rejects)
        self._row = row

    def close(self) -> None:
        """Close the file."""
        self._file.close()
