"""A campaign's dry run: every stage on every row, nothing sent, nothing recorded."""

from __future__ import annotations

import time
from pathlib import Path

from engine.core.messages import State
from engine.observability.report import RejectsWriter, RunRecorder, RunSummary, close_writers
from engine.run.plan import Plan, _summarize
from engine.run.signals import quiet_gc

__all__ = ["preview"]


def preview(
    plan: Plan,
    *,
    samples: int = 5,
    max_rows: int | None = None,
    rejects_path: Path | None = None,
) -> RunSummary:
    """Run every stage over the segment without sending: counts, parts, cost, rejects, samples."""
    started = time.perf_counter()
    recorder = RunRecorder(plan.prices, samples=samples)
    if rejects_path is not None:
        recorder.writers[State.REJECTED] = RejectsWriter(rejects_path)
    segment = plan.open_segment(record_links=False)
    try:
        with quiet_gc():
            for batch in segment.batches(plan.engine.config.batch_size):
                recorder.dropped(batch.rejects)
                if batch.nums:
                    recorder.rendered(
                        batch.nums, batch.numbers, batch.carriers, batch.texts, batch.parts, batch.variants
                    )
                if max_rows is not None and recorder.rows >= max_rows:
                    break
    finally:
        segment.close()
        close_writers(recorder)
    return _summarize(plan, recorder, "preview", time.perf_counter() - started)
