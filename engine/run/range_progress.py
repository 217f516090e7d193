"""A range's confirmed row: the last row before which every row of the range has a recorded outcome."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from engine.core.messages import MessageBatch, Reject, State, SubmitResult
from engine.pipeline.source import SegmentRange

__all__ = ["RangeProgress"]


class RangeProgress:
    """Follows one range's rows while a worker sends them, per batch (an :class:`OutcomeSink` of
    the run's recorder, and :meth:`read` from the send loop), and tells :meth:`confirmed`: the
    highest row ``r`` such that every row of the range up to ``r`` was read and has its final
    outcome told to the sinks — sent, failed, unknown, suppressed, rejected — so a worker that
    takes the range over may start reading at row ``r + 1``.

    A row handed to the lanes stays open until its answer; a row released (refused before it
    left, or to be retried) or ``deferred`` (quiet hours) stays open. Outcomes told to the sinks
    are in the ledger's buffer, not yet durable: a caller takes :meth:`confirmed`, then flushes
    the ledger, and only then publishes the row.
    """

    def __init__(self, part: SegmentRange) -> None:
        self.first = part.first_row
        self.rows = part.rows
        self._open: npt.NDArray[np.bool_] = np.zeros(max(1, part.rows), dtype=np.bool_)
        self._read_upto = part.first_row - 1
        """The highest row read so far (every row up to it was read: the reader is sequential)."""

    def _mark(self, rows: Sequence[int] | npt.NDArray[np.int64], value: bool) -> None:
        if len(rows):
            ix = np.asarray(rows, dtype=np.int64) - self.first
            ix = ix[(ix >= 0) & (ix < self.rows)]  # (rows of another range: not ours to follow)
            self._open[ix] = value

    def read(self, queued: Sequence[int], last_row: int) -> None:
        """A batch was read up to ``last_row``; ``queued`` its rows handed to the lanes (open until
        answered). Call after the batch's drops were told (:meth:`dropped`), before its messages
        can be answered."""
        self._mark(queued, True)
        if last_row > self._read_upto:
            self._read_upto = last_row

    def confirmed(self) -> int:
        """The highest row up to which every row is settled (``first_row - 1``: none yet)."""
        upto = min(self._read_upto, self.first + self.rows - 1) - self.first + 1
        if upto <= 0:
            return self.first - 1
        window = self._open[:upto]
        first_open = int(np.argmax(window)) if window.any() else upto
        return self.first + first_open - 1

    # -- OutcomeSink ---------------------------------------------------------------------------------

    def dropped(self, records: Sequence[Reject]) -> None:
        """Rows rejected or suppressed are settled; ``deferred`` ones stay open (sent later)."""
        if not records:
            return
        if any(r.state == State.DEFERRED for r in records):
            self._mark([r.row for r in records if r.state == State.DEFERRED], True)
            self._mark([r.row for r in records if r.state != State.DEFERRED], False)
        else:
            self._mark([r.row for r in records], False)

    def results(self, gateway: str, batch: MessageBatch, results: Sequence[SubmitResult]) -> None:
        """Answered (accepted, rejected, unknown): settled."""
        self._mark(batch.rows, False)

    def failed(self, gateway: str, batch: MessageBatch, reason: str) -> None:
        """Failed: settled."""
        self._mark(batch.rows, False)

    def unknown(self, gateway: str, batch: MessageBatch, reason: str) -> None:
        """Unknown (an ambiguous timeout; reconciled later, never resent blindly): settled."""
        self._mark(batch.rows, False)

    def released(self, gateway: str, batch: MessageBatch, reason: str) -> None:
        """Back to pending: stays open."""
        self._mark(batch.rows, True)
