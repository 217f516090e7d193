"""Waiting at the end of a run for the delivery receipts still due on its SMPP/CMPP binds."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import anyio

from engine.sending.gateway import Receiving

__all__ = ["wait_for_receipts"]


async def wait_for_receipts(
    gateways: Sequence[Receiving], notify: Callable[[str], None] | None = None
) -> dict[str, int]:
    """Let each gateway that offers it (``wait_receipts``, after its ``receipt_wait`` option) keep its
    binds read until every message it accepted has its final receipt, all at once; the receipts go
    to the run's ledger as they come. Returns, by gateway name, how many accepted messages are still
    without one: their recipients stay ``submitted``."""
    missing: dict[str, int] = {}

    async def one(gw: Receiving) -> None:
        wait = getattr(gw, "wait_receipts", None)
        seconds = float(getattr(gw, "receipt_wait", 0.0))
        if not callable(wait) or seconds <= 0:
            return
        name = str(getattr(gw, "name", "?"))
        due = int(getattr(gw, "receipts_awaited", 0))
        if due and notify is not None:
            notify(f"{name}: waiting up to {seconds:g} s for {due:,} delivery receipts")
        missing[name] = left = await wait()
        if left and notify is not None:
            notify(f"{name}: {left:,} accepted messages without a delivery receipt: they stay submitted")

    async with anyio.create_task_group() as tg:
        for gw in gateways:
            tg.start_soon(one, gw)
    return missing
