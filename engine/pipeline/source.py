"""The segment-source contract: what a source plugin returns and how it hands rows to the engine."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from engine.core.messages import Reject

__all__ = ["SegmentReader", "SegmentSource", "SourceBatch", "SourceContext"]


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
