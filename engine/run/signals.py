"""A blast under signals: SIGINT/SIGTERM drain it, a second abandons it; the collector kept quiet."""

from __future__ import annotations

import gc
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

from engine.core.clock import Clock
from engine.core.errors import (
    EngineError,
)
from engine.observability.metrics import NO_METRICS, Metrics
from engine.observability.report import RunSummary
from engine.pipeline.source import SegmentRange
from engine.run.blast import _send
from engine.run.plan import Plan, ProgressHook
from engine.state.ledger.run import CampaignLedger

__all__ = ["quiet_gc"]


@contextmanager
def quiet_gc(threshold0: int = 50_000) -> Iterator[None]:
    """Make the garbage collector cheap for the duration of a blast.

    Everything loaded at set-up (plugins, prefix table, template) is frozen out of collections, and
    young-generation collections run every ``threshold0`` allocations instead of 700, so the older
    generations are scanned far less often. The hot path creates no reference cycles, so nothing
    accumulates; the previous settings come back afterwards.
    """
    old = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(threshold0, old[1], old[2])
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


async def _send_until_signalled(
    plan: Plan,
    run_dir: Path,
    progress: ProgressHook | None,
    clock: Clock,
    notify: Callable[[str], None] | None,
    metrics: Metrics = NO_METRICS,
    ledger: CampaignLedger | None = None,
    shard: tuple[int, int] | None = None,
    on_finish: Callable[[bool], None] | None = None,
    part: SegmentRange | None = None,
) -> RunSummary | None:
    """Run :func:`_send`; a first Ctrl-C / SIGTERM stops reading and drains what is in flight, a
    second one abandons it (the row files still close). None when abandoned."""
    stop = anyio.Event()
    result: list[RunSummary] = []

    async def watch(scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                if stop.is_set():
                    if notify is not None:
                        notify("second signal: abandoning what is in flight")
                    scope.cancel()
                    return
                stop.set()
                if notify is not None:
                    notify("stopping: no new rows; sending what is already in flight (again to abandon)")

    errors: list[EngineError] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch, tg.cancel_scope)
        try:
            result.append(
                await _send(
                    plan,
                    run_dir,
                    progress,
                    clock,
                    notify,
                    stop,
                    metrics,
                    ledger,
                    shard=shard,
                    on_finish=on_finish,
                    part=part,
                )
            )
        except EngineError as exc:  # say it plainly, not wrapped in an exception group
            errors.append(exc)
        except BaseExceptionGroup as group:  # a lane's store write failed (disk full…): say that
            found = group.subgroup(lambda e: isinstance(e, EngineError))
            if found is None:
                raise
            errors.append(_first(found))
        finally:
            tg.cancel_scope.cancel()
    if errors:
        raise errors[0]
    return result[0] if result else None


def _first(group: BaseExceptionGroup[Any]) -> EngineError:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, EngineError)
    return exc
