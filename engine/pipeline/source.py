"""The segment-source contract: what a source plugin returns and how it hands rows to the engine."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import msgspec

from engine.core.messages import Reject

__all__ = ["RangedSource", "SegmentRange", "SegmentReader", "SegmentSource", "SourceBatch", "SourceContext"]


@dataclass(frozen=True, slots=True)
class SourceContext:
    """What a source factory gets besides its config."""

    base_dir: Path
    """Directory of the campaign file: relative paths in the source config resolve against it."""


@dataclass(slots=True)
class SourceBatch:
    """Rows read from a segment, with the rows that could not be read at all."""

    nums: list[int]
    """Row numbers as the operator sees them (CSV: header is row 1; JSON Lines: line number)."""
    rows: list[Sequence[str]]
    """Values aligned with :attr:`SegmentReader.columns` (lists or tuples); strings, ``""`` when absent."""
    rejects: list[Reject]
    """Rows refused by the source itself (undecodable bytes, wrong column count, bad JSON)."""


class SegmentReader(Protocol):
    """An open segment. Reading is streaming: memory stays flat in the segment's size."""

    columns: Sequence[str]
    """The columns every row holds, known as soon as the reader is open (before any data row).

    A reader may hold just the requested fields (projection), or every column it has: then the
    engine can name a requested field that is missing and suggest a close match."""

    def batches(self, size: int) -> Iterator[SourceBatch]:
        """Yield batches of about ``size`` rows until the segment is exhausted."""

    def fraction_read(self) -> float | None:
        """How much of the segment has been read, 0 to 1, or None if the source cannot tell
        (shown as progress and used for the ETA)."""

    def close(self) -> None:
        """Release the file or connection."""


class SegmentSource(Protocol):
    """A configured segment source, as a ``register_sources`` factory returns it."""

    def open(self, fields: Sequence[str]) -> SegmentReader:
        """Open the segment and read its header.

        :param fields: the columns the campaign needs (phone column first, then template fields).
            Sources with a header (CSV) may ignore it and expose every column; schemaless sources
            (JSON Lines, SQL) expose exactly these.
        """


class SegmentRange(msgspec.Struct, frozen=True, kw_only=True):
    """Whole rows of a segment file as a byte range: a piece of work one worker reads on its own.

    ``start`` is the first byte of row ``first_row``; ``end`` the byte after the range's last row
    (its newline included). Rows are numbered as the whole file numbers them, so a worker's ledger
    and rejects name the same rows one process reading the file would.
    """

    index: int
    """Position of the range in the file (0, 1, …)."""
    start: int
    end: int
    first_row: int
    rows: int
    """Rows the range holds (blank lines included, as the readers number them)."""


@runtime_checkable
class RangedSource(Protocol):
    """A source that can cut its segment into :class:`SegmentRange`\\ s on row boundaries and read
    one range without reading the rest of the file (CSV and JSON Lines files)."""

    def ranges(self, target_bytes: int) -> list[SegmentRange]:
        """Cut the segment into ranges of about ``target_bytes`` each, on row boundaries; a
        :class:`~engine.core.errors.SourceError` when it cannot be cut (compressed, lines ended
        by a lone CR)."""
        ...

    def open_range(self, fields: Sequence[str], part: SegmentRange) -> SegmentReader:
        """Open the segment, read its header, and read only ``part``'s rows (numbered as in the file)."""
        ...

    def rest_of(self, part: SegmentRange, row: int) -> SegmentRange:
        """``part`` from row ``row`` on (``part.first_row`` ≤ ``row`` ≤ its last row + 1): the same
        range with ``start`` moved to that row's first byte (found by counting the row ends before
        it), ``first_row`` and ``rows`` to match — where a worker resumes a range another worker
        confirmed up to ``row - 1``."""
        ...
