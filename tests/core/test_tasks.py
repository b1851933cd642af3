"""core.tasks.stop_task: a stopped task has ended when it returns, whatever the task's libraries do."""

from __future__ import annotations

import asyncio

import pytest

from core.tasks import stop_task, stop_tasks


async def _swallows_cancellations(times: int, log: list[str]) -> None:
    """Swallows the first `times` cancellations (as asyncio.wait_for may on Python 3.11), then sleeps on."""
    while True:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            if len(log) >= times:
                raise
            log.append("swallowed")


async def test_a_task_that_swallows_cancellations_is_cancelled_until_it_ends() -> None:
    log: list[str] = []
    task = asyncio.create_task(_swallows_cancellations(3, log))
    await asyncio.sleep(0)
    async with asyncio.timeout(10):
        await stop_task(task)
    assert task.cancelled() and log == ["swallowed"] * 3


async def test_the_error_a_task_ended_with_is_raised_and_none_is_nothing_to_stop() -> None:
    async def fails() -> None:
        raise ValueError("the reason")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="the reason"):
        await stop_task(task)
    await stop_task(None)


async def test_the_callers_own_cancellation_is_not_swallowed() -> None:
    log: list[str] = []
    stubborn = asyncio.create_task(_swallows_cancellations(1000, log))
    await asyncio.sleep(0)
    stopper = asyncio.create_task(stop_task(stubborn))
    await asyncio.sleep(0.25)
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    assert stopper.cancelled() and not stubborn.done()
    stubborn.cancel()  # the test's own clean-up: this one gives in only after 1,000
    log.extend(["swallowed"] * 1000)
    await asyncio.gather(stubborn, return_exceptions=True)


async def test_stop_tasks_ends_all_and_drops_their_errors() -> None:
    async def fails() -> None:
        raise ValueError("ignored")

    log: list[str] = []
    tasks = [asyncio.create_task(_swallows_cancellations(2, log)), asyncio.create_task(fails())]
    await asyncio.sleep(0)
    await stop_tasks(tasks)
    assert all(t.done() for t in tasks) and tasks[0].cancelled()
