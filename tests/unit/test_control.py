"""Run control: pause, resume, cancel, and a blast yielding to waiting transactional messages."""

from __future__ import annotations

import anyio
import pytest

from engine.run.control import RunControl, RunState

pytestmark = pytest.mark.anyio


async def test_pause_waits_until_resume_or_cancel(anyio_backend: object) -> None:
    control = RunControl()
    await control.wait_running()  # running: returns at once
    control.pause()
    assert control.state is RunState.PAUSED
    passed: list[str] = []

    async def reader() -> None:
        await control.wait_running()
        passed.append(control.state.value)

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await anyio.wait_all_tasks_blocked()
        assert passed == []  # held while paused
        control.resume()
    assert passed == ["running"]
    control.pause()
    control.cancel()
    await control.wait_running()
    assert control.state is RunState.CANCELLED and control.stop.is_set()
    control.resume()  # a cancelled run stays cancelled
    assert control.state is RunState.CANCELLED
