"""Helpers for the binary-gateway tests: batches to chosen numbers, waiting for receipts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio

from engine.core.messages import MessageBatch
from plugins.session_core.pool import Inbox


def batch(
    numbers: list[str], texts: list[str] | str = "【测试】您的验证码是1234", prefix: str = "m-"
) -> MessageBatch:
    """A batch to ``numbers`` (11-digit Chinese mobiles; the last three digits pick simulator faults)."""
    if isinstance(texts, str):
        texts = [texts] * len(numbers)
    return MessageBatch(
        "cm",
        rows=list(range(1, len(numbers) + 1)),
        numbers=numbers,
        texts=texts,
        parts=[1] * len(numbers),
        id_prefix=prefix,
    )


def plain(n: int, start: int = 0) -> list[str]:
    """``n`` numbers that no simulator fault is aimed at (they end in 1)."""
    return [f"139{i:07d}1" for i in range(start, start + n)]


async def wait_for(predicate: Callable[[], bool], inbox: Inbox | None = None, limit: float = 5.0) -> None:
    """Wait until ``predicate()`` (re-checked whenever ``inbox`` changes, else every 10 ms)."""
    with anyio.fail_after(limit):
        while not predicate():
            if inbox is not None:
                with anyio.move_on_after(0.05):
                    await inbox.changed.wait()
            else:
                await anyio.sleep(0.01)


@asynccontextmanager
async def serving(gw: object) -> AsyncIterator[None]:
    """Run ``gw.serve()`` (reading receipts and MO between sends) for the block, then close it."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(gw.serve)  # type: ignore[attr-defined]
        try:
            yield
        finally:
            tg.cancel_scope.cancel()
    await gw.aclose()  # type: ignore[attr-defined]
